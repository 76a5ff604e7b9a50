//! Lazy pulls through the swarm must not wait for the seed's fill. The registry sits behind
//! a 2 MB/s link and the file a container reads sits at the end of a 40 MiB eStargz layer, so
//! a seed filling the blob front to back would take about 20 s to reach it. A read through the
//! swarm is answered by the seed fetching the needed pieces on demand: its time is bounded by
//! a direct lazy read measured in the same test plus a few pieces' transfer time, and what
//! the registry sent by then is a small part of the blob. Two nodes reading the same missing
//! pieces at once share the seed's one origin fetch of each.

use std::time::{Duration, Instant};

use dragonfly_integration::containerd::Containerd;
use dragonfly_integration::daemon::Daemon;
use dragonfly_integration::fixtures;
use dragonfly_integration::swarm::Swarm;
use dragonfly_integration::throttle::Throttle;

/// The registry's uplink.
const RATE: u64 = 2_000_000;
/// The daemon's piece length for lazy layers (`cache.lazy_piece_length`).
const PIECE: u64 = 32 << 10;

/// Pulls `image` lazily into `ctd` and reads the small file at the end of the big layer; the
/// time both took and what the container printed.
fn pull_and_read(ctd: &Containerd, image: &str, id: &str) -> (Duration, String) {
    let t = Instant::now();
    ctd.rpull(image)
        .unwrap_or_else(|e| panic!("rpull {image}: {e:#}"));
    let (ok, out) = ctd.run_once("dragonfly", image, id, &["/bin/cat", "/data/small.txt"]);
    assert!(ok, "{out}");
    (t.elapsed(), out)
}

#[test]
fn a_lazy_read_is_answered_by_the_seed_without_waiting_for_its_fill() {
    let swarm = Swarm::start_with_seeds(1, 2, "prefetch: {background: false}").expect("swarm");
    let img = fixtures::large().expect("fixture");
    let published = swarm.publish("large", &img).expect("publish");
    let slow = Throttle::start(&swarm.registry.addr, RATE).expect("throttle");
    let image = published.estargz.replace(&swarm.registry.addr, &slow.addr);
    let layer = fixtures::layers(&published.estargz).expect("layers")[1].clone();
    let blob = layer.1;
    let fill = Duration::from_secs_f64(blob as f64 / RATE as f64);

    // The baseline: a daemon without the swarm reads lazily from the same slow registry.
    let dir = swarm.path().join("direct");
    let daemon =
        Daemon::start(&dir.join("daemon"), "prefetch: {background: false}").expect("daemon");
    let direct = Containerd::start(&dir.join("containerd"), &daemon.socket).expect("containerd");
    let (direct_t, out) = pull_and_read(&direct, &image, "direct");
    assert!(out.contains("a small file next to a huge one"), "{out}");

    // Through the swarm: the first reads trigger the seed, which serves them on demand.
    let mark = swarm.registry.mark();
    let node = &swarm.nodes[1];
    let (swarm_t, out) = pull_and_read(&node.containerd, &image, "swarm");
    let sent = swarm.registry.blob_bytes_since(mark);
    assert!(out.contains("a small file next to a huge one"), "{out}");
    let pieces = Duration::from_secs_f64(4.0 * PIECE as f64 / RATE as f64);
    eprintln!(
        "direct {direct_t:?}, through the swarm {swarm_t:?} (a fill would take {fill:?}); the registry sent {sent} of {blob} bytes by then"
    );
    assert!(
        swarm_t <= direct_t * 3 + pieces + Duration::from_secs(2),
        "through the swarm {swarm_t:?} vs direct {direct_t:?}: the read waited for something\n{}",
        swarm.logs()
    );
    assert!(
        swarm_t * 4 < fill,
        "{swarm_t:?} is not far below the {fill:?} a fill takes\n{}",
        swarm.logs()
    );
    assert!(
        sent < blob / 3,
        "the registry sent {sent} of {blob} bytes before a small read finished\n{}",
        swarm.logs()
    );
    // The node took nothing from the origin itself: the seed fetched on demand.
    assert_eq!(
        node.metric("dragonfly_snapshotter_p2p_bytes_total", "origin"),
        0.0,
        "{}",
        swarm.logs()
    );
    assert!(
        swarm.nodes[0].metric("dragonfly_snapshotter_p2p_uploads_total", "demand") > 0.0,
        "{}",
        swarm.logs()
    );
}

/// Two nodes cold-start the same lazy layer at the same moment; the seed fetches what they
/// both need (footer, TOC, the small file) from the registry once. Each node's bytes fetched
/// for waiting reads all came from the seed, and the seed's own bytes fetched for them are no
/// more than one node's (plus one piece: a fill request of the seed that a demand raised).
#[test]
fn two_nodes_needing_the_same_pieces_cause_one_origin_fetch() {
    // The seed's fill requests are one piece, so a raised one adds at most a piece.
    let yaml =
        format!("prefetch: {{background: false}}\ncache: {{background_fetch_bytes: {PIECE}}}");
    let swarm = Swarm::start_with_seeds(1, 3, &yaml).expect("swarm");
    let img = fixtures::large().expect("fixture");
    let published = swarm.publish("large", &img).expect("publish");
    let slow = Throttle::start(&swarm.registry.addr, RATE).expect("throttle");
    let image = published.estargz.replace(&swarm.registry.addr, &slow.addr);

    std::thread::scope(|s| {
        let reads: Vec<_> = [1, 2]
            .map(|i| {
                let (node, image) = (&swarm.nodes[i], &image);
                s.spawn(move || pull_and_read(&node.containerd, image, &format!("n{i}")))
            })
            .into_iter()
            .collect();
        for r in reads {
            let (_, out) = r.join().expect("reader thread");
            assert!(out.contains("a small file next to a huge one"), "{out}");
        }
    });
    let urgent =
        |i: usize| swarm.nodes[i].metric("dragonfly_snapshotter_cache_fetched_urgent_bytes", "");
    let (seed, one, two) = (urgent(0), urgent(1), urgent(2));
    eprintln!("bytes fetched for waiting reads: seed {seed}, node 1 {one}, node 2 {two}");
    for i in [1, 2] {
        assert_eq!(
            swarm.nodes[i].metric("dragonfly_snapshotter_p2p_bytes_total", "origin"),
            0.0,
            "node {i} went to the registry itself\n{}",
            swarm.logs()
        );
    }
    assert!(
        one >= 2.0 * PIECE as f64 && two >= 2.0 * PIECE as f64,
        "each node needed several pieces (footer, TOC, file): {one}, {two}"
    );
    assert!(
        seed <= one.max(two) + PIECE as f64,
        "the seed fetched {seed} bytes for readers that needed {one} and {two}: the same pieces were fetched twice\n{}",
        swarm.logs()
    );
}
