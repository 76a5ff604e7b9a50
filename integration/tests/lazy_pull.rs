//! End to end with our daemon: real registry, real containerd, `ctr-remote image rpull`. Lazy
//! pulls of eStargz and zstd:chunked images must show exactly the root filesystem containerd's
//! own overlayfs snapshotter shows for the gzip image, fetch only what is read, survive a
//! SIGKILL of the daemon without fetching again, and never return bytes that fail
//! verification (EIO instead).

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use dragonfly_integration::containerd::Containerd;
use dragonfly_integration::fixtures::{self, Published};
use dragonfly_integration::mount::MountedRootfs;
use dragonfly_integration::procs::{assert_torn_down, mounts_under};
use dragonfly_integration::{rootfs, TestBed};

/// Daemon config for tests that count registry bytes: no background fill of whole blobs.
const NO_BACKGROUND: &str = "prefetch: {background: false}";

fn must<T>(bed: &TestBed, what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", bed.logs()))
}

fn publish(bed: &TestBed, repo: &str, record: &[&str]) -> Published {
    let img = must(
        bed,
        "build fixture",
        match repo {
            "large" => fixtures::large(),
            _ => fixtures::kinds(),
        },
    );
    must(
        bed,
        "publish fixture",
        fixtures::publish(&bed.containerd, &bed.registry.addr, repo, &img, record),
    )
}

fn rpull(bed: &TestBed, image: &str) {
    must(bed, &format!("rpull {image}"), bed.containerd.rpull(image));
}

/// The root filesystem containerd's overlayfs snapshotter shows for `gzip`.
fn oracle(bed: &TestBed, gzip: &str) -> rootfs::Listing {
    must(
        bed,
        "overlayfs oracle",
        bed.containerd.overlayfs_listing(gzip),
    )
}

/// Mounts `image` through our snapshotter. containerd's client reconnects to a restarted
/// daemon with back-off, so "unavailable" is retried for a while.
fn mount<'a>(containerd: &'a Containerd, image: &str) -> MountedRootfs<'a> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match containerd.mount_image("dragonfly", image) {
            Ok(m) => return m,
            Err(e) if format!("{e:#}").contains("navailable") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!(
                "mount {image} with dragonfly: {e:#}\n{}",
                containerd.log_tail()
            ),
        }
    }
}

fn assert_same(bed: &TestBed, what: &str, oracle: &rootfs::Listing, ours: &rootfs::Listing) {
    let d = rootfs::diff(oracle, ours);
    assert!(
        d.is_empty(),
        "{what}: root filesystem differs from overlayfs:\n{}\n{}",
        d.join("\n"),
        bed.logs()
    );
}

/// Compressed size of all layers of `image`.
fn layer_bytes(image: &str) -> u64 {
    fixtures::layers(image)
        .expect("manifest")
        .iter()
        .map(|l| l.1)
        .sum()
}

fn read(root: &Path, rel: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(root.join(rel))
}

#[test]
fn lazy_estargz_with_a_landmark_shows_what_overlayfs_shows() {
    let bed = TestBed::start("").expect("test bed");
    let p = publish(&bed, "kinds", &["data/owned", "bin/busybox"]);
    let oracle = oracle(&bed, &p.gzip);
    rpull(&bed, &p.estargz);
    let m = mount(&bed.containerd, &p.estargz);
    assert_same(&bed, "estargz", &oracle, &must(&bed, "walk", m.listing()));
}

#[test]
fn lazy_zstd_chunked_shows_what_overlayfs_shows() {
    let bed = TestBed::start("").expect("test bed");
    let p = publish(&bed, "kinds", &[]);
    let oracle = oracle(&bed, &p.gzip);
    rpull(&bed, &p.zstdchunked);
    let m = mount(&bed.containerd, &p.zstdchunked);
    assert_same(
        &bed,
        "zstd:chunked",
        &oracle,
        &must(&bed, "walk", m.listing()),
    );
}

#[test]
fn a_plain_pull_through_our_snapshotter_shows_what_overlayfs_shows() {
    let bed = TestBed::start("").expect("test bed");
    let p = publish(&bed, "kinds", &[]);
    let oracle = oracle(&bed, &p.gzip);
    must(
        &bed,
        "plain pull",
        bed.containerd.pull("dragonfly", &p.gzip),
    );
    let m = mount(&bed.containerd, &p.gzip);
    assert_same(
        &bed,
        "gzip, plain pull",
        &oracle,
        &must(&bed, "walk", m.listing()),
    );
    // The same through a container, which also proves the mounts work for runc.
    let pid = must(
        &bed,
        "run",
        bed.containerd.run_detached("dragonfly", &p.gzip, "plain"),
    );
    let ours = must(&bed, "walk container", rootfs::list_process_root(pid));
    assert_same(&bed, "gzip, container", &oracle, &ours);
}

#[test]
fn gzip_layers_pulled_with_labels_are_fetched_once_and_unpacked_like_containerd() {
    let bed = TestBed::start("").expect("test bed");
    let p = publish(&bed, "kinds", &[]);
    let oracle = oracle(&bed, &p.gzip);
    let mark = bed.registry.mark();
    rpull(&bed, &p.gzip);
    let m = mount(&bed.containerd, &p.gzip);
    assert_same(
        &bed,
        "gzip via rpull",
        &oracle,
        &must(&bed, "walk", m.listing()),
    );
    // containerd already holds the gzip blobs (the oracle pull); whoever fetches them now, each
    // layer byte crosses the wire at most once.
    let fetched = bed.registry.blob_bytes_since(mark);
    assert!(
        fetched <= layer_bytes(&p.gzip),
        "{fetched} blob bytes for {} bytes of layers",
        layer_bytes(&p.gzip)
    );
}

#[test]
fn lazy_pulls_fetch_a_small_fraction_until_files_are_read() {
    let bed = TestBed::start(NO_BACKGROUND).expect("test bed");
    let p = publish(&bed, "large", &[]);
    let huge = fixtures::random_bytes(fixtures::LARGE_HUGE_LEN, fixtures::LARGE_HUGE_SEED);
    for image in [&p.estargz, &p.zstdchunked] {
        let total = layer_bytes(image);
        let mark = bed.registry.mark();
        rpull(&bed, image);
        let m = mount(&bed.containerd, image);
        let after_pull = bed.registry.blob_bytes_since(mark);
        eprintln!("{image}: rpull + mount fetched {after_pull} of {total} layer bytes");
        assert!(
            after_pull * 2 < total,
            "{image}: fetched {after_pull} of {total} bytes before any read: not lazy\n{}",
            bed.logs()
        );
        let small = must(
            &bed,
            "read small.txt",
            read(m.path(), "data/small.txt").map_err(Into::into),
        );
        assert_eq!(small, b"a small file next to a huge one\n");
        let after_small = bed.registry.blob_bytes_since(mark);
        assert!(
            after_small * 2 < total,
            "{image}: reading one small file fetched {after_small} of {total} bytes"
        );
        let got = must(
            &bed,
            "read huge.bin",
            read(m.path(), "data/huge.bin").map_err(Into::into),
        );
        assert!(got == huge, "{image}: huge.bin has wrong bytes");
        assert!(bed.registry.blob_bytes_since(mark) > after_small);
    }
}

#[test]
fn a_killed_daemon_comes_back_without_fetching_again() {
    let mut bed = TestBed::start(NO_BACKGROUND).expect("test bed");
    let p = publish(&bed, "kinds", &[]);
    let oracle = oracle(&bed, &p.gzip);
    rpull(&bed, &p.estargz);
    let big = fixtures::random_bytes(fixtures::KINDS_BIG_LEN, fixtures::KINDS_BIG_SEED);
    let read_some = |root: &Path| {
        assert_eq!(read(root, "data/owned").unwrap(), b"owned by 1234:5678\n");
        assert!(read(root, "data/big.bin").unwrap() == big, "big.bin bytes");
        assert_eq!(
            read(root, "etc/passwd").unwrap(),
            b"root:x:0:0:root:/root:/bin/sh\n"
        );
    };
    let m = mount(&bed.containerd, &p.estargz);
    read_some(m.path());
    let mark = bed.registry.mark();

    bed.daemon.kill9();
    // The old view is let go (its layers stay served: the next daemon adopts them, see
    // restarts.rs); what matters here is that nothing already read is fetched again.
    drop(m);
    let restarted = bed.daemon.restart();
    must(&bed, "restart daemon", restarted);
    let m = mount(&bed.containerd, &p.estargz);
    read_some(m.path());
    let again = bed.registry.blob_gets_since(mark);
    assert!(
        again.is_empty(),
        "already-read files were fetched again after the restart: {again:?}\n{}",
        bed.logs()
    );
    assert_same(
        &bed,
        "estargz after a restart",
        &oracle,
        &must(&bed, "walk", m.listing()),
    );
}

#[test]
fn tampered_chunks_read_as_io_errors_never_wrong_bytes() {
    let bed = TestBed::start(NO_BACKGROUND).expect("test bed");
    let p = publish(&bed, "kinds", &[]);
    // Corrupt one byte in the middle of the first compressed chunk of data/big.bin.
    let layers = fixtures::layers(&p.estargz).unwrap();
    let path = layers
        .iter()
        .map(|l| bed.registry.blob_path(&l.0))
        .find(|p| {
            let blob = std::fs::read(p).unwrap();
            fixtures::estargz_chunks(&blob, "data/big.bin").is_ok()
        })
        .expect("a layer holds data/big.bin");
    let mut blob = std::fs::read(&path).unwrap();
    let chunks = fixtures::estargz_chunks(&blob, "data/big.bin").unwrap();
    let (start, end) = chunks[0];
    let at = ((start + end) / 2) as usize;
    blob[at] ^= 0x55;
    std::fs::write(&path, &blob).unwrap();

    rpull(&bed, &p.estargz);
    let m = mount(&bed.containerd, &p.estargz);
    let want = fixtures::random_bytes(fixtures::KINDS_BIG_LEN, fixtures::KINDS_BIG_SEED);
    let mut f = std::fs::File::open(m.path().join("data/big.bin")).expect("open big.bin");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 128 << 10];
    let err = loop {
        match f.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e),
        }
    };
    assert!(
        got[..] == want[..got.len()],
        "bytes returned before the error must be right ({} bytes read)",
        got.len()
    );
    let err = err.unwrap_or_else(|| panic!("a tampered chunk was served\n{}", bed.logs()));
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Other files of the layer are intact.
    assert_eq!(
        read(m.path(), "data/owned").expect("an intact file"),
        b"owned by 1234:5678\n"
    );
}

#[test]
fn an_unreachable_registry_gives_io_errors_never_wrong_bytes() {
    let mut bed = TestBed::start(&format!(
        "{NO_BACKGROUND}\nregistry: {{max_retries: 1, retry_base_delay_ms: 50}}"
    ))
    .expect("test bed");
    let p = publish(&bed, "large", &[]);
    rpull(&bed, &p.estargz);
    let m = mount(&bed.containerd, &p.estargz);
    assert_eq!(
        read(m.path(), "data/small.txt").expect("small.txt"),
        b"a small file next to a huge one\n"
    );
    bed.registry.stop();
    let err = read(m.path(), "data/huge.bin").expect_err("unfetched data without a registry");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(
        read(m.path(), "data/small.txt").expect("cached small.txt"),
        b"a small file next to a huge one\n"
    );
}

#[test]
fn teardown_leaves_no_mounts_or_processes() {
    let bed = TestBed::start("").expect("test bed");
    let p = publish(&bed, "kinds", &[]);
    rpull(&bed, &p.estargz);
    let m = mount(&bed.containerd, &p.estargz);
    let container = must(
        &bed,
        "run",
        bed.containerd
            .run_detached("dragonfly", &p.estargz, "left-running"),
    );
    let dir = bed.path().to_owned();
    let pids = [
        bed.daemon.pid().unwrap(),
        bed.containerd.pid().unwrap(),
        bed.registry.pid(),
        container,
    ];
    assert!(!mounts_under(&dir).is_empty());
    std::mem::forget(m); // as if the test had lost it: the bed must still clean up
    drop(bed);
    assert_torn_down(&dir, &pids);
}
