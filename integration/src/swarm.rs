//! A swarm on one machine: a registry, a scheduler and several nodes, each with its own daemon
//! (P2P enabled, its own host ID and upload port) and its own containerd.

use std::path::Path;

use anyhow::Result;

use crate::containerd::Containerd;
use crate::daemon::Daemon;
use crate::fixtures::{self, Published};
use crate::oci::BuiltImage;
use crate::procs::{free_port, require_root, TestDir};
use crate::registry::Registry;
use crate::scheduler::Scheduler;

/// One node: our daemon and a containerd using it.
pub struct Node {
    /// containerd (dropped first).
    pub containerd: Containerd,
    /// Our daemon.
    pub daemon: Daemon,
    /// The daemon's metrics address.
    pub metrics: String,
}

impl Node {
    /// The daemon's `/metrics` text.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.metrics) else {
            return String::new();
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// Sum of a metric's samples whose line contains `filter`.
    pub fn metric(&self, name: &str, filter: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Registry + scheduler + nodes in one temp dir.
pub struct Swarm {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The scheduler.
    pub scheduler: Scheduler,
    /// The registry.
    pub registry: Registry,
    dir: TestDir,
}

impl Swarm {
    /// Starts a registry, a scheduler and `n` nodes; `daemon_yaml` is extra daemon config.
    pub fn start(n: usize, daemon_yaml: &str) -> Result<Swarm> {
        Swarm::start_with_seeds(0, n, daemon_yaml)
    }

    /// Like [`Swarm::start`], with the first `seeds` nodes running as seed peers.
    pub fn start_with_seeds(seeds: usize, n: usize, daemon_yaml: &str) -> Result<Swarm> {
        Swarm::start_with(seeds, n, daemon_yaml, "")
    }

    /// Like [`Swarm::start_with_seeds`]; `p2p_extra` adds keys to every daemon's `p2p` map
    /// (e.g. `upload_rate_bytes_per_sec: 8000000`).
    pub fn start_with(seeds: usize, n: usize, daemon_yaml: &str, p2p_extra: &str) -> Result<Swarm> {
        require_root()?;
        let dir = TestDir::new("dfly-swarm-")?;
        let registry = Registry::start(dir.path())?;
        let scheduler = Scheduler::start(&dir.path().join("scheduler"))?;
        let mut nodes = Vec::new();
        for i in 0..n {
            let metrics = format!("127.0.0.1:{}", free_port());
            // Each node has its own loopback address.
            let ip = 10 + i;
            let yaml = format!(
                "metrics: {{address: '{metrics}'}}\np2p: {{schedulers: ['{}'], listen: '127.0.0.{ip}:0', advertise_ip: 127.0.0.{ip}, host_id: node-{i}, seed_peer: {}{}}}\n{daemon_yaml}",
                scheduler.addr,
                i < seeds,
                if p2p_extra.is_empty() { String::new() } else { format!(", {p2p_extra}") }
            );
            let node_dir = dir.path().join(format!("node-{i}"));
            let daemon = Daemon::start(&node_dir.join("daemon"), &yaml)?;
            let containerd = Containerd::start(&node_dir.join("containerd"), &daemon.socket)?;
            nodes.push(Node {
                containerd,
                daemon,
                metrics,
            });
        }
        Ok(Swarm {
            nodes,
            scheduler,
            registry,
            dir,
        })
    }

    /// The swarm's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Pushes fixture `img` to the swarm's registry as `repo` in every format (through node
    /// 0's containerd, whose copies are then forgotten).
    pub fn publish(&self, repo: &str, img: &BuiltImage) -> Result<Published> {
        fixtures::publish(
            &self.nodes[0].containerd,
            &self.registry.addr,
            repo,
            img,
            &[],
        )
    }

    /// Logs for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let log = n.daemon.log();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            out.push_str(&format!(
                "--- node-{i} daemon ---\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        let s = self.scheduler.log();
        let tail: Vec<&str> = s.lines().rev().take(25).collect();
        out.push_str(&format!(
            "--- scheduler ---\n{}\n",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
        out
    }
}
