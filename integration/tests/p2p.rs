//! P2P end to end: a registry, a scheduler and several nodes (each its own containerd and
//! daemon). A layer one node has read is served to the others by that node, not the registry.

use std::process::Command;

use dragonfly_integration::procs::run;
use dragonfly_integration::swarm::Swarm;
use dragonfly_integration::{fixtures, rootfs};

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
fn a_second_node_gets_the_layer_from_the_first_not_the_registry() {
    let swarm = Swarm::start(2, "prefetch: {background: false}").expect("swarm");
    let must = |what: &str, r: anyhow::Result<String>| {
        r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", swarm.logs()))
    };
    let img = fixtures::large_image(swarm.path()).expect("fixture");
    let [gzip, esgz, _] = fixtures::publish(
        &swarm.nodes[0].containerd,
        &swarm.registry.addr,
        "large",
        &img,
        &[],
    )
    .expect("publish");
    let layers = layer_digests(&esgz);
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        fixtures::random_bytes(40 << 20, 7),
    ));
    let layer_bytes =
        |swarm: &Swarm| -> u64 { layers.iter().map(|d| swarm.registry.bytes_sent(d)).sum() };

    // Node 0 pulls lazily and reads everything: all from the registry.
    let a = &swarm.nodes[0];
    must(
        "rpull on node 0",
        a.containerd.ctr_remote(&[
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "dragonfly",
            &esgz,
        ]),
    );
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
    must(
        "rpull on node 1",
        b.containerd.ctr_remote(&[
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "dragonfly",
            &esgz,
        ]),
    );
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

    // And what node 1 sees is what overlayfs shows.
    must(
        "oracle pull",
        b.containerd.ctr(&[
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            "overlayfs",
            &gzip,
        ]),
    );
    let pid = b
        .containerd
        .run_detached("overlayfs", &gzip, "oracle")
        .expect("oracle");
    let oracle = rootfs::list_process_root(pid).expect("walk oracle");
    b.containerd.remove_container("oracle");
    let pid = b
        .containerd
        .run_detached("dragonfly", &esgz, "ours")
        .expect("ours");
    let ours = rootfs::list_process_root(pid).expect("walk ours");
    let d = rootfs::diff(&oracle, &ours);
    assert!(d.is_empty(), "{}", d.join("\n"));
}
