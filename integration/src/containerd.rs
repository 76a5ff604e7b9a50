//! A real containerd per test (own root, state and socket) with our daemon registered as the
//! `dragonfly` proxy snapshotter, and the `ctr` / `ctr-remote` clients pointed at it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::procs::{run, unmount_under, wait_until, Proc};

/// The namespace tests use.
pub const NAMESPACE: &str = "itest";

/// A running containerd.
pub struct Containerd {
    /// Its directory (root, state, socket, log).
    pub dir: PathBuf,
    /// The gRPC socket.
    pub socket: PathBuf,
    proc: Option<Proc>,
}

impl Containerd {
    /// Starts containerd in `dir` (use a directory under `/var/tmp`, not tmpfs, so overlayfs
    /// works) with `dragonfly_socket` as the `dragonfly` proxy snapshotter. The socket need not
    /// exist yet: containerd connects to proxy plugins when they are first used.
    pub fn start(dir: &Path, dragonfly_socket: &Path) -> Result<Containerd> {
        Containerd::start_with(dir, dragonfly_socket, None)
    }

    /// Like [`Containerd::start`], with the CRI plugin configured by `cri` (the TOML of its
    /// `[plugins."io.containerd.grpc.v1.cri"]` table and sub-tables; see [`crate::cri`]).
    pub fn start_with(
        dir: &Path,
        dragonfly_socket: &Path,
        cri: Option<&str>,
    ) -> Result<Containerd> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("containerd.sock");
        let no_cri = if cri.is_some() {
            ""
        } else {
            "\n  \"io.containerd.grpc.v1.cri\","
        };
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
# No CRI unless asked (it starts its own CNI/streaming machinery) and no snapshotters that
# cannot work here; overlayfs stays: it is the oracle our snapshotter is compared with.
disabled_plugins = [{no_cri}
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[proxy_plugins]
  [proxy_plugins.dragonfly]
    type = "snapshot"
    address = "{df}"
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            opt = dir.join("opt").display(),
            sock = socket.display(),
            df = dragonfly_socket.display()
        ) + cri.unwrap_or_default();
        std::fs::write(dir.join("config.toml"), config)?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(dir.join("config.toml"));
        let proc = Proc::spawn("containerd", cmd, &dir.join("containerd.log"))?;
        let c = Containerd {
            dir: dir.to_owned(),
            socket,
            proc: Some(proc),
        };
        wait_until("containerd", Duration::from_secs(30), || {
            c.ctr(&["version"]).is_ok()
        })
        .with_context(|| c.proc.as_ref().map(|p| p.log_tail(30)).unwrap_or_default())?;
        Ok(c)
    }

    /// `ctr --address SOCK --namespace itest ARGS...`; stdout, or an error with stderr.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args))
    }

    /// `ctr-remote` with the same flags.
    pub fn ctr_remote(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ctr-remote")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args))
    }

    /// The container ID used for `id`: runc keeps its state per namespace and ID in one
    /// machine-wide directory, so IDs must differ between the containerd instances of
    /// concurrent tests.
    pub fn container_id(&self, id: &str) -> String {
        let tag = self
            .dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        format!("{id}-{tag}")
    }

    /// `ctr-remote image rpull` with our snapshotter: the pull that passes layer labels.
    pub fn rpull(&self, image: &str) -> Result<String> {
        self.ctr_remote(&[
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "dragonfly",
            image,
        ])
    }

    /// `ctr image pull` into `snapshotter` (containerd downloads and unpacks).
    pub fn pull(&self, snapshotter: &str, image: &str) -> Result<String> {
        self.ctr(&[
            "image",
            "pull",
            "--plain-http",
            "--snapshotter",
            snapshotter,
            image,
        ])
    }

    /// The oracle: `image` as containerd's own overlayfs snapshotter unpacks it.
    pub fn overlayfs_listing(&self, image: &str) -> Result<crate::rootfs::Listing> {
        self.pull("overlayfs", image)?;
        self.mount_image("overlayfs", image)?.listing()
    }

    /// Starts a long-running container (`sleep`) and returns its init pid, so tests can look at
    /// its root filesystem through `/proc/PID/root`.
    pub fn run_detached(&self, snapshotter: &str, image: &str, id: &str) -> Result<u32> {
        let id = self.container_id(id);
        let id = id.as_str();
        self.ctr(&[
            "run",
            "-d",
            "--snapshotter",
            snapshotter,
            image,
            id,
            "/bin/sleep",
            "3600",
        ])?;
        let out = self.ctr(&["task", "ls"])?;
        out.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id))
                    .then(|| f.get(1).and_then(|p| p.parse().ok()))
                    .flatten()
            })
            .with_context(|| format!("task {id} not found in:\n{out}"))
    }

    /// Runs a command in a fresh container to completion; returns its output (stdout+stderr)
    /// and whether it succeeded.
    pub fn run_once(
        &self,
        snapshotter: &str,
        image: &str,
        id: &str,
        cmd: &[&str],
    ) -> (bool, String) {
        let id = self.container_id(id);
        let id = id.as_str();
        let mut args = vec!["run", "--rm", "--snapshotter", snapshotter, image, id];
        args.extend_from_slice(cmd);
        match self.ctr(&args) {
            Ok(out) => (true, out),
            Err(e) => (false, format!("{e:#}")),
        }
    }

    /// Kills and removes a container (by the ID the test gave it).
    pub fn remove_container(&self, id: &str) {
        self.remove_exact(&self.container_id(id));
    }

    fn remove_exact(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        for _ in 0..50 {
            if self.ctr(&["task", "rm", "-f", id]).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.ctr(&["container", "rm", id]);
    }

    /// containerd's pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// Containerd's log tail.
    pub fn log_tail(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| p.log_tail(30))
            .unwrap_or_default()
    }

    fn teardown(&mut self) {
        if self.proc.is_none() {
            return;
        }
        if let Ok(out) = self.ctr(&["container", "ls", "-q"]) {
            for id in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
                self.remove_exact(id);
            }
        }
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
        // Shims outlive containerd; ours are the ones started with our socket.
        let sock = self.socket.to_string_lossy().into_owned();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains("containerd-shim") && cmdline.contains(&sock) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        unmount_under(&self.dir);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}
