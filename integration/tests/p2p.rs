//! P2P end to end: a registry, a scheduler and several nodes (each its own containerd and
//! daemon). A layer one node has read is served to the others by that node, not the registry.

use std::path::Path;
use std::process::Command;

use dragonfly_integration::procs::{built_binary, run};
use dragonfly_integration::swarm::{Node, Swarm};
use dragonfly_integration::throttle::Throttle;
use dragonfly_integration::{fixtures, rootfs};

fn layer_digests(image: &str) -> Vec<String> {
    fixtures::layers(image)
        .expect("manifest")
        .into_iter()
        .map(|l| l.0)
        .collect()
}

#[test]
fn a_second_node_gets_the_layer_from_the_first_not_the_registry() {
    let swarm = Swarm::start(2, "prefetch: {background: false}").expect("swarm");
    let must = |what: &str, r: anyhow::Result<String>| {
        r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", swarm.logs()))
    };
    let img = fixtures::large().expect("fixture");
    let [gzip, esgz, _] = swarm.publish("large", &img).expect("publish").refs();
    let layers = layer_digests(&esgz);
    let want = fixtures::large_huge_sha256();
    let layer_bytes =
        |swarm: &Swarm| -> u64 { layers.iter().map(|d| swarm.registry.bytes_sent(d)).sum() };

    // Node 0 pulls lazily and reads everything: all from the registry.
    let a = &swarm.nodes[0];
    must("rpull on node 0", a.containerd.rpull(&esgz));
    let (ok, out) = a.containerd.run_once(
        "dragonfly",
        &esgz,
        "read-a",
        &["/bin/sha256sum", "/data/huge.bin"],
    );
    assert!(ok && out.contains(&want), "node 0: {out}\n{}", swarm.logs());
    let after_a = layer_bytes(&swarm);
    assert!(
        a.metric("dragonfly_snapshotter_p2p_pieces_total", "origin") > 0.0,
        "node 0 reported origin pieces"
    );

    // Node 1 does the same: every piece comes from node 0.
    let b = &swarm.nodes[1];
    must("rpull on node 1", b.containerd.rpull(&esgz));
    let (ok, out) = b.containerd.run_once(
        "dragonfly",
        &esgz,
        "read-b",
        &["/bin/sha256sum", "/data/huge.bin"],
    );
    assert!(ok && out.contains(&want), "node 1: {out}\n{}", swarm.logs());
    let from_registry = layer_bytes(&swarm) - after_a;
    let from_peers = b.metric("dragonfly_snapshotter_p2p_bytes_total", "peer");
    eprintln!("node 0 took {after_a} layer bytes from the registry; node 1 took {from_registry} from the registry and {from_peers} from peers");
    assert_eq!(
        from_registry,
        0,
        "node 1 must not touch the registry for layer bytes\n{}",
        swarm.logs()
    );
    assert!(
        from_peers > 40.0 * 1024.0 * 1024.0,
        "node 1 got {from_peers} bytes from peers\n{}",
        swarm.logs()
    );
    assert!(a.metric("dragonfly_snapshotter_p2p_upload_bytes_total", "") > 0.0);

    // Ordinary gzip layers go through the swarm too: node 1 unpacks them from node 0's pieces.
    for (i, node) in swarm.nodes.iter().enumerate() {
        let before: u64 = img
            .layers
            .iter()
            .map(|d| swarm.registry.bytes_sent(d))
            .sum();
        must("rpull gzip", node.containerd.rpull(&gzip));
        let sent: u64 = img
            .layers
            .iter()
            .map(|d| swarm.registry.bytes_sent(d))
            .sum::<u64>()
            - before;
        let expected = if i == 0 { img.layer_bytes } else { 0 };
        assert_eq!(
            sent,
            expected,
            "node {i}: registry bytes for the gzip layers\n{}",
            swarm.logs()
        );
    }

    // And what node 1 sees is what overlayfs shows.
    let oracle = b.containerd.overlayfs_listing(&gzip).expect("oracle");
    let mounted = b
        .containerd
        .mount_image("dragonfly", &esgz)
        .expect("mount ours");
    let d = rootfs::diff(&oracle, &mounted.listing().expect("walk ours"));
    assert!(d.is_empty(), "{}", d.join("\n"));
}

#[test]
fn pulls_succeed_when_the_scheduler_is_gone() {
    let mut swarm = Swarm::start(2, "prefetch: {background: false}").expect("swarm");
    let img = fixtures::large().expect("fixture");
    let [_, esgz, _] = swarm.publish("large", &img).expect("publish").refs();
    let want = fixtures::large_huge_sha256();
    let a = &swarm.nodes[0];
    a.containerd.rpull(&esgz).expect("rpull");
    let (ok, out) =
        a.containerd
            .run_once("dragonfly", &esgz, "a", &["/bin/cat", "/data/small.txt"]);
    assert!(ok, "{out}");
    swarm.scheduler.stop();
    for (i, node) in swarm.nodes.iter().enumerate() {
        if i == 1 {
            node.containerd
                .rpull(&esgz)
                .expect("rpull without scheduler");
        }
        let (ok, out) = node.containerd.run_once(
            "dragonfly",
            &esgz,
            "after",
            &["/bin/sha256sum", "/data/huge.bin"],
        );
        assert!(
            ok && out.contains(&want),
            "node {i} without a scheduler: {out}\n{}",
            swarm.logs()
        );
    }
}

mod corrupt_parent {
    use super::*;
    use dragonfly_proto::peer as peerpb;
    use dragonfly_proto::peer::peer_server::{Peer, PeerServer};
    use dragonfly_proto::scheduler as pb;
    use dragonfly_proto::scheduler::scheduler_client::SchedulerClient;
    use sha2::{Digest, Sha256};
    use tonic::{Request, Response, Status};

    const PIECE: usize = 256 << 10;

    /// Claims every piece (with the right digests) and serves each with one byte flipped.
    struct Liar {
        blob: Vec<u8>,
    }

    #[tonic::async_trait]
    impl Peer for Liar {
        async fn get_piece(
            &self,
            r: Request<peerpb::GetPieceRequest>,
        ) -> Result<Response<peerpb::GetPieceResponse>, Status> {
            let n = r.into_inner().number as usize;
            let start = n * PIECE;
            let mut data = self.blob[start..(start + PIECE).min(self.blob.len())].to_vec();
            data[0] ^= 0xff;
            Ok(Response::new(peerpb::GetPieceResponse {
                number: n as u32,
                digest: String::new(),
                data: data.into(),
            }))
        }
        async fn trigger_download(
            &self,
            _r: Request<peerpb::TriggerDownloadRequest>,
        ) -> Result<Response<peerpb::TriggerDownloadResponse>, Status> {
            Err(Status::unimplemented("no"))
        }
        async fn stat_task(
            &self,
            _r: Request<peerpb::StatTaskRequest>,
        ) -> Result<Response<peerpb::StatTaskResponse>, Status> {
            Err(Status::unimplemented("not here"))
        }
        async fn delete_task(
            &self,
            _r: Request<peerpb::DeleteTaskRequest>,
        ) -> Result<Response<peerpb::DeleteTaskResponse>, Status> {
            Err(Status::unimplemented("not here"))
        }
    }

    /// The liar's claims to every piece of `layers` (digests of bytes it does not have).
    fn liar_reports(d: &str, blob: &[u8]) -> Vec<pb::PieceFinished> {
        blob.chunks(PIECE)
            .enumerate()
            .map(|(n, p)| pb::PieceFinished {
                peer_id: format!("liar-{d}"),
                task_id: d.to_owned(),
                piece: Some(pb::PieceInfo {
                    number: n as u32,
                    digest: format!("sha256:{}", hex::encode(Sha256::digest([p, b"x"].concat()))),
                    length: p.len() as u32,
                }),
                parent_id: String::new(),
                cost_ms: 1,
            })
            .collect()
    }

    /// The node after the origin-facing one was offered the liar (`corrupt` bad-parent
    /// reports), and the scheduler blocklisted it.
    fn assert_caught(swarm: &Swarm, corrupt: f64) {
        assert!(
            corrupt >= 1.0,
            "the liar was not offered once digests were recorded\n{}",
            swarm.logs()
        );
        assert!(
            swarm.scheduler.log().contains("blocklisted"),
            "{}",
            swarm.logs()
        );
    }

    /// A rogue member "liar" on a free port: announced to the swarm's scheduler (kept
    /// alive), claiming every piece of each of `tasks` (ID and true bytes) with false digests
    /// before anyone fetched them, and serving `served` with one byte flipped per piece.
    /// Returns its scheduler client.
    fn spawn_liar(
        rt: &tokio::runtime::Runtime,
        swarm: &Swarm,
        tasks: &[(String, Vec<u8>)],
        served: Vec<u8>,
    ) -> SchedulerClient<tonic::transport::Channel> {
        let liar_port = dragonfly_integration::procs::free_port();
        rt.block_on(async {
            let mut c = SchedulerClient::connect(format!("http://{}", swarm.scheduler.addr))
                .await
                .unwrap();
            c.announce_host(pb::AnnounceHostRequest {
                protocol: pb::PROTOCOL,
                fresh_start: false,
                host: Some(pb::Host {
                    id: "liar".into(),
                    hostname: "liar".into(),
                    ip: "127.0.0.1".into(),
                    upload_port: liar_port as u32,
                    r#type: pb::HostType::Normal as i32,
                    upload_slots: 64,
                    // Speaks gRPC GetPiece only, like a host of an older release.
                    tcp_pieces: false,
                    demand_pieces: false,
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
            for (id, blob) in tasks {
                let task = pb::Task {
                    id: id.clone(),
                    content_length: blob.len() as u64,
                    piece_length: PIECE as u32,
                    ..Default::default()
                };
                c.register_peer(pb::RegisterPeerRequest {
                    host_id: "liar".into(),
                    peer_id: format!("liar-{id}"),
                    task: Some(task),
                })
                .await
                .unwrap();
                let ack = c
                    .report_pieces(tokio_stream::iter(liar_reports(id, blob)))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(ack.refused, 0, "nothing recorded yet to contradict");
            }
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(PeerServer::new(Liar { blob: served }))
                    .serve(format!("127.0.0.1:{liar_port}").parse().unwrap()),
            );
            // A member in good standing keeps its host alive.
            let mut alive = c.clone();
            tokio::spawn(async move {
                loop {
                    let _ = alive
                        .keep_alive(pb::KeepAliveRequest {
                            host_id: "liar".into(),
                            active_uploads: 0,
                        })
                        .await;
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
            });
            c
        })
    }

    /// A rogue member claims every piece of every layer with false digests, before anyone
    /// fetched them: its claims record nothing, so it is offered to nobody until a peer sent
    /// to the origin recorded the true digests; then the node it serves finds its bytes wrong
    /// and it is blocklisted; its false reports after that are refused; no bad byte reaches a
    /// container.
    #[test]
    fn a_rogue_member_reporting_false_digests_and_serving_bad_bytes_is_refused_and_blocklisted() {
        let swarm = Swarm::start(2, "prefetch: {background: false}").expect("swarm");
        let img = fixtures::large().expect("fixture");
        let [_, esgz, _] = swarm.publish("large", &img).expect("publish").refs();
        let layers = layer_digests(&esgz);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let tasks: Vec<(String, Vec<u8>)> = layers
            .iter()
            .map(|d| {
                (
                    d.clone(),
                    std::fs::read(swarm.registry.blob_path(d)).unwrap(),
                )
            })
            .collect();
        let huge = tasks[1].1.clone();
        let mut c = spawn_liar(&rt, &swarm, &tasks, huge);
        let want = fixtures::large_huge_sha256();
        let run = |i: usize| {
            let node = &swarm.nodes[i];
            node.containerd.rpull(&esgz).expect("rpull");
            let (ok, out) = node.containerd.run_once(
                "dragonfly",
                &esgz,
                "read",
                &["/bin/sha256sum", "/data/huge.bin"],
            );
            assert!(
                ok && out.contains(&want),
                "corrupt pieces reached the container of node {i}: {out}\n{}",
                swarm.logs()
            );
            node.metric("dragonfly_snapshotter_p2p_bad_parents_total", "corrupt")
        };
        assert_eq!(
            run(0),
            0.0,
            "an unrecorded claim was offered\n{}",
            swarm.logs()
        );
        let corrupt = run(1);
        assert_caught(&swarm, corrupt);
        // Once blocklisted it is never offered again: everything else came from elsewhere.
        assert!(
            corrupt <= 8.0,
            "reported {corrupt} times: it kept being offered"
        );
        // Its false reports now contradict the recorded digests of what node 0 read.
        let d = &layers[1];
        let blob = std::fs::read(swarm.registry.blob_path(d)).unwrap();
        let ack = rt
            .block_on(c.report_pieces(tokio_stream::iter(liar_reports(d, &blob))))
            .unwrap()
            .into_inner();
        assert!(
            ack.refused >= 1,
            "false digests accepted: {ack:?}\n{}",
            swarm.logs()
        );
        drop(rt);
    }

    /// The same rogue member against a file by URL fetched with `dfctl get`: its claims are
    /// not offered until the node sent to the origin recorded the digests; the next node that
    /// gets its bytes finds them wrong and reports it, and both output files equal the
    /// origin's bytes.
    #[test]
    fn a_rogue_member_cannot_corrupt_a_file_fetched_with_dfctl_get() {
        let swarm = Swarm::start(2, "").expect("swarm");
        let img = fixtures::large().expect("fixture");
        swarm.publish("large", &img).expect("publish");
        let digest = &img.layers[1];
        let want = std::fs::read(swarm.registry.blob_path(digest)).unwrap();
        let url = format!("http://{}/v2/large/blobs/{digest}", swarm.registry.addr);
        let task = dragonfly_task::TaskId::file(&url, "", "", &[])
            .unwrap()
            .to_string();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _liar = spawn_liar(&rt, &swarm, &[(task, want.clone())], want.clone());
        for (i, node) in swarm.nodes.iter().enumerate() {
            let out = swarm.path().join(format!("file-{i}"));
            let r = dfctl_get(node, &url, &out, digest);
            assert!(r.is_ok(), "dfctl get on node {i}: {r:?}\n{}", swarm.logs());
            assert!(
                std::fs::read(&out).unwrap() == want,
                "node {i} wrote wrong bytes"
            );
        }
        let corrupt = |i: usize| {
            swarm.nodes[i].metric("dragonfly_snapshotter_p2p_bad_parents_total", "corrupt")
        };
        assert_eq!(
            corrupt(0),
            0.0,
            "an unrecorded claim was offered\n{}",
            swarm.logs()
        );
        assert_caught(&swarm, corrupt(1));
        drop(rt);
    }
}

#[test]
fn a_seed_and_three_nodes_pull_estargz_and_gzip_with_each_byte_leaving_the_registry_once() {
    let swarm = Swarm::start_with_seeds(1, 4, "").expect("swarm");
    let must = |what: &str, r: anyhow::Result<String>| {
        r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", swarm.logs()))
    };
    let img = fixtures::kinds().expect("fixture");
    let [gzip, esgz, _] = fixtures::publish(
        &swarm.nodes[1].containerd,
        &swarm.registry.addr,
        "kinds",
        &img,
        &[],
    )
    .expect("publish")
    .refs();
    let mut layers = layer_digests(&esgz);
    layers.extend(img.layers.iter().cloned());
    let sizes: u64 = layers
        .iter()
        .map(|d| {
            std::fs::metadata(swarm.registry.blob_path(d))
                .unwrap()
                .len()
        })
        .sum();
    let before: u64 = layers.iter().map(|d| swarm.registry.bytes_sent(d)).sum();
    let big = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        fixtures::random_bytes(6 << 20, 1),
    ));
    for (i, node) in swarm.nodes.iter().enumerate().skip(1) {
        for image in [&esgz, &gzip] {
            must("rpull", node.containerd.rpull(image));
            let (ok, out) = node.containerd.run_once(
                "dragonfly",
                image,
                "read",
                &["/bin/sha256sum", "/data/big.bin"],
            );
            assert!(
                ok && out.contains(&big),
                "node {i} {image}: {out}\n{}",
                swarm.logs()
            );
        }
    }
    // Let background fills finish, then count what left the registry.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let from_registry: u64 = layers
        .iter()
        .map(|d| swarm.registry.bytes_sent(d))
        .sum::<u64>()
        - before;
    let seed = &swarm.nodes[0];
    eprintln!(
        "layer blobs {sizes} bytes; registry sent {from_registry} ({:.3}x); seed took {} from the origin; nodes took {:?} from peers",
        from_registry as f64 / sizes as f64,
        seed.metric("dragonfly_snapshotter_p2p_bytes_total", "origin"),
        swarm.nodes[1..].iter().map(|n| n.metric("dragonfly_snapshotter_p2p_bytes_total", "peer")).collect::<Vec<_>>(),
    );
    assert!(
        seed.daemon.log().contains("triggered download complete"),
        "{}",
        swarm.logs()
    );
    assert!(
        from_registry as f64 <= 1.05 * sizes as f64,
        "registry sent {from_registry} for {sizes} bytes of layers\n{}",
        swarm.logs()
    );
    for n in &swarm.nodes[1..] {
        assert!(n.metric("dragonfly_snapshotter_p2p_pieces_total", "peer") > 0.0);
        assert_eq!(
            n.metric("dragonfly_snapshotter_p2p_bytes_total", "origin"),
            0.0,
            "{}",
            swarm.logs()
        );
    }
    // Every node's containers see what overlayfs shows, for both images.
    let oracle_node = &swarm.nodes[1];
    let oracle = oracle_node
        .containerd
        .overlayfs_listing(&gzip)
        .expect("oracle");
    for (i, node) in swarm.nodes.iter().enumerate().skip(1) {
        for image in [&esgz, &gzip] {
            let mounted = node
                .containerd
                .mount_image("dragonfly", image)
                .expect("mount");
            let d = rootfs::diff(&oracle, &mounted.listing().expect("walk"));
            assert!(d.is_empty(), "node {i} {image}:\n{}", d.join("\n"));
        }
    }
}

#[test]
fn a_parent_killed_mid_transfer_does_not_stop_the_pull() {
    // Parents upload at 8 MB/s so the 40 MiB read is still running when the parent dies.
    let mut swarm = Swarm::start_with(
        0,
        2,
        "prefetch: {background: false}",
        "upload_rate_bytes_per_sec: 8000000",
    )
    .expect("swarm");
    let img = fixtures::large().expect("fixture");
    let [_, esgz, _] = swarm.publish("large", &img).expect("publish").refs();
    let want = fixtures::large_huge_sha256();
    for node in &swarm.nodes {
        node.containerd.rpull(&esgz).expect("rpull");
    }
    let (ok, out) = swarm.nodes[0].containerd.run_once(
        "dragonfly",
        &esgz,
        "a",
        &["/bin/sha256sum", "/data/huge.bin"],
    );
    assert!(ok && out.contains(&want), "{out}");
    let logs_before = swarm.logs();
    let (first, rest) = swarm.nodes.split_at_mut(1);
    let (ok, out) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            rest[0].containerd.run_once(
                "dragonfly",
                &esgz,
                "b",
                &["/bin/sha256sum", "/data/huge.bin"],
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(2500));
        first[0].daemon.kill9();
        reader.join().unwrap()
    });
    let b = &swarm.nodes[1];
    let (peer, origin) = (
        b.metric("dragonfly_snapshotter_p2p_bytes_total", "peer"),
        b.metric("dragonfly_snapshotter_p2p_bytes_total", "origin"),
    );
    eprintln!(
        "node 1 took {peer} bytes from its parent before it died and {origin} from the origin"
    );
    assert!(
        ok && out.contains(&want),
        "the pull failed or is wrong after its parent died: {out}\n{logs_before}\n{}",
        swarm.logs()
    );
    assert!(
        peer > 0.0 && origin > 0.0,
        "expected both sources: peer {peer}, origin {origin}"
    );
}

#[test]
fn after_a_scheduler_restart_peers_announce_what_they_hold_again() {
    // Node 0 is the seed: after the restart its announcement records the piece digests
    // again (a plain peer's cannot), so node 2 can take node 1's pieces.
    let mut swarm = Swarm::start_with_seeds(1, 3, "prefetch: {background: false}").expect("swarm");
    let img = fixtures::large().expect("fixture");
    let [_, esgz, _] = swarm.publish("large", &img).expect("publish").refs();
    let layers = layer_digests(&esgz);
    let want = fixtures::large_huge_sha256();
    let a = &swarm.nodes[1];
    a.containerd.rpull(&esgz).expect("rpull");
    let (ok, out) = a.containerd.run_once(
        "dragonfly",
        &esgz,
        "a",
        &["/bin/sha256sum", "/data/huge.bin"],
    );
    assert!(ok && out.contains(&want), "{out}");
    // The seed's fills end, so the registry's count below is node 2's alone.
    let fill = "triggered download complete and verified";
    wait_for_log(&swarm, 0, fill, layers.len(), 60);
    swarm.scheduler.restart().expect("scheduler restart");
    // The seed and node 1 notice at their next keepalive (1 s), announce again and re-report
    // their pieces, once per layer they hold pieces of.
    for i in [0, 1] {
        wait_for_log(&swarm, i, "announced pieces already held", layers.len(), 15);
    }
    let before: u64 = layers.iter().map(|d| swarm.registry.bytes_sent(d)).sum();
    let b = &swarm.nodes[2];
    b.containerd.rpull(&esgz).expect("rpull");
    let (ok, out) = b.containerd.run_once(
        "dragonfly",
        &esgz,
        "b",
        &["/bin/sha256sum", "/data/huge.bin"],
    );
    assert!(ok && out.contains(&want), "{out}\n{}", swarm.logs());
    let after: u64 = layers.iter().map(|d| swarm.registry.bytes_sent(d)).sum();
    assert_eq!(
        after - before,
        0,
        "node 2 went to the registry after the scheduler restart\n{}",
        swarm.logs()
    );
}

/// `dfctl get URL -O OUT --digest DIGEST` against `node`'s daemon.
fn dfctl_get(node: &Node, url: &str, out: &Path, digest: &str) -> anyhow::Result<String> {
    let dfctl = built_binary("DFCTL_BIN", "dfctl").expect("dfctl");
    run(Command::new(&dfctl)
        .arg("--socket")
        .arg(&node.daemon.socket)
        .args(["get", "--quiet", url, "-O"])
        .arg(out)
        .args(["--digest", digest]))
}

#[test]
fn nodes_finish_when_the_seed_peer_dies_mid_task() {
    let mut swarm = Swarm::start_with_seeds(1, 4, "").expect("swarm");
    let img = fixtures::large().expect("fixture");
    swarm.publish("large", &img).expect("publish");
    // The biggest layer (about 42 MB) from an origin that sends 8 MB/s, so the seed is still
    // fetching it when it dies.
    let digest = img.layers[1].clone();
    let want = std::fs::read(swarm.registry.blob_path(&digest)).unwrap();
    let origin = Throttle::start(&swarm.registry.addr, 8_000_000).expect("throttle");
    let url = format!("http://{}/v2/large/blobs/{digest}", origin.addr);
    let (seed, nodes) = swarm.nodes.split_at_mut(1);
    let results: Vec<anyhow::Result<String>> = std::thread::scope(|s| {
        let pulls: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let (url, digest, want) = (&url, &digest, &want);
                let out = node.daemon.socket.with_file_name(format!("file-{i}"));
                s.spawn(move || {
                    dfctl_get(node, url, &out, digest)?;
                    anyhow::ensure!(&std::fs::read(&out)? == want, "node {i} wrote wrong bytes");
                    Ok(String::new())
                })
            })
            .collect();
        // Kill the seed once it has a quarter of the blob.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while seed[0].metric("dragonfly_snapshotter_p2p_bytes_total", "origin")
            < (want.len() / 4) as f64
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let seed_had = seed[0].metric("dragonfly_snapshotter_p2p_bytes_total", "origin");
        seed[0].daemon.kill9();
        eprintln!(
            "seed killed after fetching {seed_had} of {} bytes",
            want.len()
        );
        assert!(
            seed_had > 0.0 && seed_had < want.len() as f64,
            "seed had {seed_had}"
        );
        pulls.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "node {}: {r:?}\n{}", i + 1, swarm.logs());
    }
    for (i, node) in swarm.nodes.iter().enumerate().skip(1) {
        eprintln!(
            "node {i}: {} bytes from peers, {} from the origin",
            node.metric("dragonfly_snapshotter_p2p_bytes_total", "peer"),
            node.metric("dragonfly_snapshotter_p2p_bytes_total", "origin")
        );
    }
    let from_peers: f64 = swarm.nodes[1..]
        .iter()
        .map(|n| n.metric("dragonfly_snapshotter_p2p_bytes_total", "peer"))
        .sum();
    assert!(
        from_peers > 0.0,
        "the nodes got nothing from the seed before it died"
    );
}

#[test]
fn dfctl_get_downloads_a_file_through_the_swarm() {
    let swarm = Swarm::start(2, "").expect("swarm");
    let img = fixtures::large().expect("fixture");
    swarm.publish("large", &img).expect("publish");
    // Any HTTP URL with Range support will do; the registry's blob URL is one.
    let digest = &img.layers[1];
    let url = format!(
        "http://{}/v2/large/blobs/{digest}?X-Amz-Signature=first",
        swarm.registry.addr
    );
    let want = std::fs::read(swarm.registry.blob_path(digest)).unwrap();
    for (i, node) in swarm.nodes.iter().enumerate() {
        let before = swarm.registry.bytes_sent(digest);
        let out = swarm.path().join(format!("file-{i}"));
        // The second node uses another signature: same task.
        let url = if i == 0 {
            url.clone()
        } else {
            url.replace("first", "second")
        };
        let r = dfctl_get(node, &url, &out, digest);
        assert!(r.is_ok(), "dfctl get on node {i}: {r:?}\n{}", swarm.logs());
        assert!(
            std::fs::read(&out).unwrap() == want,
            "node {i} wrote wrong bytes"
        );
        let sent = swarm.registry.bytes_sent(digest) - before;
        eprintln!("node {i}: registry sent {sent} of {} bytes", want.len());
        if i == 0 {
            assert!(sent >= want.len() as u64);
        } else {
            assert_eq!(
                sent,
                0,
                "node 1 must get the file from node 0\n{}",
                swarm.logs()
            );
        }
    }
    // A wrong expected digest is an error and leaves no file.
    let out = swarm.path().join("bad");
    let r = dfctl_get(
        &swarm.nodes[1],
        &url,
        &out,
        &format!("sha256:{}", "0".repeat(64)),
    );
    assert!(r.is_err() && !out.exists(), "{r:?}");
}

/// Waits up to `secs` until node `i`'s log says `what` at least `times` times.
fn wait_for_log(swarm: &Swarm, i: usize, what: &str, times: usize, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while swarm.nodes[i].daemon.log().matches(what).count() < times {
        assert!(
            std::time::Instant::now() < deadline,
            "node {i} never logged {what:?}\n{}",
            swarm.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A swarm of a seed and `nodes` nodes with the large fixture published: the digest of its
/// big layer and that layer's registry URL, fetched as a file (`dfctl get`).
fn seeded_file_swarm(nodes: usize) -> (Swarm, String, String) {
    let swarm = Swarm::start_with_seeds(1, nodes, "").expect("swarm");
    let img = fixtures::large().expect("fixture");
    swarm.publish("large", &img).expect("publish");
    let digest = img.layers[1].clone();
    let url = format!("http://{}/v2/large/blobs/{digest}", swarm.registry.addr);
    (swarm, digest, url)
}

#[test]
fn after_the_whole_cluster_restarts_peers_offer_what_they_stored_before() {
    // Node 0 is the seed. Node 1 downloads a file, then the scheduler, the seed and node 1
    // all restart: nothing in memory knows who holds the file. The seed's and node 1's stores
    // are offered again (the seed's announcement records the piece digests), then the seed and
    // the origin go away: node 2 can only get the file from node 1's store.
    let (mut swarm, digest, url) = seeded_file_swarm(3);
    let want = std::fs::read(swarm.registry.blob_path(&digest)).unwrap();
    let out = swarm.path().join("file-1");
    let r = dfctl_get(&swarm.nodes[1], &url, &out, &digest);
    assert!(r.is_ok(), "dfctl get on node 1: {r:?}\n{}", swarm.logs());
    wait_for_log(&swarm, 0, "triggered download complete and verified", 1, 30);

    let offered = "blobs held before the restart are offered to the swarm again";
    let announced = "announced pieces already held";
    let before: Vec<usize> = [0, 1]
        .map(|i| swarm.nodes[i].daemon.log().matches(announced).count())
        .to_vec();
    swarm.scheduler.restart().expect("scheduler restart");
    for i in [0, 1] {
        swarm.nodes[i].daemon.restart().expect("daemon restart");
        wait_for_log(&swarm, i, offered, 1, 30);
        wait_for_log(&swarm, i, announced, before[i] + 1, 30);
    }
    // Node 2 kept running: it asks the scheduler again once it has announced to the new
    // process (a keepalive that hit the restart skips the scheduler for a few seconds).
    wait_for_log(&swarm, 2, "announced to scheduler", 2, 30);
    swarm.nodes[0].daemon.kill9();
    swarm.registry.stop();

    let out = swarm.path().join("file-2");
    let r = dfctl_get(&swarm.nodes[2], &url, &out, &digest);
    assert!(r.is_ok(), "dfctl get on node 2: {r:?}\n{}", swarm.logs());
    assert!(
        std::fs::read(&out).unwrap() == want,
        "node 2 wrote wrong bytes"
    );
    let from_peers = swarm.nodes[2].metric("dragonfly_snapshotter_p2p_bytes_total", "peer");
    assert!(
        from_peers >= want.len() as f64,
        "{from_peers}\n{}",
        swarm.logs()
    );
}

#[test]
fn a_daemon_restarted_under_a_running_scheduler_stays_one_peer_of_its_task() {
    use dragonfly_proto::scheduler as pb;
    use dragonfly_proto::scheduler::scheduler_client::SchedulerClient;
    // Node 0 is the seed. Node 1 downloads a file, then its daemon restarts twice while the
    // scheduler runs on. Each new process announces a fresh start, which drops the peer of
    // the old one: the task lists node 1 once, holding the whole file (before, each restart
    // left one more peer behind, counted against the task's peer limit).
    let (mut swarm, digest, url) = seeded_file_swarm(2);
    let size = std::fs::metadata(swarm.registry.blob_path(&digest))
        .unwrap()
        .len();
    let r = dfctl_get(&swarm.nodes[1], &url, &swarm.path().join("f"), &digest);
    assert!(r.is_ok(), "dfctl get on node 1: {r:?}\n{}", swarm.logs());
    let announced = "announced pieces already held";
    for times in 1..=2 {
        swarm.nodes[1].daemon.restart().expect("daemon restart");
        wait_for_log(&swarm, 1, announced, times, 30);
    }
    let log = swarm.nodes[1].daemon.log();
    let line = log.lines().find(|l| l.contains(announced)).unwrap();
    let task_id = regex::Regex::new("(?:task|sha256):[0-9a-f]{64}")
        .unwrap()
        .find(line)
        .unwrap_or_else(|| panic!("no task ID in {line:?}"))
        .as_str()
        .to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt.block_on(async {
        let mut c = SchedulerClient::connect(format!("http://{}", swarm.scheduler.addr))
            .await
            .unwrap();
        c.get_task(pb::GetTaskRequest { task_id })
            .await
            .unwrap()
            .into_inner()
    });
    let node: Vec<_> = got
        .peers
        .iter()
        .filter(|p| p.host_type != pb::HostType::Seed as i32)
        .collect();
    assert_eq!(node.len(), 1, "{got:?}\n{}", swarm.logs());
    assert_eq!(node[0].present_bytes, size, "{got:?}");
}
