//! The README's first command end to end: `scripts/quickstart.sh` starts a registry, the
//! manager, a scheduler, a seed peer and two nodes, preheats the gzip image through the Open
//! API and pulls and runs both images on each node. Its per-node lines must show the preheated
//! image's layers coming from peers with nothing from the registry on node 2, and the other
//! image coming from peers too; `scripts/quickstart.sh stop` must leave no process or mount.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dragonfly_integration::procs::{
    built_binary, mounts_under, pid_alive, require_root, run_timeout, TestDir,
};
use regex::Regex;

/// The quickstart's promise on a warm build.
const QUICKSTART_LIMIT: Duration = Duration::from_secs(300);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/quickstart.sh")
}

/// A base port with the 7 ports above it free on loopback (below the ephemeral range).
fn free_port_range() -> u16 {
    let taken = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_err();
    let mut base = 20000 + (std::process::id() % 1000) as u16 * 10;
    while (base..base + 7).any(taken) {
        base += 7;
    }
    base
}

/// Runs `scripts/quickstart.sh stop` on drop, so a failed test leaves nothing behind.
struct Stopper<'a> {
    env: &'a [(String, String)],
}

impl Drop for Stopper<'_> {
    fn drop(&mut self) {
        let mut cmd = Command::new(script());
        cmd.arg("stop").envs(self.env.iter().cloned());
        let _ = run_timeout(&mut cmd, Duration::from_secs(60));
    }
}

/// One per-node line: (node, image, from peers, from the registry).
fn results(out: &str) -> Vec<(String, String, u64, u64)> {
    let line = Regex::new(
        r"(?m)^(node\d) (\S+)  from peers: (\d+) B  from the registry: (\d+) B  start: [0-9.]+ s$",
    )
    .unwrap();
    line.captures_iter(out)
        .map(|c| {
            (
                c[1].to_owned(),
                c[2].to_owned(),
                c[3].parse().unwrap(),
                c[4].parse().unwrap(),
            )
        })
        .collect()
}

fn pids(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect()
}

#[test]
fn quickstart_shows_the_swarm_and_stops_cleanly() {
    require_root().expect("root");
    let tmp = TestDir::new("dfly-quickstart-").expect("temp dir");
    let qs_dir = tmp.path().join("qs");
    let bin_dir = built_binary("DRAGONFLY_SNAPSHOTTER_BIN", "dragonfly-snapshotter")
        .expect("daemon")
        .parent()
        .unwrap()
        .to_owned();
    let env: Vec<(String, String)> = vec![
        ("QS_DIR".into(), qs_dir.display().to_string()),
        ("QS_PORT_BASE".into(), free_port_range().to_string()),
        ("QS_IP_BASE".into(), "127.0.4".into()),
        ("QS_BIN_DIR".into(), bin_dir.display().to_string()),
    ];
    let stopper = Stopper { env: &env };
    let mut cmd = Command::new(script());
    cmd.envs(env.iter().cloned());
    let out = match run_timeout(&mut cmd, QUICKSTART_LIMIT) {
        Ok(out) => out,
        Err(e) => panic!("scripts/quickstart.sh failed:\n{e:#}"),
    };
    let lines = results(&out);
    let line = |node: &str, tag: &str| {
        lines
            .iter()
            .find(|l| l.0 == node && l.1.ends_with(tag))
            .unwrap_or_else(|| panic!("no line for {node} {tag}:\n{out}"))
            .clone()
    };
    assert_eq!(lines.len(), 4, "{out}");
    // The preheated gzip image: every layer byte from peers, none from the registry.
    for node in ["node1", "node2"] {
        let (_, _, peers, registry) = line(node, ":gzip");
        assert_eq!(
            registry, 0,
            "{node} fetched the preheated layer from the registry:\n{out}"
        );
        assert!(peers > 0, "{out}");
    }
    // The eStargz image was not preheated; node 2 still gets its pieces from peers.
    assert!(line("node2", ":estargz").2 > 0, "{out}");
    assert!(out.contains("Console:") && out.contains("dfp_"), "{out}");

    let started = pids(&qs_dir);
    assert!(started.len() >= 8, "pid files: {started:?}");
    drop(stopper);
    assert!(pids(&qs_dir).is_empty(), "pid files left after stop");
    assert_eq!(mounts_under(&qs_dir), Vec::<String>::new(), "mounts left");
    let alive: Vec<u32> = started.into_iter().filter(|p| pid_alive(*p)).collect();
    assert!(alive.is_empty(), "still running after stop: {alive:?}");
}
