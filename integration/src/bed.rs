//! One test's world: a temp dir with a registry, our daemon and a containerd using it.
//! Dropped in reverse order of start (containerd, daemon, registry); then mounts left under the
//! dir are detached and the dir removed.

use std::path::Path;

use anyhow::Result;

use crate::containerd::Containerd;
use crate::daemon::Daemon;
use crate::procs::{require_root, TestDir};
use crate::registry::Registry;

/// Registry + daemon + containerd in one temp dir.
pub struct TestBed {
    /// containerd (dropped first).
    pub containerd: Containerd,
    /// Our daemon.
    pub daemon: Daemon,
    /// The registry.
    pub registry: Registry,
    /// The temp dir, removed last, after anything still mounted under it is detached.
    dir: TestDir,
}

impl TestBed {
    /// Starts everything; `daemon_yaml` is extra daemon configuration.
    pub fn start(daemon_yaml: &str) -> Result<TestBed> {
        require_root()?;
        let dir = TestDir::new("dfly-e2e-")?;
        let registry = Registry::start(dir.path())?;
        let daemon = Daemon::start(&dir.path().join("daemon"), daemon_yaml)?;
        let containerd = Containerd::start(&dir.path().join("containerd"), &daemon.socket)?;
        Ok(TestBed {
            containerd,
            daemon,
            registry,
            dir,
        })
    }

    /// The test's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `REGISTRY/REPO:TAG`.
    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.addr)
    }

    /// Logs of every component, for failure messages.
    pub fn logs(&self) -> String {
        let daemon = self.daemon.log();
        let tail: Vec<&str> = daemon.lines().rev().take(60).collect();
        format!(
            "--- daemon log (last 60 lines) ---\n{}\n--- containerd log ---\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            self.containerd.log_tail()
        )
    }
}
