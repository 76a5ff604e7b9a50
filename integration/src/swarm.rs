//! A swarm on one machine: a registry, a scheduler and several nodes, each with its own daemon
//! (P2P enabled, its own host ID and upload port) and its own containerd.

use dragonfly_membership::{Ca, Identity, Role};
use std::path::Path;

use anyhow::Result;

use crate::containerd::Containerd;
use crate::daemon::Daemon;
use crate::fixtures::{self, Published};
use crate::manager::Manager;
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
    /// The cluster CA, when the swarm runs with mutual TLS from files.
    pub ca: Option<Ca>,
    /// The manager members joined through, when they joined with tokens.
    pub manager: Option<Joined>,
}

/// A manager that is the cluster's CA, and what it printed at its first start.
pub struct Joined {
    /// The manager.
    pub manager: Manager,
    /// `sha256:...` of its CA.
    pub fingerprint: String,
    /// The join token of each role (scheduler, seed, peer).
    pub tokens: Vec<(Role, String)>,
}

impl Joined {
    /// Starts a manager in `dir` that is the cluster's CA (certificates may name any
    /// address: every node dials it from 127.0.0.1) and reads the join tokens it prints.
    pub fn start(dir: &Path) -> Result<Joined> {
        let extra = format!(
            "ca: {{dir: '{}', any_ip: true}}\njobs: {{allowed_networks: ['127.0.0.0/8']}}\n",
            dir.join("ca").display()
        );
        // The registry is on loopback: allow-listed for preheat URLs.
        let manager = Manager::start(dir, "", &extra)?;
        // The tokens are printed once the gRPC port is up, after the HTTP port.
        crate::procs::wait_until("join tokens", std::time::Duration::from_secs(20), || {
            manager.log().contains("join-token create")
        })?;
        let log = manager.log();
        let field = |key: &str| {
            log.lines()
                .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_owned()))
                .ok_or_else(|| anyhow::anyhow!("the manager printed no {key}\n{log}"))
        };
        let fingerprint = field("ca_fingerprint:")?;
        let tokens = [Role::Scheduler, Role::Seed, Role::Peer]
            .into_iter()
            .map(|r| Ok((r, field(r.as_str())?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Joined {
            manager,
            fingerprint,
            tokens,
        })
    }

    /// The `security:` config joining as `role`, credentials kept in `dir`: peers with the
    /// token only, the others pinning the CA's fingerprint too.
    pub fn security(&self, role: Role, dir: &Path) -> String {
        let token = &self
            .tokens
            .iter()
            .find(|(r, _)| *r == role)
            .expect("a token per role")
            .1;
        // Peers join with the token alone (the CA is checked with it); the others pin the
        // CA's fingerprint as well, so both ways are used.
        let pin = if role == Role::Peer {
            String::new()
        } else {
            self.fingerprint.clone()
        };
        format!(
            "security: {{join: {{manager: '{}', token: '{token}', ca_fingerprint: '{pin}'}}, dir: '{}'}}",
            self.manager.grpc,
            dir.display()
        )
    }
}

/// How the swarm's members authenticate.
enum Membership {
    /// They do not (plain connections).
    None,
    /// Certificate files from this CA.
    Files(Ca),
    /// Join tokens from a manager.
    Join,
}

/// Writes `id`'s credentials (a `role` certificate for `ip` from `ca`) into `dir` and returns
/// the `security:` config naming them.
pub fn member_files(ca: &Ca, dir: &Path, role: Role, id: &str, ip: &str) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    let issued = ca
        .issue(
            &Identity::new(role, id).map_err(|e| anyhow::anyhow!("{e}"))?,
            &[ip.parse()?],
            &[],
            std::time::Duration::from_secs(24 * 3600),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, pem) in [
        ("ca.pem", ca.cert_pem()),
        ("cert.pem", &issued.cert_pem),
        ("key.pem", &issued.key_pem),
    ] {
        std::fs::write(dir.join(name), pem)?;
    }
    Ok(format!(
        "security: {{ca: '{d}/ca.pem', cert: '{d}/cert.pem', key: '{d}/key.pem'}}",
        d = dir.display()
    ))
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
        Swarm::start_inner(seeds, n, daemon_yaml, p2p_extra, Membership::None)
    }

    /// Like [`Swarm::start_with_seeds`], the scheduler and every daemon members of a new
    /// cluster CA (mutual TLS), each node's certificate naming its host ID `node-<i>`.
    pub fn start_tls(seeds: usize, n: usize, daemon_yaml: &str) -> Result<Swarm> {
        let ca = Ca::create("test cluster").map_err(|e| anyhow::anyhow!("{e}"))?;
        Swarm::start_inner(seeds, n, daemon_yaml, "", Membership::Files(ca))
    }

    /// Like [`Swarm::start_tls`], every member joining through a manager with the join token
    /// of its role (no certificate files given to anyone).
    pub fn start_joined(seeds: usize, n: usize, daemon_yaml: &str) -> Result<Swarm> {
        Swarm::start_inner(seeds, n, daemon_yaml, "", Membership::Join)
    }

    fn start_inner(
        seeds: usize,
        n: usize,
        daemon_yaml: &str,
        p2p_extra: &str,
        membership: Membership,
    ) -> Result<Swarm> {
        require_root()?;
        let dir = TestDir::new("dfly-swarm-")?;
        let registry = Registry::start(dir.path())?;
        let joined = match membership {
            Membership::Join => Some(Joined::start(&dir.path().join("manager"))?),
            _ => None,
        };
        let ca = match membership {
            Membership::Files(ca) => Some(ca),
            _ => None,
        };
        let security = |name: &str, role: Role, ip: &str| -> Result<String> {
            let tls = dir.path().join(name).join("tls");
            match (&ca, &joined) {
                (Some(ca), _) => member_files(ca, &tls, role, name, ip),
                (None, Some(j)) => Ok(j.security(role, &tls)),
                (None, None) => Ok(String::new()),
            }
        };
        let scheduler = Scheduler::start_with(
            &dir.path().join("scheduler"),
            &security("scheduler", Role::Scheduler, "127.0.0.1")?,
        )?;
        let mut nodes = Vec::new();
        for i in 0..n {
            let metrics = format!("127.0.0.1:{}", free_port());
            // Each node has its own loopback address.
            let ip = 10 + i;
            let role = if i < seeds { Role::Seed } else { Role::Peer };
            let yaml = format!(
                "metrics: {{address: '{metrics}'}}\np2p: {{schedulers: ['{}'], listen: '127.0.0.{ip}:0', advertise_ip: 127.0.0.{ip}, host_id: node-{i}, seed_peer: {}{}}}\n{}\n{daemon_yaml}",
                scheduler.addr,
                i < seeds,
                if p2p_extra.is_empty() { String::new() } else { format!(", {p2p_extra}") },
                security(&format!("node-{i}"), role, &format!("127.0.0.{ip}"))?
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
            ca,
            manager: joined,
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
        let mut logs = vec![("scheduler", self.scheduler.log())];
        if let Some(j) = &self.manager {
            logs.push(("manager", j.manager.log()));
        }
        for (name, log) in logs {
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            out.push_str(&format!(
                "--- {name} ---\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        out
    }
}
