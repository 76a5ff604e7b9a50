//! Starts the real `dragonfly-snapshotter` binary in a temp dir and connects to it the way
//! containerd does (gRPC over its unix socket). Processes and mounts are cleaned up on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dragonfly_proto::snapshots::snapshots_client::SnapshotsClient;
use tonic::transport::Channel;

/// A running daemon with its own root and socket.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("snapshotter.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// Starts a daemon in a fresh temp dir (under /var/tmp so overlay works on a real fs).
    pub async fn start() -> Daemon {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests mount filesystems and must run as root (sudo scripts/test.sh)"
        );
        let dir = tempfile::Builder::new()
            .prefix("dfly-conformance-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        let config = format!(
            "root: {root}\naddress: {sock}\nmetrics:\n  address: null\nlog:\n  level: dragonfly_snapshotter=debug,info\n",
            root = dir.path().join("root").display(),
            sock = dir.path().join("snapshotter.sock").display()
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let mut d = Daemon { dir, child: None };
        d.spawn().await;
        d
    }

    async fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dragonfly-snapshotter"))
            .arg("--config")
            .arg(self.dir.path().join("config.yaml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dragonfly-snapshotter");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.socket().exists() && containerd_client::connect(self.socket()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("daemon did not start; log:\n{}", self.log_tail());
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Kills the daemon with SIGKILL (no clean shutdown) and starts it again.
    pub async fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        self.spawn().await;
    }

    pub async fn client(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(containerd_client::connect(self.socket()).await.unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        detach_under(self.dir.path());
    }
}

/// Lazily unmounts everything under `dir`, deepest first.
pub fn detach_under(dir: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in mounts {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Performs containerd mounts (bind or overlay) on `target`, as containerd's mount package does.
pub fn mount_all(mounts: &[containerd_client::types::Mount], target: &Path) {
    use nix::mount::{mount, MsFlags};
    for m in mounts {
        let ro = m.options.iter().any(|o| o == "ro");
        match m.r#type.as_str() {
            "bind" => {
                let mut flags = MsFlags::MS_BIND;
                if m.options.iter().any(|o| o == "rbind") {
                    flags |= MsFlags::MS_REC;
                }
                mount(
                    Some(m.source.as_str()),
                    target,
                    None::<&str>,
                    flags,
                    None::<&str>,
                )
                .unwrap_or_else(|e| panic!("bind mount {m:?}: {e}"));
                if ro {
                    mount(
                        None::<&str>,
                        target,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                        None::<&str>,
                    )
                    .unwrap_or_else(|e| panic!("remount ro {m:?}: {e}"));
                }
            }
            "overlay" => {
                let data = m
                    .options
                    .iter()
                    .filter(|o| *o != "ro" && *o != "rw")
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",");
                let flags = if ro {
                    MsFlags::MS_RDONLY
                } else {
                    MsFlags::empty()
                };
                mount(
                    Some("overlay"),
                    target,
                    Some("overlay"),
                    flags,
                    Some(data.as_str()),
                )
                .unwrap_or_else(|e| panic!("overlay mount {m:?}: {e}"));
            }
            other => panic!("unexpected mount type {other:?} in {m:?}"),
        }
    }
}

/// Mounts, runs `f` on the mounted dir, unmounts.
pub fn with_mounted<T>(
    mounts: &[containerd_client::types::Mount],
    scratch: &Path,
    f: impl FnOnce(&Path) -> T,
) -> T {
    let target = scratch.join(format!("mnt-{}", rand_suffix()));
    std::fs::create_dir_all(&target).unwrap();
    mount_all(mounts, &target);
    let out = f(&target);
    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_dir(&target).unwrap();
    out
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
