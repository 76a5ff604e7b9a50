//! The CRI path, driven like kubelet. Mostly layers whose Prepare carries only the chain ID:
//! what containerd's CRI plugin sends with its default `disable_snapshot_annotations = true`
//! (a stock Kubernetes node). Also: annotations on (zstd:chunked, container logs, image
//! removal), and two nodes with a seed peer and a scheduler, the second taking its layers from
//! peers. Driven like kubelet
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
use dragonfly_integration::scheduler::Scheduler;

/// A registry, our daemon and a CRI containerd using it, with the `large` fixture published.
struct Node {
    cri: CriNode,
    daemon: Daemon,
    registry: Registry,
    published: Published,
    _dir: TestDir,
}

/// Our daemon and a CRI containerd in `dir`, pulling from `registry` with sandbox image
/// `pause`; `daemon_yaml` is extra daemon config.
fn cri_node(
    dir: &Path,
    registry: &str,
    pause: &str,
    daemon_yaml: &str,
    annotations: Option<bool>,
) -> (Daemon, CriNode) {
    // The daemon's root where the CRI looks for the snapshotter's filesystem (the daemon's
    // default, under this containerd's root); containerd's source label drops the
    // registry's port, so the daemon's registry config names it.
    let root = dir.join("containerd/root/io.containerd.snapshotter.v1.dragonfly");
    let yaml = format!(
        "root: '{}'\nregistry: {{plain_http: ['{registry}']}}\n{daemon_yaml}",
        root.display()
    );
    let daemon = Daemon::start(&dir.join("daemon"), &yaml).expect("daemon");
    let cri = CriNode::start(&dir.join("containerd"), &daemon.socket, pause, annotations)
        .expect("CRI containerd");
    (daemon, cri)
}

impl Node {
    fn start(daemon_yaml: &str) -> Node {
        Node::start_with(daemon_yaml, None)
    }

    fn start_with(daemon_yaml: &str, annotations: Option<bool>) -> Node {
        require_root().expect("root");
        let dir = TestDir::new("dfly-cri-").expect("dir");
        let registry = Registry::start(dir.path()).expect("registry");
        let pause = push_pause(&dir.path().join("pause"), &registry.addr).expect("pause image");
        let (daemon, cri) = cri_node(dir.path(), &registry.addr, &pause, daemon_yaml, annotations);
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

    /// PullImage of `image`: the bytes of its layers the registry sent meanwhile, and their
    /// total size.
    fn pull(&mut self, image: &str) -> (u64, u64) {
        let mark = self.registry.mark();
        if let Err(e) = self.cri.pull(image) {
            panic!("{e:#}\n{}", self.logs());
        }
        self.layer_bytes(mark, image)
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
    let (sent, total) = node.pull(&esgz);
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
    let (sent, total) = node.pull(&gzip);
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
    let (sent, total) = node.pull(&esgz);
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

#[test]
fn with_annotations_on_zstd_chunked_is_lazy_logs_are_written_and_images_are_removed() {
    let mut node = Node::start_with("prefetch: {background: false}", Some(true));
    let zstd = node.published.zstdchunked.clone();
    let (sent, total) = node.pull(&zstd);
    assert!(sent * 10 < total, "{sent} of {total}\n{}", node.logs());
    assert!(
        !node
            .daemon
            .log()
            .contains("found in containerd's content store"),
        "labelled layers need no lookup"
    );
    let pod = node.cri.run_pod("zstd").expect("pod");
    let id = node
        .cri
        .start_container(
            &pod,
            "talker",
            &zstd,
            &["/bin/sh", "-c", "cat /data/small.txt; sleep 3600"],
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.logs()));
    let (code, out) = node
        .cri
        .exec(&id, &["/bin/sha256sum", "/data/huge.bin"])
        .unwrap();
    assert!(
        code == 0 && out.contains(&fixtures::large_huge_sha256()),
        "{out}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !node
        .cri
        .log_of(&pod, "talker")
        .contains("a small file next to a huge one")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line: {:?}",
            node.cri.log_of(&pod, "talker")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    node.cri.remove_pod(&pod).expect("remove pod");
    assert!(node.cri.has_image(&zstd).unwrap());
    node.cri.remove_image(&zstd).expect("RemoveImage");
    assert!(!node.cri.has_image(&zstd).unwrap(), "the image is gone");
}

/// Node `i` of a swarm: P2P through `scheduler`, its own loopback address.
fn p2p_yaml(scheduler: &str, i: usize) -> String {
    let ip = 20 + i;
    format!(
        "p2p: {{schedulers: ['{scheduler}'], listen: '127.0.0.{ip}:0', advertise_ip: 127.0.0.{ip}, host_id: cri-node-{i}}}\n"
    )
}

#[test]
fn with_a_seed_and_a_scheduler_a_second_cri_node_takes_no_layer_byte_from_the_registry() {
    require_root().expect("root");
    let dir = TestDir::new("dfly-cri-p2p-").expect("dir");
    let registry = Registry::start(dir.path()).expect("registry");
    let scheduler = Scheduler::start(&dir.path().join("scheduler")).expect("scheduler");
    let pause = push_pause(&dir.path().join("pause"), &registry.addr).expect("pause image");
    // A seed peer (no containerd of its own): the scheduler sends first downloads to it.
    let _seed = Daemon::start(
        &dir.path().join("seed/daemon"),
        &format!(
            "registry: {{plain_http: ['{}']}}\np2p: {{schedulers: ['{}'], listen: '127.0.0.29:0', advertise_ip: 127.0.0.29, host_id: cri-seed, seed_peer: true}}\n",
            registry.addr, scheduler.addr
        ),
    )
    .expect("seed peer");
    let mut nodes: Vec<(Daemon, CriNode)> = (0..2)
        .map(|i| {
            let d = dir.path().join(format!("node-{i}"));
            cri_node(
                &d,
                &registry.addr,
                &pause,
                &p2p_yaml(&scheduler.addr, i),
                None,
            )
        })
        .collect();
    let img = fixtures::large().expect("fixture");
    let published = fixtures::publish(&nodes[0].1.containerd, &registry.addr, "large", &img, &[])
        .expect("publish");
    let logs = |nodes: &[(Daemon, CriNode)]| {
        nodes
            .iter()
            .enumerate()
            .map(|(i, (d, _))| format!("--- node {i} ---\n{}", d.log_tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let layers = fixtures::layers(&published.gzip).unwrap();
    let digests: Vec<&str> = layers.iter().map(|l| l.0.as_str()).collect();
    let layer_bytes = |mark| -> u64 {
        registry
            .blob_gets_since(mark)
            .iter()
            .filter(|g| digests.contains(&g.digest.as_str()))
            .map(|g| g.bytes)
            .sum()
    };
    let mark = registry.mark();
    nodes[0]
        .1
        .pull(&published.gzip)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&nodes)));
    let first = layer_bytes(mark);
    let mark = registry.mark();
    nodes[1]
        .1
        .pull(&published.gzip)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&nodes)));
    let second = layer_bytes(mark);
    eprintln!("registry layer bytes: first node {first}, second node {second}");
    assert_eq!(
        second,
        0,
        "the second node's layers came from the registry\n{}",
        logs(&nodes)
    );
    let cri = &mut nodes[1].1;
    let pod = cri.run_pod("p2p").expect("pod");
    let id = cri
        .start_container(&pod, "reader", &published.gzip, &["/bin/sleep", "3600"])
        .expect("container");
    let (code, out) = cri
        .exec(&id, &["/bin/sha256sum", "/data/huge.bin"])
        .unwrap();
    assert!(
        code == 0 && out.contains(&fixtures::large_huge_sha256()),
        "{out}"
    );
    cri.remove_pod(&pod).expect("remove pod");
}
