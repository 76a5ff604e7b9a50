//! The test bed tests itself, without our daemon: fixture images build, push and convert; the
//! registry's access log counts what was served; the rootfs comparer finds containerd's
//! overlayfs unpack equal to umoci's unpack of the same image and reports a modified copy; and
//! a test bed torn down by a panic leaves no mounts, processes or files.

use std::path::Path;
use std::process::Command;

use dragonfly_integration::containerd::Containerd;
use dragonfly_integration::procs::{
    assert_torn_down, mounts_under, pid_alive, require_root, run, TestDir,
};
use dragonfly_integration::registry::Registry;
use dragonfly_integration::{fixtures, rootfs};

/// Registry and containerd (its `dragonfly` proxy points at a socket nobody serves).
struct Bed {
    containerd: Containerd,
    registry: Registry,
    dir: TestDir,
}

impl Bed {
    fn start() -> Bed {
        require_root().unwrap();
        let dir = TestDir::new("dfly-bed-").unwrap();
        let registry = Registry::start(dir.path()).unwrap();
        let containerd = Containerd::start(
            &dir.path().join("containerd"),
            &dir.path().join("no-daemon.sock"),
        )
        .unwrap();
        Bed {
            containerd,
            registry,
            dir,
        }
    }

    fn pull_overlayfs(&self, image: &str) {
        self.containerd
            .pull("overlayfs", image)
            .unwrap_or_else(|e| panic!("pull {image}: {e:#}\n{}", self.containerd.log_tail()));
    }
}

/// Entry names of a gzip'd tar blob, in order.
fn tar_names(blob: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(flate2::read::MultiGzDecoder::new(blob));
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn fixtures_publish_in_three_formats_and_the_access_log_counts_blob_bytes() {
    let bed = Bed::start();
    let img = fixtures::kinds().unwrap();
    assert_eq!(img.layers.len(), 4, "busybox, kinds, changes, opaque");
    let p = fixtures::publish(
        &bed.containerd,
        &bed.registry.addr,
        "kinds",
        &img,
        // In the layer that adds data/ (a file of a layer without its parent dir's entry,
        // like data/layer3.txt from umoci, cannot be prioritized by the converter).
        &["data/owned"],
    )
    .unwrap_or_else(|e| panic!("publish: {e:#}\n{}", bed.containerd.log_tail()));

    let gzip = fixtures::layers(&p.gzip).unwrap();
    let digests: Vec<&String> = gzip.iter().map(|l| &l.0).collect();
    assert_eq!(digests, img.layers.iter().collect::<Vec<_>>());

    let esgz = fixtures::layers(&p.estargz).unwrap();
    assert_eq!(esgz.len(), 4);
    // With a record file every layer gets a landmark; the recorded file precedes it.
    let mut holding = 0;
    for (digest, size, media, ann) in &esgz {
        assert_eq!(media, "application/vnd.oci.image.layer.v1.tar+gzip");
        assert!(
            ann["containerd.io/snapshot/stargz/toc.digest"].is_string(),
            "eStargz layer {digest} has no TOC digest: {ann}"
        );
        let blob = std::fs::read(bed.registry.blob_path(digest)).unwrap();
        assert_eq!(blob.len() as u64, *size);
        let names = tar_names(&blob);
        assert!(names.iter().any(|n| n == "stargz.index.json"), "{names:?}");
        let landmark = names.iter().position(|n| n == ".prefetch.landmark");
        assert!(landmark.is_some(), "{names:?}");
        if let Some(file) = names.iter().position(|n| n == "data/owned") {
            holding += 1;
            assert!(
                landmark.is_some_and(|l| file < l),
                "the recorded file comes before the landmark: {names:?}"
            );
        }
    }
    assert_eq!(holding, 1, "one layer holds data/owned");

    let zstd = fixtures::layers(&p.zstdchunked).unwrap();
    assert_eq!(zstd.len(), 4);
    for (digest, _, media, ann) in &zstd {
        assert_eq!(media, "application/vnd.oci.image.layer.v1.tar+zstd");
        assert!(
            ann["io.containers.zstd-chunked.manifest-checksum"].is_string(),
            "zstd:chunked layer {digest} has no manifest checksum: {ann}"
        );
    }

    // The access log: a whole blob, then a range of it.
    let (digest, size, _, _) = &esgz[1];
    let path = format!("/v2/kinds/blobs/{digest}");
    let mark = bed.registry.mark();
    let (status, body) = bed.registry.get(&path, None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(format!("sha256:{}", fixtures::sha256_hex(&body)), *digest);
    let (status, part) = bed.registry.get(&path, Some((100, 199))).unwrap();
    assert_eq!(status, 206);
    assert_eq!(part, body[100..200]);
    bed.registry.get("/v2/", None).unwrap();
    // The registry logs a request once it is done: allow it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while bed.registry.requests_since(mark).len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let gets = bed.registry.blob_gets_since(mark);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets.iter().all(|g| g.digest == *digest));
    assert_eq!((gets[0].status, gets[0].bytes), (200, *size));
    assert_eq!((gets[1].status, gets[1].bytes), (206, 100));
    assert_eq!(bed.registry.blob_bytes_since(mark), size + 100);
    assert_eq!(bed.registry.requests_since(mark).len(), 3);
    assert!(bed.registry.bytes_sent(digest) >= size + 100);
    assert!(bed.registry.blob_bytes_since(bed.registry.mark()) == 0);
}

#[test]
fn overlayfs_shows_what_umoci_unpacks_and_the_comparer_sees_changes() {
    let bed = Bed::start();
    let img = fixtures::kinds().unwrap();
    let p = fixtures::publish(&bed.containerd, &bed.registry.addr, "kinds", &img, &[])
        .unwrap_or_else(|e| panic!("publish: {e:#}\n{}", bed.containerd.log_tail()));
    bed.pull_overlayfs(&p.gzip);
    let mounted = bed.containerd.mount_image("overlayfs", &p.gzip).unwrap();
    let oracle = mounted.listing().unwrap();
    drop(mounted);

    // The fixture is what we think it is.
    let big = fixtures::sha256_hex(&fixtures::random_bytes(
        fixtures::KINDS_BIG_LEN,
        fixtures::KINDS_BIG_SEED,
    ));
    let long = format!("/{}", fixtures::long_path());
    let unicode = format!("/{}", fixtures::UNICODE_PATH);
    for (path, what) in [
        ("/data/big.bin", format!("size=6291456 sha256={big}")),
        ("/data/null", "char mode=666 uid=0 gid=0 rdev=1:3".into()),
        ("/data/fifo", "fifo".into()),
        ("/data/setuid", "mode=6755 uid=1234 gid=5678".into()),
        ("/data/sticky", "dir mode=1777".into()),
        ("/data/sticky", "xattr:user.dir=".into()),
        ("/data/owned", "mode=640 uid=1234 gid=5678".into()),
        ("/data/owned-dir", "dir mode=750 uid=1234 gid=5678".into()),
        ("/data/xattr", "xattr:user.demo=68656c6c6f".into()),
        ("/data/hard1", "links=[/data/hard1,/data/hard2]".into()),
        ("/data/abs-link", "-> /etc/passwd".into()),
        ("/data/rel-link", "-> ../etc/passwd".into()),
        ("/data/empty", "size=0".into()),
        ("/data/layer3.txt", "mode=600".into()),
        ("/opq", "dir mode=700".into()),
        ("/opq/new", "file".into()),
        (long.as_str(), "file".into()),
        (unicode.as_str(), "file".into()),
        ("/bin/sh", "-> busybox".into()),
    ] {
        let got = oracle
            .get(path)
            .unwrap_or_else(|| panic!("oracle lacks {path}"));
        assert!(got.contains(&what), "oracle {path}: {got} lacks {what}");
    }
    for gone in ["/data/gone", "/opq/old1", "/opq/old2", "/bin/ls"] {
        assert!(!oracle.contains_key(gone), "{gone} must be deleted");
    }
    assert!(
        oracle.keys().all(|p| !p.contains(".wh.")),
        "no whiteout shows"
    );

    // umoci's unpack of the same layout equals containerd's.
    let bundle = bed.dir.path().join("umoci-bundle");
    let root = fixtures::umoci_unpack(&img, &bundle).unwrap();
    let umoci = rootfs::list_tree(&root).unwrap();
    // umoci restores trusted.* xattrs; containerd 1.6's overlayfs unpack does not (the oracle,
    // which our snapshotter follows). Every other attribute must agree.
    assert!(umoci["/data/xattr"].contains("xattr:trusted.demo=736563726574"));
    assert!(!oracle["/data/xattr"].contains("xattr:trusted."));
    let d = rootfs::diff(&oracle, &rootfs::without_xattrs(&umoci, "trusted."));
    assert!(d.is_empty(), "overlayfs vs umoci:\n{}", d.join("\n"));

    // Without a record file, eStargz layers say "prefetch nothing".
    for (digest, ..) in fixtures::layers(&p.estargz).unwrap() {
        let names = tar_names(&std::fs::read(bed.registry.blob_path(&digest)).unwrap());
        assert!(
            names.iter().any(|n| n == ".no.prefetch.landmark"),
            "{names:?}"
        );
    }

    // A faithful copy compares equal; each change to it shows.
    let copy = bed.dir.path().join("copy");
    run(Command::new("cp").arg("-a").arg(&root).arg(&copy)).unwrap();
    let d = rootfs::diff(&umoci, &rootfs::list_tree(&copy).unwrap());
    assert!(d.is_empty(), "cp -a copy:\n{}", d.join("\n"));
    type Change = (&'static str, fn(&Path));
    let changes: [Change; 7] = [
        ("/data/empty", |c| {
            std::fs::write(c.join("data/empty"), b"x").unwrap()
        }),
        ("/data/sticky", |c| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                c.join("data/sticky"),
                std::fs::Permissions::from_mode(0o777),
            )
            .unwrap()
        }),
        ("/data/owned", |c| {
            std::os::unix::fs::lchown(c.join("data/owned"), Some(1234), Some(0)).unwrap()
        }),
        ("/data/xattr", |c| {
            run(Command::new("setfattr")
                .args(["-x", "user.demo"])
                .arg(c.join("data/xattr")))
            .unwrap();
        }),
        ("/data/hard2", |c| {
            std::fs::remove_file(c.join("data/hard2")).unwrap();
            std::fs::write(c.join("data/hard2"), b"linked twice\n").unwrap();
        }),
        ("/data/rel-link", |c| {
            std::fs::remove_file(c.join("data/rel-link")).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", c.join("data/rel-link")).unwrap();
        }),
        ("/opq/old1", |c| {
            std::fs::write(c.join("opq/old1"), b"back from the dead\n").unwrap()
        }),
    ];
    for (path, change) in changes {
        change(&copy);
        let d = rootfs::diff(&umoci, &rootfs::list_tree(&copy).unwrap());
        assert!(
            d.iter().any(|l| l.contains(&format!("{path}:"))),
            "changing {path} must show: {d:?}"
        );
    }
}

#[test]
fn a_panicking_test_leaves_no_mounts_processes_or_files() {
    let mut seen: Option<(std::path::PathBuf, Vec<u32>)> = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let bed = Bed::start();
        let img = fixtures::kinds().unwrap();
        let gzip = format!("{}/kinds:gzip", bed.registry.addr);
        dragonfly_integration::oci::push(&img, &gzip).unwrap();
        bed.pull_overlayfs(&gzip);
        let mounted = bed.containerd.mount_image("overlayfs", &gzip).unwrap();
        let init = bed
            .containerd
            .run_detached("overlayfs", &gzip, "left-running")
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap();
        let shim: u32 = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok())
            .unwrap();
        let pids = vec![
            bed.containerd.pid().unwrap(),
            bed.registry.pid(),
            init,
            shim,
        ];
        assert!(pids.iter().all(|p| pid_alive(*p)));
        assert!(
            mounts_under(bed.dir.path()).len() >= 2,
            "the image mount and the container's rootfs: {:?}",
            mounts_under(bed.dir.path())
        );
        seen = Some((bed.dir.path().to_owned(), pids));
        let _keep = mounted;
        panic!("deliberate panic with a container running and an image mounted");
    }));
    assert!(outcome.is_err());
    let (dir, pids) = seen.expect("the bed started");
    assert_torn_down(&dir, &pids);
}
