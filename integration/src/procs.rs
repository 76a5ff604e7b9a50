//! Child processes owned by a test: output to a log file, stopped (SIGTERM, then SIGKILL) on
//! drop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A running child process.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Its whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the log tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "{} exited ({status}); log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
        }
        Ok(())
    }

    /// SIGKILL, no clean-up by the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// How long [`run`] lets a command take (pulls of the large fixture included).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs a command to completion; returns stdout, or an error with stdout and stderr. A command
/// still running after [`RUN_TIMEOUT`] is killed and reported, so a hung client cannot hang
/// the test.
pub fn run(cmd: &mut Command) -> Result<String> {
    run_timeout(cmd, RUN_TIMEOUT)
}

/// [`run`] with its own time limit.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {cmd:?} (is it installed? see scripts/install-deps.sh)"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        None => {
            bail!("{cmd:?} did not finish within {timeout:?}; killed. Output:\n{stdout}{stderr}")
        }
        Some(s) if !s.success() => bail!("{cmd:?} failed ({s}):\n{stdout}{stderr}"),
        Some(_) => Ok(stdout),
    }
}

/// Waits until `ready` returns true, or fails after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} not ready after {timeout:?}")
}

/// Path of one of our binaries: `$ENV` if set (scripts/test.sh sets them), else the debug
/// build under the target directory (`CARGO_TARGET_DIR` or the workspace's `target/`); an
/// error saying how to get it if it is not there.
pub fn built_binary(env: &str, name: &str) -> Result<PathBuf> {
    let path = match std::env::var(env) {
        Ok(p) => PathBuf::from(p),
        Err(_) => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("debug")
            .join(name),
    };
    anyhow::ensure!(
        path.exists(),
        "{} not found: build it first (cargo build --bins) or set {env}",
        path.display()
    );
    Ok(path)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Undoes the octal escapes (`\\040` for a space, ...) of a mountinfo path field.
fn unescape_mount_path(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|c| (b'0'..=b'7').contains(c))
                .then(|| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok())
                .flatten()
        });
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points listed in a mountinfo text (field 5 of each line), unescaped, in order.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .collect()
}

/// Mount points at or under `dir` in this process's mount namespace (for leak checks).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    let inside = format!("{}/", prefix.trim_end_matches('/'));
    mount_points(&info)
        .into_iter()
        .filter(|p| *p == prefix || p.starts_with(&inside))
        .collect()
}

/// Detaches every mount at or under `dir`, deepest first (lazy unmount, so a busy or dead FUSE
/// mount does not block the teardown).
pub fn unmount_under(dir: &Path) {
    let mut points = mounts_under(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for p in points {
        let _ = nix::mount::umount2(Path::new(&p), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// True while a process with this pid exists (a zombie counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A test's temp directory under `/var/tmp` (not tmpfs: overlayfs needs a real filesystem for
/// upper dirs and xattrs). On drop, whatever is still mounted under it is detached, then it is
/// removed.
pub struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    /// Creates `/var/tmp/<prefix>XXXXXX`.
    pub fn new(prefix: &str) -> Result<TestDir> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")
            .context("create a temp dir in /var/tmp")?;
        Ok(TestDir(Some(dir)))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0
            .as_ref()
            .map(|d| d.path())
            .expect("present until drop")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            unmount_under(dir.path());
            let path = dir.path().to_owned();
            if dir.close().is_err() {
                // Something was still mounted and busy: detach again and retry once.
                unmount_under(&path);
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

/// Fails unless the tests run as root (they start containerd and mount filesystems).
pub fn require_root() -> Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests start containerd and mount filesystems: run them as root (sudo scripts/test.sh)"
    );
    Ok(())
}

/// Panics unless nothing is mounted under `dir`, none of `pids` lives and `dir` is gone: what a
/// torn-down test bed must leave.
pub fn assert_torn_down(dir: &Path, pids: &[u32]) {
    assert!(
        mounts_under(dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(dir)
    );
    for pid in pids {
        assert!(!pid_alive(*pid), "process {pid} survived the teardown");
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let info = "36 35 98:0 / /mnt/a\\040b rw - ext4 /dev/x rw\n37 35 0:5 / /var/tmp/d/x\\134y rw - tmpfs t rw\n";
        assert_eq!(mount_points(info), ["/mnt/a b", "/var/tmp/d/x\\y"]);
    }

    #[test]
    fn own_pid_is_alive_and_a_reaped_child_is_not() {
        assert!(pid_alive(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }

    #[test]
    fn run_returns_stdout_reports_failures_and_kills_hung_commands() {
        assert_eq!(run(Command::new("echo").arg("hi")).unwrap(), "hi\n");
        let e = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        assert!(format!("{e:#}").contains("oops"), "{e:#}");
        let t = Instant::now();
        let e =
            run_timeout(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(format!("{e:#}").contains("did not finish"), "{e:#}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_dropped_proc_is_stopped_and_its_log_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("p.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 60"]);
        let p = Proc::spawn("sleeper", cmd, &log).unwrap();
        let pid = p.pid();
        wait_until("output", Duration::from_secs(5), || {
            p.log().contains("started")
        })
        .unwrap();
        assert!(pid_alive(pid));
        assert_eq!(p.log_tail(1), "started");
        drop(p);
        assert!(!pid_alive(pid), "SIGTERM on drop");
    }
}
