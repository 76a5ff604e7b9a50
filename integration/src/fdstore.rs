//! systemd's part in a daemon restart, played by the test bed (which has no systemd as PID 1):
//! a `$NOTIFY_SOCKET` datagram socket that keeps the fds sent with `FDSTORE=1`/`FDNAME=`
//! (dropping them on `FDSTOREREMOVE=1`, or when they report POLLERR/POLLHUP, as systemd does
//! by default), and a launcher that passes the stored fds to the next process as
//! `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`, starting at fd 3, the way `sd_listen_fds(3)`
//! expects.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::daemon::Launcher;

#[derive(Default)]
struct State {
    fds: BTreeMap<String, OwnedFd>,
    messages: Vec<String>,
}

/// The fake service manager; stops its thread on drop (the fds it holds close then).
pub struct FakeSystemd {
    /// `$NOTIFY_SOCKET`.
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeSystemd {
    /// Listens on `<dir>/notify.sock`.
    pub fn start(dir: &Path) -> Result<FakeSystemd> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket);
        let sock = UnixDatagram::bind(&socket).context("bind the fake NOTIFY_SOCKET")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::Acquire) {
                if let Some((text, fds)) = receive(&sock) {
                    apply(&mut st.lock().unwrap(), &text, fds);
                }
            }
        });
        Ok(FakeSystemd {
            socket,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Names of the fds in the store (after dropping those that report an error).
    pub fn stored(&self) -> Vec<String> {
        let mut st = self.state.lock().unwrap();
        prune(&mut st.fds);
        st.fds.keys().cloned().collect()
    }

    /// Every notification received, in order.
    pub fn messages(&self) -> Vec<String> {
        self.state.lock().unwrap().messages.clone()
    }

    /// A launcher for [`crate::daemon::Daemon::set_launcher`]: `sh` sets `LISTEN_PID` to its
    /// own pid and `exec`s the daemon, so the daemon sees its pid; the stored fds are moved
    /// to 3, 4, … in the child.
    pub fn launcher(&self) -> Launcher {
        let state = self.state.clone();
        let socket = self.socket.clone();
        Arc::new(move |binary: &Path, args: &[OsString]| {
            let mut st = state.lock().unwrap();
            prune(&mut st.fds);
            let names: Vec<String> = st.fds.keys().cloned().collect();
            // Copies for the child; they close in the parent when the closure is dropped.
            let fds: Vec<OwnedFd> = st.fds.values().map(|f| f.try_clone().unwrap()).collect();
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
                .arg(binary)
                .args(args)
                .env("NOTIFY_SOCKET", &socket)
                .env("LISTEN_FDS", names.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"))
                .env_remove("LISTEN_PID");
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            // SAFETY: only dup/dup2/fcntl between fork and exec (async-signal-safe); `fds` is
            // moved in, so the raw numbers stay valid until the command is dropped.
            unsafe {
                cmd.pre_exec(move || {
                    let _keep = &fds;
                    move_fds_to_3(&raw)
                });
            }
            cmd
        })
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// In the child: first above every target number, then down to 3.., without CLOEXEC.
fn move_fds_to_3(raw: &[RawFd]) -> std::io::Result<()> {
    let high: Vec<RawFd> = raw
        .iter()
        .map(|&fd| unsafe { libc::fcntl(fd, libc::F_DUPFD, 100 + raw.len() as i32) })
        .collect();
    for (i, &h) in high.iter().enumerate() {
        if h < 0 || unsafe { libc::dup2(h, 3 + i as i32) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        unsafe { libc::close(h) };
    }
    Ok(())
}

fn receive(sock: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 16]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: fresh fds the kernel installed for us.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    let n = msg.bytes;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), fds))
}

fn apply(st: &mut State, text: &str, mut fds: Vec<OwnedFd>) {
    st.messages.push(text.to_owned());
    let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let name = vars.get("FDNAME").copied().unwrap_or("stored");
    if vars.get("FDSTORE") == Some(&"1") {
        if let Some(fd) = fds.pop() {
            st.fds.insert(name.to_owned(), fd);
        }
    }
    if vars.get("FDSTOREREMOVE") == Some(&"1") {
        st.fds.remove(name);
    }
}

fn prune(fds: &mut BTreeMap<String, OwnedFd>) {
    fds.retain(|_, fd| {
        let mut p = [PollFd::new(fd.as_fd(), PollFlags::empty())];
        let _ = poll(&mut p, PollTimeout::ZERO);
        p[0].revents().is_none_or(|r| r.is_empty())
    });
}
