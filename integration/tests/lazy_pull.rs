//! End to end: real registry, real containerd, our daemon, real runc containers. Lazy pulls of
//! eStargz and zstd:chunked images must show exactly the root filesystem containerd's own
//! overlayfs snapshotter shows, fetch only what is read, survive a daemon crash without
//! re-downloading, and never return bytes that fail verification.

use std::process::Command;

use dragonfly_integration::procs::{mounts_under, run};
use dragonfly_integration::{fixtures, rootfs, TestBed};

fn must<T>(bed: &TestBed, what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", bed.logs()))
}

fn rpull(bed: &TestBed, image: &str) {
    must(
        bed,
        &format!("rpull {image}"),
        bed.containerd.ctr_remote(&[
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "dragonfly",
            image,
        ]),
    );
}

fn total_blob_bytes(bed: &TestBed) -> u64 {
    bed.registry.blob_gets().iter().map(|g| g.bytes).sum()
}

fn layer_digests(image: &str) -> Vec<String> {
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}")))
    .expect("skopeo inspect");
    let m: serde_json::Value = serde_json::from_str(&raw).expect("manifest JSON");
    m["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_owned())
        .collect()
}

#[test]
fn every_format_shows_the_root_filesystem_overlayfs_shows() {
    let bed = TestBed::start("").expect("test bed");
    let img = must(&bed, "build fixture", fixtures::kinds_image(bed.path()));
    let [gzip, esgz, zstd] = must(
        &bed,
        "publish fixture",
        fixtures::publish(
            &bed.containerd,
            &bed.registry.addr,
            "kinds",
            &img,
            &["data/layer3.txt"],
        ),
    );

    // The oracle: containerd's own snapshotter.
    must(
        &bed,
        "pull for overlayfs",
        bed.containerd.ctr(&[
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            "overlayfs",
            &gzip,
        ]),
    );
    let pid = must(
        &bed,
        "run on overlayfs",
        bed.containerd.run_detached("overlayfs", &gzip, "oracle"),
    );
    let oracle = rootfs::list_process_root(pid).expect("walk oracle");
    // The fixture is what we think it is.
    for (path, what) in [
        ("/data/big.bin", "size=6291456"),
        ("/data/null", "char"),
        ("/data/null", "rdev=1:3"),
        ("/data/fifo", "fifo"),
        ("/data/setuid", "mode=4755"),
        ("/data/sticky", "mode=1777"),
        ("/data/owned", "uid=1234 gid=5678"),
        ("/data/xattr", "xattr:user.demo=68656c6c6f"),
        ("/data/hard1", "links=[/data/hard1,/data/hard2]"),
        ("/data/abs-link", "-> /etc/passwd"),
        ("/data/ünïcødé-файл.txt", "file"),
        ("/opq/new", "file"),
        ("/data/empty", "size=0"),
    ] {
        let got = oracle
            .get(path)
            .unwrap_or_else(|| panic!("oracle lacks {path}"));
        assert!(got.contains(what), "oracle {path}: {got} lacks {what}");
    }
    assert!(oracle.contains_key(&format!("/{}", fixtures::long_path())));
    for gone in ["/data/gone", "/opq/old1", "/bin/ls"] {
        assert!(!oracle.contains_key(gone), "{gone} must be deleted");
    }
    bed.containerd.remove_container("oracle");

    same_as_oracle(&bed, &oracle, [&gzip, &esgz, &zstd], 3);
    assert!(
        bed.daemon.log().contains("landmark prefetch done"),
        "the eStargz image has a landmark; its files must be prefetched\n{}",
        bed.logs()
    );
}

/// Pulls each variant with our snapshotter (lazily for eStargz and zstd:chunked, a plain pull
/// for gzip) and compares the container's root filesystem with the overlayfs oracle.
fn same_as_oracle(
    bed: &TestBed,
    oracle: &rootfs::Listing,
    [gzip, esgz, zstd]: [&String; 3],
    layers: usize,
) {
    for (name, image, lazy) in [
        ("estargz", esgz, true),
        ("zstdchunked", zstd, true),
        ("gzip, plain pull", gzip, false),
    ] {
        let mounted_before = bed.daemon.log().matches("lazy layer mounted").count();
        if lazy {
            rpull(bed, image);
        } else {
            must(
                bed,
                "plain pull",
                bed.containerd.ctr(&[
                    "image",
                    "pull",
                    "--plain-http",
                    "--snapshotter",
                    "dragonfly",
                    image,
                ]),
            );
        }
        let mounted = bed.daemon.log().matches("lazy layer mounted").count() - mounted_before;
        assert_eq!(
            mounted,
            if lazy { layers } else { 0 },
            "{name}: lazy layers mounted\n{}",
            bed.logs()
        );
        let id = format!("c-{}", name.split(',').next().unwrap());
        let pid = must(
            bed,
            name,
            bed.containerd.run_detached("dragonfly", image, &id),
        );
        let ours = rootfs::list_process_root(pid).expect("walk container");
        let d = rootfs::diff(oracle, &ours);
        assert!(
            d.is_empty(),
            "{name}: root filesystem differs from overlayfs:\n{}\n{}",
            d.join("\n"),
            bed.logs()
        );
        bed.containerd.remove_container(&id);
    }
}

#[test]
fn the_large_image_shows_the_root_filesystem_overlayfs_shows() {
    let bed = TestBed::start("").expect("test bed");
    let img = must(&bed, "build fixture", fixtures::large_image(bed.path()));
    let [gzip, esgz, zstd] = must(
        &bed,
        "publish",
        fixtures::publish(&bed.containerd, &bed.registry.addr, "large", &img, &[]),
    );
    must(
        &bed,
        "pull for overlayfs",
        bed.containerd.ctr(&[
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            "overlayfs",
            &gzip,
        ]),
    );
    let pid = must(
        &bed,
        "run on overlayfs",
        bed.containerd.run_detached("overlayfs", &gzip, "oracle"),
    );
    let oracle = rootfs::list_process_root(pid).expect("walk oracle");
    assert!(
        oracle["/data/huge.bin"].contains("size=41943040"),
        "{}",
        oracle["/data/huge.bin"]
    );
    bed.containerd.remove_container("oracle");
    same_as_oracle(&bed, &oracle, [&gzip, &esgz, &zstd], 2);
}

#[test]
fn gzip_layers_pulled_with_labels_are_downloaded_and_unpacked_by_us_like_containerd() {
    let bed = TestBed::start("").expect("test bed");
    let img = must(&bed, "build fixture", fixtures::kinds_image(bed.path()));
    let [gzip, _, _] = must(
        &bed,
        "publish",
        fixtures::publish(&bed.containerd, &bed.registry.addr, "kinds", &img, &[]),
    );
    must(
        &bed,
        "pull for overlayfs",
        bed.containerd.ctr(&[
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            "overlayfs",
            &gzip,
        ]),
    );
    let pid = must(
        &bed,
        "run on overlayfs",
        bed.containerd.run_detached("overlayfs", &gzip, "oracle"),
    );
    let oracle = rootfs::list_process_root(pid).expect("walk oracle");
    bed.containerd.remove_container("oracle");
    let before: u64 = img.layers.iter().map(|d| bed.registry.bytes_sent(d)).sum();
    // rpull passes the layer labels: the daemon downloads (piece store, P2P) and unpacks.
    rpull(&bed, &gzip);
    let unpacked = bed
        .daemon
        .log()
        .matches("layer unpacked and committed")
        .count();
    assert_eq!(unpacked, 3, "{}", bed.logs());
    let sent: u64 = img
        .layers
        .iter()
        .map(|d| bed.registry.bytes_sent(d))
        .sum::<u64>()
        - before;
    assert_eq!(
        sent, img.layer_bytes,
        "each layer blob is downloaded exactly once"
    );
    let pid = must(
        &bed,
        "run",
        bed.containerd.run_detached("dragonfly", &gzip, "ours"),
    );
    let ours = rootfs::list_process_root(pid).expect("walk ours");
    let d = rootfs::diff(&oracle, &ours);
    assert!(
        d.is_empty(),
        "unpacked by us differs from containerd's unpack:\n{}\n{}",
        d.join("\n"),
        bed.logs()
    );
}

#[test]
fn a_container_reading_one_small_file_fetches_a_small_fraction() {
    let bed = TestBed::start("prefetch: {background: false}").expect("test bed");
    let img = must(&bed, "build fixture", fixtures::large_image(bed.path()));
    let [_, esgz, zstd] = must(
        &bed,
        "publish",
        fixtures::publish(&bed.containerd, &bed.registry.addr, "large", &img, &[]),
    );
    for image in [&esgz, &zstd] {
        let before = total_blob_bytes(&bed);
        rpull(&bed, image);
        let (ok, out) = bed.containerd.run_once(
            "dragonfly",
            image,
            "small",
            &["/bin/cat", "/data/small.txt"],
        );
        assert!(
            ok && out.contains("a small file next to a huge one"),
            "{image}: {out}\n{}",
            bed.logs()
        );
        let fetched = total_blob_bytes(&bed) - before;
        let layers: u64 = layer_digests(image)
            .iter()
            .map(|d| std::fs::metadata(bed.registry.blob_path(d)).unwrap().len())
            .sum();
        eprintln!(
            "{image}: fetched {fetched} of {layers} blob bytes ({:.1}%)",
            100.0 * fetched as f64 / layers as f64
        );
        assert!(
            fetched * 10 < layers,
            "{image}: fetched {fetched} of {layers} bytes: not lazy"
        );
    }
}

#[test]
fn a_killed_daemon_comes_back_without_downloading_again() {
    let mut bed = TestBed::start("prefetch: {background: false}").expect("test bed");
    let img = must(&bed, "build fixture", fixtures::large_image(bed.path()));
    let [_, esgz, _] = must(
        &bed,
        "publish",
        fixtures::publish(&bed.containerd, &bed.registry.addr, "large", &img, &[]),
    );
    rpull(&bed, &esgz);
    let (ok, out) = bed.containerd.run_once(
        "dragonfly",
        &esgz,
        "first",
        &["/bin/cat", "/data/small.txt"],
    );
    assert!(ok, "{out}\n{}", bed.logs());
    let gets = bed.registry.blob_gets().len();

    bed.daemon.kill9();
    let restarted = bed.daemon.restart();
    must(&bed, "restart daemon", restarted);
    assert!(
        bed.daemon.log().contains("lazy layer re-mounted"),
        "{}",
        bed.logs()
    );
    // containerd's gRPC client reconnects to the restarted daemon with back-off; until then
    // calls fail with "unavailable", as they would for kubelet, which retries.
    let mut attempt = 0;
    let (ok, out) = loop {
        attempt += 1;
        let r = bed.containerd.run_once(
            "dragonfly",
            &esgz,
            &format!("second-{attempt}"),
            &["/bin/cat", "/data/small.txt"],
        );
        if r.0 || !r.1.contains("unavailable") || attempt == 40 {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(
        ok && out.contains("a small file"),
        "after restart: {out}\n{}",
        bed.logs()
    );
    let new: Vec<_> = bed.registry.blob_gets().into_iter().skip(gets).collect();
    assert!(
        new.is_empty(),
        "already-fetched ranges were downloaded again: {new:?}"
    );

    // Ranges not fetched before still come from the registry after the restart.
    let (ok, out) = bed.containerd.run_once(
        "dragonfly",
        &esgz,
        "third",
        &["/bin/sha256sum", "/data/huge.bin"],
    );
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        fixtures::random_bytes(40 << 20, 7),
    ));
    assert!(ok && out.contains(&want), "{out}\n{}", bed.logs());
}

#[test]
fn tampered_registry_bytes_read_as_io_errors() {
    let bed = TestBed::start("prefetch: {background: false}").expect("test bed");
    let img = must(&bed, "build fixture", fixtures::kinds_image(bed.path()));
    let [_, esgz, _] = must(
        &bed,
        "publish",
        fixtures::publish(&bed.containerd, &bed.registry.addr, "kinds", &img, &[]),
    );
    // The kinds layer is mostly data/big.bin: its middle byte is inside that file's chunks.
    let kinds_layer = &layer_digests(&esgz)[1];
    let path = bed.registry.blob_path(kinds_layer);
    let mut blob = std::fs::read(&path).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x55;
    std::fs::write(&path, blob).unwrap();

    rpull(&bed, &esgz);
    let (ok, out) = bed.containerd.run_once(
        "dragonfly",
        &esgz,
        "tampered",
        &["/bin/sha256sum", "/data/big.bin"],
    );
    let right = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        fixtures::random_bytes(6 << 20, 1),
    ));
    assert!(
        !ok && !out.contains(&right),
        "a tampered chunk must not be served: {out}"
    );
    assert!(
        out.contains("I/O error") || out.contains("Input/output error"),
        "{out}"
    );
    let (ok, out) =
        bed.containerd
            .run_once("dragonfly", &esgz, "intact", &["/bin/cat", "/data/owned"]);
    assert!(
        ok && out.contains("owned by 1234:5678"),
        "{out}\n{}",
        bed.logs()
    );
}

#[test]
fn an_unreachable_registry_gives_io_errors_never_wrong_bytes() {
    let mut bed = TestBed::start(
        "prefetch: {background: false}\nregistry: {max_retries: 1, retry_base_delay_ms: 50}",
    )
    .expect("test bed");
    let img = must(&bed, "build fixture", fixtures::large_image(bed.path()));
    let [_, esgz, _] = must(
        &bed,
        "publish",
        fixtures::publish(&bed.containerd, &bed.registry.addr, "large", &img, &[]),
    );
    rpull(&bed, &esgz);
    let (ok, out) = bed.containerd.run_once(
        "dragonfly",
        &esgz,
        "before",
        &["/bin/cat", "/data/small.txt"],
    );
    assert!(ok, "{out}\n{}", bed.logs());
    bed.registry.stop();
    let (ok, out) = bed.containerd.run_once(
        "dragonfly",
        &esgz,
        "after",
        &["/bin/sha256sum", "/data/huge.bin"],
    );
    assert!(
        !ok,
        "reading unfetched data without a registry must fail: {out}"
    );
    assert!(
        out.contains("I/O error") || out.contains("Input/output error"),
        "{out}"
    );
    // What was fetched before still works.
    let (ok, out) = bed.containerd.run_once(
        "dragonfly",
        &esgz,
        "cached",
        &["/bin/cat", "/data/small.txt"],
    );
    assert!(ok && out.contains("a small file"), "{out}\n{}", bed.logs());
}

#[test]
fn teardown_leaves_no_mounts_or_processes() {
    let bed = TestBed::start("").expect("test bed");
    let img = must(&bed, "build fixture", fixtures::kinds_image(bed.path()));
    let [_, esgz, _] = must(
        &bed,
        "publish",
        fixtures::publish(&bed.containerd, &bed.registry.addr, "kinds", &img, &[]),
    );
    rpull(&bed, &esgz);
    let container = must(
        &bed,
        "run",
        bed.containerd
            .run_detached("dragonfly", &esgz, "left-running"),
    );
    let dir = bed.path().to_owned();
    let pids = [
        bed.daemon.pid().unwrap(),
        bed.containerd.pid().unwrap(),
        container,
    ];
    assert!(
        !mounts_under(&dir).is_empty(),
        "the running container has mounts"
    );
    drop(bed);
    assert!(
        mounts_under(&dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(&dir)
    );
    for pid in pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        assert!(!alive, "process {pid} survived the teardown");
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
