//! `scripts/bench.sh cri`: kubelet's cold start of the python image through containerd's CRI
//! plugin — PullImage, RunPodSandbox, CreateContainer and StartContainer of `python3 -V`, until
//! it exits — with our snapshotter at containerd's default annotations (the eStargz image,
//! lazy) against overlayfs (the gzip image), in the same run, each on a fresh containerd and
//! daemon. The sandbox image is pulled before the clock starts (nodes have it).
//!
//! Usage: `cri_bench REGISTRY OUT.json`; `REGISTRY/bench/python:gzip` and `:estargz` must be
//! there (bench.sh pushes them and limits the registry's egress).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dragonfly_integration::cri::{push_pause, CriNode};
use dragonfly_integration::daemon::Daemon;
use dragonfly_integration::procs::TestDir;

/// Seconds from PullImage to the exit of `python3 -V` in a new pod, `snapshotter` serving.
fn cold_start(
    dir: &Path,
    registry: &str,
    pause: &str,
    snapshotter: &str,
    image: &str,
) -> Result<f64> {
    let root = dir.join("containerd/root/io.containerd.snapshotter.v1.dragonfly");
    let yaml = format!(
        "root: '{}'\nregistry: {{plain_http: ['{registry}']}}\nlog: {{level: info}}\n",
        root.display()
    );
    let daemon = Daemon::start(&dir.join("daemon"), &yaml)?;
    let mut cri = CriNode::start_with(
        &dir.join("containerd"),
        &daemon.socket,
        pause,
        snapshotter,
        None,
    )?;
    cri.pull(pause).context("pre-pull the sandbox image")?;
    let t = Instant::now();
    cri.pull(image)?;
    let pod = cri.run_pod("bench")?;
    let id = cri.start_container(&pod, "python", image, &["/usr/bin/python3", "-V"])?;
    let code = cri.wait_exited(&id, Duration::from_secs(900))?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(code == 0, "python3 -V exited with {code} ({snapshotter})");
    cri.remove_pod(&pod)?;
    Ok(secs)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (registry, out) = match (args.next(), args.next()) {
        (Some(r), Some(o)) => (r, o),
        _ => anyhow::bail!("usage: cri_bench REGISTRY OUT.json"),
    };
    let dir = TestDir::new("dfly-cri-bench-")?;
    let pause = push_pause(&dir.path().join("pause"), &registry)?;
    let gzip = format!("{registry}/bench/python:gzip");
    let estargz = format!("{registry}/bench/python:estargz");
    let overlayfs = cold_start(
        &dir.path().join("ovl"),
        &registry,
        &pause,
        "overlayfs",
        &gzip,
    )?;
    eprintln!("overlayfs (gzip): {overlayfs:.2} s");
    let dragonfly = cold_start(
        &dir.path().join("df"),
        &registry,
        &pause,
        "dragonfly",
        &estargz,
    )?;
    eprintln!("dragonfly (eStargz, default annotations): {dragonfly:.2} s");
    let r = serde_json::json!({
        "bench": "cri_coldstart",
        "image": "debian bookworm minbase + python3, `python3 -V` in a new pod",
        "annotations": "containerd default (disable_snapshot_annotations = true)",
        "overlayfs_seconds": overlayfs,
        "dragonfly_seconds": dragonfly,
        "speedup": overlayfs / dragonfly,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&r)?)?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    println!(
        "CRI cold start of python3 -V: overlayfs {overlayfs:.2}s, dragonfly {dragonfly:.2}s => {:.1}x faster",
        overlayfs / dragonfly
    );
    Ok(())
}
