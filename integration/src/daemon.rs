//! Our daemon, `dragonfly-snapshotter`, started from the built binary (`DRAGONFLY_SNAPSHOTTER_BIN`,
//! else `<target dir>/debug/dragonfly-snapshotter`) with its own root, socket, config and log;
//! it can be killed with SIGKILL and restarted on the same root, as after a crash.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::procs::{unmount_under, wait_until, Proc};

/// Builds the command that starts the daemon from its binary and arguments (e.g. a service
/// manager's wrapper, see [`crate::fdstore`]).
pub type Launcher = Arc<dyn Fn(&Path, &[OsString]) -> Command + Send + Sync>;

/// A running daemon.
pub struct Daemon {
    /// Its directory (root, socket, config, log).
    pub dir: PathBuf,
    /// The socket containerd connects to.
    pub socket: PathBuf,
    proc: Option<Proc>,
    launcher: Option<Launcher>,
}

fn binary() -> Result<PathBuf> {
    crate::procs::built_binary("DRAGONFLY_SNAPSHOTTER_BIN", "dragonfly-snapshotter")
}

impl Daemon {
    /// Starts the daemon in `dir` and waits until its socket accepts connections. Its config
    /// sets `address` and (unless `extra_yaml` sets them) `root: <dir>/root`, `log` (debug), `metrics: {address:
    /// null}`, `snapshot: {lazy: true}` and `containerd: {address: ...}` (the containerd a
    /// test bed starts beside it, `<dir>/../containerd/containerd.sock`, never the host's);
    /// `extra_yaml` is appended (e.g. `prefetch: {background: false}`).
    pub fn start(dir: &Path, extra_yaml: &str) -> Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("dragonfly.sock");
        let metrics = if extra_yaml.contains("metrics:") {
            ""
        } else {
            "metrics: {address: null}\n"
        };
        let snapshot = if extra_yaml.contains("snapshot:") {
            ""
        } else {
            "snapshot: {lazy: true}\n"
        };
        let containerd = if extra_yaml.contains("containerd:") {
            String::new()
        } else {
            let beside = dir
                .parent()
                .unwrap_or(dir)
                .join("containerd/containerd.sock");
            format!("containerd: {{address: '{}'}}\n", beside.display())
        };
        let root = if extra_yaml.lines().any(|l| l.starts_with("root:")) {
            String::new()
        } else {
            format!("root: {}\n", dir.join("root").display())
        };
        let log = if extra_yaml.lines().any(|l| l.starts_with("log:")) {
            ""
        } else {
            "log: {level: 'dragonfly_snapshotter=debug,dragonfly_storage=debug,info'}\n"
        };
        let config = format!(
            "{root}address: {sock}\n{metrics}{snapshot}{containerd}{log}{extra_yaml}\n",
            sock = socket.display()
        );
        std::fs::write(dir.join("config.yaml"), config)?;
        let mut d = Daemon {
            dir: dir.to_owned(),
            socket,
            proc: None,
            launcher: None,
        };
        d.spawn()?;
        Ok(d)
    }

    /// Starts later daemons of this one with `launcher`.
    pub fn set_launcher(&mut self, launcher: Launcher) {
        self.launcher = Some(launcher);
    }

    /// Starts the process without waiting for it to serve.
    pub fn spawn_no_wait(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        let args = [
            OsString::from("--config"),
            self.dir.join("config.yaml").into(),
        ];
        let cmd = match &self.launcher {
            Some(l) => l(&binary()?, &args),
            None => {
                let mut c = Command::new(binary()?);
                c.args(&args);
                c
            }
        };
        self.proc = Some(Proc::spawn(
            "dragonfly-snapshotter",
            cmd,
            &self.dir.join("daemon.log"),
        )?);
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        self.spawn_no_wait()?;
        self.wait_ready()
    }

    /// Waits until the started process serves its socket.
    pub fn wait_ready(&mut self) -> Result<()> {
        let mut proc = self.proc.take().context("the daemon is not running")?;
        let sock = self.socket.clone();
        let ready = wait_until("dragonfly-snapshotter", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        if let Err(e) = ready {
            proc.check_running()?;
            return Err(e).context(proc.log_tail(30));
        }
        self.proc = Some(proc);
        Ok(())
    }

    /// SIGKILL: no clean-up, mounts are left behind, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts the daemon again on the same root (after a SIGKILL, or after SIGTERM and
    /// exit when it still runs).
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
        self.spawn()
    }

    /// SIGTERM, and waits for the exit (up to 10 s, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// The pid of the fd holder the daemon started, if one runs (its pid file sits beside
    /// its socket in `<root>/handoff/`).
    pub fn holder_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.join("root/handoff/holder.pid")).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        crate::procs::pid_alive(pid).then_some(pid)
    }

    /// The daemon's pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// The last `lines` lines of the daemon's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The daemon's whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
        // A stopped daemon leaves its lazy mounts to its successor: tear them down, and the
        // holder that kept them open.
        unmount_under(&self.dir);
        if let Some(pid) = self.holder_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = wait_until("fd holder exit", Duration::from_secs(5), || {
                !crate::procs::pid_alive(pid)
            });
        }
    }
}
