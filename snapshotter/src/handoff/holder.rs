//! The fd holder: a tiny process that keeps lazy mounts' `/dev/fuse` fds open while no daemon
//! runs, where no systemd keeps them (a container, a Kubernetes pod, a test bed).
//!
//! It is this binary (`dragonfly-snapshotter fd-holder`), started by the daemon in a session
//! of its own when none answers, so a kill of the daemon or of its process group leaves it
//! alive. It listens on a `SOCK_SEQPACKET` unix socket in the daemon's root, takes requests
//! only from root (or its own uid), and speaks one message per request:
//! `PUT <name>` with one fd attached, `DEL <name>`, `GET` (answered by one `FD <name>` message
//! per held fd, with the fd attached, then `END`). A held fd whose connection ends (the layer
//! was unmounted) is dropped. With nothing held and no request for a while, it exits.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};

/// Longest message.
const MAX_MESSAGE: usize = 512;
/// The holder exits after this long with nothing held and no request.
const IDLE_EXIT: Duration = Duration::from_secs(10);

/// A failure talking to, or running, the holder.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// Socket I/O.
    #[error("fd holder at {socket}: {what}: {source}")]
    Io {
        /// The holder's socket.
        socket: PathBuf,
        /// What was done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The holder answered something else than expected.
    #[error("fd holder at {socket} answered {answer:?} to {request}")]
    Protocol {
        /// The holder's socket.
        socket: PathBuf,
        /// What was asked.
        request: String,
        /// What came back.
        answer: String,
    },
}

fn errno_io(e: nix::Error) -> std::io::Error {
    e.into()
}

fn send(fd: BorrowedFd<'_>, text: &str, attach: Option<BorrowedFd<'_>>) -> nix::Result<()> {
    let iov = [IoSlice::new(text.as_bytes())];
    let raw: Vec<RawFd> = attach.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg: Vec<ControlMessage<'_>> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    socket::sendmsg::<()>(fd.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// One message and the fds attached to it; an empty text means the peer closed.
fn recv(fd: BorrowedFd<'_>) -> nix::Result<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = socket::recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these fds in our table; we own them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    let n = msg.bytes;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), fds))
}

/// The daemon's side: one connection per call.
#[derive(Debug, Clone)]
pub struct HolderClient {
    socket: PathBuf,
}

impl HolderClient {
    /// A client of the holder listening on `socket`.
    pub fn new(socket: &Path) -> HolderClient {
        HolderClient {
            socket: socket.to_owned(),
        }
    }

    fn io(&self, what: &'static str) -> impl Fn(nix::Error) -> HolderError + '_ {
        move |e| HolderError::Io {
            socket: self.socket.clone(),
            what,
            source: errno_io(e),
        }
    }

    fn connect(&self) -> Result<OwnedFd, HolderError> {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(self.io("socket"))?;
        let addr = UnixAddr::new(&self.socket).map_err(self.io("address"))?;
        socket::connect(fd.as_raw_fd(), &addr).map_err(self.io("connect"))?;
        Ok(fd)
    }

    fn expect_ok(&self, conn: &OwnedFd, request: &str) -> Result<(), HolderError> {
        let (answer, _) = recv(conn.as_fd()).map_err(self.io("receive"))?;
        if answer == "OK" {
            Ok(())
        } else {
            Err(HolderError::Protocol {
                socket: self.socket.clone(),
                request: request.to_owned(),
                answer,
            })
        }
    }

    /// Whether a holder answers on the socket.
    pub fn alive(&self) -> bool {
        self.connect().is_ok()
    }

    /// Hands `fd` to the holder under `name` (replacing what it held under that name).
    pub fn put(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), HolderError> {
        let conn = self.connect()?;
        let request = format!("PUT {name}");
        send(conn.as_fd(), &request, Some(fd)).map_err(self.io("send"))?;
        self.expect_ok(&conn, &request)
    }

    /// Makes the holder close what it holds under `name`.
    pub fn remove(&self, name: &str) -> Result<(), HolderError> {
        let conn = self.connect()?;
        let request = format!("DEL {name}");
        send(conn.as_fd(), &request, None).map_err(self.io("send"))?;
        self.expect_ok(&conn, &request)
    }

    /// Duplicates of everything held, by name; the holder keeps its own.
    pub fn get(&self) -> Result<BTreeMap<String, OwnedFd>, HolderError> {
        let conn = self.connect()?;
        send(conn.as_fd(), "GET", None).map_err(self.io("send"))?;
        let mut out = BTreeMap::new();
        loop {
            let (text, mut fds) = recv(conn.as_fd()).map_err(self.io("receive"))?;
            if text == "END" {
                return Ok(out);
            }
            match (text.strip_prefix("FD "), fds.pop()) {
                (Some(name), Some(fd)) => {
                    out.insert(name.to_owned(), fd);
                }
                _ => {
                    return Err(HolderError::Protocol {
                        socket: self.socket.clone(),
                        request: "GET".into(),
                        answer: text,
                    })
                }
            }
        }
    }
}

/// Starts a holder on `socket` in a session of its own, unless one answers there already;
/// waits until it answers. Its log goes to `log`.
pub fn ensure_running(socket: &Path, log: &Path) -> Result<HolderClient, HolderError> {
    let client = HolderClient::new(socket);
    if client.alive() {
        return Ok(client);
    }
    let io = |what, source| HolderError::Io {
        socket: socket.to_owned(),
        what,
        source,
    };
    let exe = std::env::current_exe().map_err(|e| io("find our executable", e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| io("open its log", e))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("fd-holder")
        .arg("--socket")
        .arg(socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid().map(|_| ()).map_err(errno_io)
        });
    }
    let child = cmd.spawn().map_err(|e| io("start", e))?;
    tracing::info!(pid = child.id(), socket = %socket.display(), "started the fd holder");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if client.alive() {
            return Ok(client);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(io(
        "wait for it to listen",
        std::io::Error::from(std::io::ErrorKind::TimedOut),
    ))
}

/// Runs the holder on `socket` until its socket file is gone or, unless `stay`, it has been
/// idle with nothing held for a while. Blocking.
pub fn serve(socket: &Path, stay: bool) -> std::io::Result<()> {
    // Not "dragonfly-snaps…": a `pkill dragonfly-snapshotter` must not take the mounts along.
    let _ = nix::sys::prctl::set_name(c"dfly-fd-holder");
    for s in [nix::sys::signal::SIGINT, nix::sys::signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe {
            let _ = nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigIgn);
        }
    }
    // Never take the socket from a holder that answers: the fds it holds would be lost.
    while HolderClient::new(socket).alive() {
        if !stay {
            tracing::info!(socket = %socket.display(), "another fd holder answers; exiting");
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let listener = listen(socket)?;
    let inode = std::fs::metadata(socket)?.ino();
    // Beside the socket, for operators and test beds that must find us.
    let pid_file = socket.with_extension("pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))?;
    let mut held: BTreeMap<String, OwnedFd> = BTreeMap::new();
    let mut last_activity = Instant::now();
    loop {
        let gone = std::fs::metadata(socket).map_or(true, |m| m.ino() != inode);
        if gone || (!stay && held.is_empty() && last_activity.elapsed() > IDLE_EXIT) {
            tracing::info!(held = held.len(), socket_gone = gone, "fd holder exiting");
            if !gone {
                let _ = std::fs::remove_file(socket);
                let _ = std::fs::remove_file(&pid_file);
            }
            return Ok(());
        }
        let names: Vec<String> = held.keys().cloned().collect();
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        // Events 0: only POLLERR/POLLHUP are reported, i.e. the FUSE connection ended.
        fds.extend(
            held.values()
                .map(|f| PollFd::new(f.as_fd(), PollFlags::empty())),
        );
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ended: Vec<String> = fds[1..]
            .iter()
            .zip(&names)
            .filter(|(p, _)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, n)| n.clone())
            .collect();
        let accept = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        drop(fds);
        for name in ended {
            held.remove(&name);
            tracing::info!(name, "held FUSE connection ended; dropped");
        }
        if accept {
            last_activity = Instant::now();
            if let Err(e) = answer_one(&listener, &mut held) {
                tracing::warn!(error = %e, "fd holder request failed");
            }
        }
    }
}

fn listen(socket: &Path) -> std::io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let _ = std::fs::remove_file(socket);
    let addr = UnixAddr::new(socket)?;
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = socket::bind(fd.as_raw_fd(), &addr);
    nix::sys::stat::umask(old);
    bound?;
    socket::listen(&fd, Backlog::new(16)?)?;
    Ok(fd)
}

/// Accepts one connection and answers its one request. The daemon's requests are local and
/// short; a client that does not send within a second is dropped.
fn answer_one(listener: &OwnedFd, held: &mut BTreeMap<String, OwnedFd>) -> std::io::Result<()> {
    let raw = socket::accept(listener.as_raw_fd())?;
    // SAFETY: accept returned a new fd that we own.
    let conn = unsafe { OwnedFd::from_raw_fd(raw) };
    let cred = socket::getsockopt(&conn, sockopt::PeerCredentials)?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() != 0 && cred.uid() != me {
        tracing::warn!(
            uid = cred.uid(),
            pid = cred.pid(),
            "refused a request from a non-root peer"
        );
        return Ok(());
    }
    let timeout = nix::sys::time::TimeVal::new(1, 0);
    socket::setsockopt(&conn, sockopt::ReceiveTimeout, &timeout)?;
    socket::setsockopt(&conn, sockopt::SendTimeout, &timeout)?;
    let (text, mut fds) = recv(conn.as_fd())?;
    let (verb, name) = text.split_once(' ').unwrap_or((text.as_str(), ""));
    match (verb, fds.pop()) {
        ("PUT", Some(fd)) if super::record::valid_name(name) => {
            held.insert(name.to_owned(), fd);
            tracing::info!(name, held = held.len(), "holding a FUSE connection");
            send(conn.as_fd(), "OK", None)?;
        }
        ("DEL", None) if super::record::valid_name(name) => {
            if held.remove(name).is_some() {
                tracing::info!(name, held = held.len(), "released a FUSE connection");
            }
            send(conn.as_fd(), "OK", None)?;
        }
        ("GET", None) => {
            for (name, fd) in held.iter() {
                send(conn.as_fd(), &format!("FD {name}"), Some(fd.as_fd()))?;
            }
            send(conn.as_fd(), "END", None)?;
        }
        _ => send(conn.as_fd(), &format!("ERR bad request {text:?}"), None)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe_end_alive(fd: &OwnedFd) -> bool {
        let mut p = [PollFd::new(fd.as_fd(), PollFlags::empty())];
        poll(&mut p, PollTimeout::ZERO).unwrap();
        p[0].revents().is_none_or(|r| r.is_empty())
    }

    #[test]
    fn holds_returns_and_releases_fds() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("holder.sock");
        let s = sock.clone();
        let server = std::thread::spawn(move || serve(&s, false));
        let client = HolderClient::new(&sock);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !client.alive() {
            assert!(Instant::now() < deadline, "holder never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        let (r, w) = nix::unistd::pipe().unwrap();
        client.put("fuse-1", r.as_fd()).unwrap();
        drop(r);
        // The holder's copy keeps the pipe open: writing works, and GET hands a copy back.
        nix::unistd::write(&w, b"x").unwrap();
        let got = client.get().unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), vec!["fuse-1"]);
        let mut b = [0u8; 1];
        nix::unistd::read(got["fuse-1"].as_fd(), &mut b).unwrap();
        assert_eq!(&b, b"x");
        drop(got);
        assert!(client.put("../evil", w.as_fd()).is_err());
        client.remove("fuse-1").unwrap();
        assert!(client.get().unwrap().is_empty());
        // Every read end closed now: the write end sees POLLERR.
        assert!(!pipe_end_alive(&w));
        std::fs::remove_file(&sock).unwrap();
        server.join().unwrap().unwrap();
    }
}
