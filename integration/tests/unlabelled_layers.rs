//! Layers whose Prepare carries only the chain ID: what containerd's CRI plugin sends with its
//! default `disable_snapshot_annotations = true` (a stock Kubernetes node). Driven like kubelet
//! (PullImage, RunPodSandbox, CreateContainer, StartContainer, ExecSync): the daemon finds the
//! image being pulled in containerd's content store and serves the layers as labelled ones —
//! eStargz lazily, gzip (the pause image too) downloaded through its piece store and unpacked —
//! so containerd fetches no layer byte itself; plain `ctr image pull` still works; and with no
//! containerd to ask, containerd unpacks. ImageFsInfo reports the daemon's root (its default
//! place under containerd's root).

use std::path::Path;

use dragonfly_integration::cri::{push_pause, CriNode};
use dragonfly_integration::daemon::Daemon;
use dragonfly_integration::fixtures::{self, Published};
use dragonfly_integration::procs::{require_root, TestDir};
use dragonfly_integration::registry::{Mark, Registry};

/// A registry, our daemon and a CRI containerd using it, with the `large` fixture published.
struct Node {
    cri: CriNode,
    daemon: Daemon,
    registry: Registry,
    published: Published,
    _dir: TestDir,
}

impl Node {
    fn start(daemon_yaml: &str) -> Node {
        require_root().expect("root");
        let dir = TestDir::new("dfly-cri-").expect("dir");
        let registry = Registry::start(dir.path()).expect("registry");
        let pause = push_pause(&dir.path().join("pause"), &registry.addr).expect("pause image");
        // containerd's source label drops the registry's port: the daemon finds it in its
        // registry config.
        // The daemon's root where the CRI looks for the snapshotter's filesystem (the
        // daemon's default, under this containerd's root).
        let root = dir
            .path()
            .join("containerd/root/io.containerd.snapshotter.v1.dragonfly");
        let yaml = format!(
            "root: '{}'\nregistry: {{plain_http: ['{}']}}\n{daemon_yaml}",
            root.display(),
            registry.addr
        );
        let daemon = Daemon::start(&dir.path().join("daemon"), &yaml).expect("daemon");
        let cri = CriNode::start(&dir.path().join("containerd"), &daemon.socket, &pause, None)
            .expect("CRI containerd");
        let img = fixtures::large().expect("fixture");
        let published = fixtures::publish(&cri.containerd, &registry.addr, "large", &img, &[])
            .expect("publish");
        Node {
            cri,
            daemon,
            registry,
            published,
            _dir: dir,
        }
    }

    /// Bytes of the layers of `image` the registry sent since `mark`, and their total size.
    fn layer_bytes(&self, mark: Mark, image: &str) -> (u64, u64) {
        let layers = fixtures::layers(image).unwrap();
        let digests: Vec<&str> = layers.iter().map(|l| l.0.as_str()).collect();
        let sent = self
            .registry
            .blob_gets_since(mark)
            .iter()
            .filter(|g| digests.contains(&g.digest.as_str()))
            .map(|g| g.bytes)
            .sum();
        (sent, layers.iter().map(|l| l.1).sum())
    }

    /// The daemon's root.
    fn root(&self) -> std::path::PathBuf {
        self._dir
            .path()
            .join("containerd/root/io.containerd.snapshotter.v1.dragonfly")
    }

    fn logs(&self) -> String {
        format!(
            "--- daemon ---\n{}\n--- containerd ---\n{}",
            self.daemon.log_tail(60),
            self.cri.containerd.log_tail()
        )
    }

    /// A pod running `image` (sleeping); returns the container's `sha256sum` of the huge file.
    fn read_in_pod(&mut self, name: &str, image: &str) -> String {
        let pod = self
            .cri
            .run_pod(name)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
        let id = self
            .cri
            .start_container(&pod, "reader", image, &["/bin/sleep", "3600"])
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
        let (code, out) = self
            .cri
            .exec(&id, &["/bin/sha256sum", "/data/huge.bin"])
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
        assert_eq!(code, 0, "{out}\n{}", self.logs());
        self.cri.remove_pod(&pod).expect("remove pod");
        out
    }
}

#[test]
fn with_default_annotations_a_cri_pull_is_lazy_and_gzip_layers_come_through_the_daemon() {
    let mut node = Node::start("prefetch: {background: false}");
    let want = fixtures::large_huge_sha256();

    // eStargz: PullImage returns after a small part of the layers.
    let esgz = node.published.estargz.clone();
    let mark = node.registry.mark();
    node.cri
        .pull(&esgz)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.logs()));
    let (sent, total) = node.layer_bytes(mark, &esgz);
    assert!(
        node.daemon
            .log()
            .contains("unlabelled layer found in containerd's content store"),
        "{}",
        node.logs()
    );
    assert!(
        sent * 10 < total,
        "PullImage fetched {sent} of {total} layer bytes: not lazy\n{}",
        node.logs()
    );
    eprintln!("eStargz PullImage: {sent} of {total} layer bytes");
    // ImageFsInfo names the filesystem the daemon fills (kubelet's image GC reads it).
    let fs = node.cri.image_fs().expect("ImageFsInfo");
    let root = node.root();
    assert_eq!(Path::new(&fs), root, "ImageFsInfo");
    assert!(
        root.join("snapshots").is_dir(),
        "the daemon keeps its snapshots there"
    );
    let out = node.read_in_pod("esgz", &esgz);
    assert!(out.contains(&want), "{out}\n{}", node.logs());

    // gzip: every layer downloaded and unpacked by the daemon, each leaving the registry once.
    let gzip = node.published.gzip.clone();
    let mark = node.registry.mark();
    node.cri
        .pull(&gzip)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.logs()));
    let (sent, total) = node.layer_bytes(mark, &gzip);
    assert_eq!(
        sent, total,
        "each gzip layer is fetched once, by the daemon"
    );
    let log = node.daemon.log();
    for (digest, ..) in fixtures::layers(&gzip).unwrap() {
        assert!(
            log.lines()
                .any(|l| l.contains(digest.as_str()) && l.contains("unpacked")),
            "layer {digest} was not unpacked by the daemon\n{}",
            node.logs()
        );
    }
    let out = node.read_in_pod("gzip", &gzip);
    assert!(out.contains(&want), "{out}\n{}", node.logs());

    // Plain `ctr image pull` (containerd fetches, then unpacks with no labels) still works.
    let ctd = &node.cri.containerd;
    ctd.pull("dragonfly", &node.published.zstdchunked)
        .unwrap_or_else(|e| panic!("ctr image pull: {e:#}\n{}", node.logs()));
    let (ok, out) = ctd.run_once(
        "dragonfly",
        &node.published.zstdchunked,
        "ctr-zstd",
        &["/bin/sha256sum", "/data/huge.bin"],
    );
    assert!(ok && out.contains(&want), "{out}\n{}", node.logs());
}

#[test]
fn without_a_containerd_to_ask_containerd_unpacks_unlabelled_layers() {
    let mut node = Node::start("containerd: {address: null}");
    let esgz = node.published.estargz.clone();
    let mark = node.registry.mark();
    node.cri
        .pull(&esgz)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.logs()));
    let (sent, total) = node.layer_bytes(mark, &esgz);
    assert_eq!(sent, total, "containerd fetched every layer itself");
    assert!(!node
        .daemon
        .log()
        .contains("found in containerd's content store"));
    let out = node.read_in_pod("esgz", &esgz);
    assert!(
        out.contains(&fixtures::large_huge_sha256()),
        "{out}\n{}",
        node.logs()
    );
}
