//! One FUSE connection: the INIT handshake, the request loop threads and replies.
//!
//! The `/dev/fuse` file description is opened non-blocking and shared with whoever holds it
//! across a restart (the daemon's handoff module): the reader threads poll it together with a stop
//! pipe, so a session can end without closing the connection, and a successor adopts the same
//! description without a new INIT. Requests are read only from that shared description (never
//! from per-process clones), so the requests a dead process had read but not answered stay
//! queued in the kernel and can be resent to its successor (`FUSE_NOTIFY_RESEND`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::wire::{self, InHeader, InitIn, InitOut, Malformed};

/// Bytes of one request buffer: well over the largest request the kernel sends us
/// (`max(8192, 80 + max_write)`; we never take writes).
const BUFFER_LEN: usize = 64 * 1024 + 4096;

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading or writing `/dev/fuse` failed.
    #[error("FUSE device {what}: {source}")]
    Device {
        /// The operation.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel did not send INIT in time.
    #[error("the kernel sent no FUSE INIT within {0:?}; is the mount alive?")]
    NoInit(Duration),
    /// The first request was not INIT.
    #[error("first FUSE request was opcode {0}, not INIT")]
    NotInit(u32),
    /// The kernel speaks a protocol we do not.
    #[error("kernel FUSE protocol {major}.{minor} is not supported (need 7.{min} or newer); upgrade the kernel")]
    Protocol {
        /// Kernel major.
        major: u32,
        /// Kernel minor.
        minor: u32,
        /// Oldest minor we take.
        min: u32,
    },
    /// A request did not parse.
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

/// What the filesystem behind a session implements.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; `reply` must be used (or dropped, which answers `EIO`).
    fn handle(&self, header: &InHeader, body: &[u8], reply: Reply);

    /// Called for each request the kernel resent (a previous process read it, never answered).
    fn resent(&self) {}
}

/// The INIT answer for a kernel's INIT: what every connection of this binary runs with.
/// Pure, so that a successor can check that it would have negotiated the same.
pub fn negotiate(kernel: &InitIn) -> Result<InitOut, SessionError> {
    use wire::init_flag::*;
    if kernel.major != wire::KERNEL_VERSION || kernel.minor < wire::MIN_KERNEL_MINOR {
        return Err(SessionError::Protocol {
            major: kernel.major,
            minor: kernel.minor,
            min: wire::MIN_KERNEL_MINOR,
        });
    }
    let wanted = ASYNC_READ
        | BIG_WRITES
        | PARALLEL_DIROPS
        | CACHE_SYMLINKS
        | MAX_PAGES
        | DO_READDIRPLUS
        | READDIRPLUS_AUTO
        | INIT_EXT;
    Ok(InitOut {
        minor: kernel.minor.min(wire::KERNEL_MINOR),
        // Large read-ahead: chunks are fetched whole anyway.
        max_readahead: kernel.max_readahead.min(1 << 20),
        flags: wanted & kernel.flags,
        max_background: 64,
        congestion_threshold: 48,
        max_write: 4096,
        time_gran: 1,
        max_pages: 256,
    })
}

/// What INIT settled, kept so a successor can adopt the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Negotiated {
    /// What the kernel offered.
    pub kernel: InitIn,
    /// What we answered.
    pub reply: InitOut,
}

impl Negotiated {
    /// Whether the kernel can resend requests a dead server had read.
    pub fn can_resend(&self) -> bool {
        self.kernel.flags & wire::init_flag::HAS_RESEND != 0
    }
}

/// Waits up to `timeout` for the kernel's INIT on `fd` and answers it.
pub fn handshake(fd: BorrowedFd<'_>, timeout: Duration) -> Result<Negotiated, SessionError> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; BUFFER_LEN];
    let n = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SessionError::NoInit(timeout));
        }
        let ms =
            PollTimeout::try_from(left.as_millis().min(1000) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(device("poll", e)),
        }
        match nix::unistd::read(fd, &mut buf) {
            Ok(n) => break n,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(e) => return Err(device("read", e)),
        }
    };
    let (h, body) = InHeader::parse(&buf[..n])?;
    if h.opcode != wire::op::INIT {
        let _ = write_reply(fd, h.unique, -libc::EIO, &[]);
        return Err(SessionError::NotInit(h.opcode));
    }
    let kernel = InitIn::parse(body)?;
    let reply = match negotiate(&kernel) {
        Ok(r) => r,
        Err(e) => {
            let _ = write_reply(fd, h.unique, -libc::EPROTO, &[]);
            return Err(e);
        }
    };
    write_reply(fd, h.unique, 0, &reply.encode()).map_err(|e| device("write INIT reply", e))?;
    Ok(Negotiated { kernel, reply })
}

fn device(what: &'static str, e: Errno) -> SessionError {
    SessionError::Device {
        what,
        source: e.into(),
    }
}

/// Asks the kernel to queue again every request a previous server read but did not answer.
pub fn notify_resend(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let h = wire::out_header(wire::OUT_HEADER_LEN, wire::NOTIFY_RESEND, 0);
    nix::unistd::write(fd, &h)?;
    Ok(())
}

fn write_reply(fd: BorrowedFd<'_>, unique: u64, error: i32, data: &[u8]) -> Result<(), Errno> {
    let h = wire::out_header(wire::OUT_HEADER_LEN + data.len(), error, unique);
    let iov = [std::io::IoSlice::new(&h), std::io::IoSlice::new(data)];
    nix::sys::uio::writev(fd, &iov).map(|_| ())
}

/// The answer to one request. Dropping it unanswered answers `EIO`.
pub struct Reply {
    fd: Arc<OwnedFd>,
    unique: u64,
    inflight: Arc<AtomicUsize>,
    done: bool,
}

impl Reply {
    /// Answers with `data`.
    pub fn data(mut self, data: &[u8]) {
        self.send(0, data);
    }

    /// Answers with an error number (`libc::ENOENT`, …).
    pub fn error(mut self, errno: i32) {
        self.send(-errno, &[]);
    }

    fn send(&mut self, error: i32, data: &[u8]) {
        self.done = true;
        match write_reply(self.fd.as_fd(), self.unique, error, data) {
            // ENOENT: the request was interrupted or the connection is gone meanwhile.
            Ok(()) | Err(Errno::ENOENT) | Err(Errno::ENODEV) => {}
            Err(e) => tracing::warn!(unique = self.unique, error = %e, "cannot write FUSE reply"),
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.done {
            self.send(-libc::EIO, &[]);
        }
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A pipe that wakes the reader threads; both ends live as long as any thread does, so a
/// dropped [`Session`] leaves its threads serving (a detached busy mount still needs them).
struct Wake {
    r: OwnedFd,
    w: OwnedFd,
}

/// A served connection: reader threads over the shared description.
pub struct Session {
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    inflight: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Session {
    /// Serves `fd` with `threads` reader threads handing requests to `handler`.
    pub fn spawn(
        fd: Arc<OwnedFd>,
        handler: Arc<dyn Handler>,
        threads: usize,
        name: &str,
    ) -> std::io::Result<Session> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let wake = Arc::new(Wake { r, w });
        let stop = Arc::new(AtomicBool::new(false));
        let inflight = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let l = Loop {
                fd: fd.clone(),
                wake: wake.clone(),
                stop: stop.clone(),
                inflight: inflight.clone(),
                handler: handler.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("fuse-{name}-{i}"))
                .spawn(move || l.run())?;
            handles.push(h);
        }
        Ok(Session {
            stop,
            wake,
            inflight,
            threads: handles,
        })
    }

    /// Stops reading requests and waits up to `grace` for the ones being answered. The
    /// connection stays alive for whoever else holds the description. Blocking.
    pub fn stop(mut self, grace: Duration) {
        self.stop.store(true, Ordering::Release);
        let _ = nix::unistd::write(&self.wake.w, &[1]);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let deadline = Instant::now() + grace;
        while self.inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Requests being answered right now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

struct Loop {
    fd: Arc<OwnedFd>,
    wake: Arc<Wake>,
    stop: Arc<AtomicBool>,
    inflight: Arc<AtomicUsize>,
    handler: Arc<dyn Handler>,
}

impl Loop {
    fn run(self) {
        let mut buf = vec![0u8; BUFFER_LEN];
        while !self.stop.load(Ordering::Acquire) {
            match self.next(&mut buf) {
                Ok(Some(n)) => self.dispatch(&buf[..n]),
                Ok(None) => {}
                Err(Errno::ENODEV) => break, // unmounted: the connection is gone
                Err(e) => {
                    tracing::error!(error = %e, "FUSE request loop stopped");
                    break;
                }
            }
        }
    }

    /// The next request's length, `None` when woken with nothing to read.
    fn next(&self, buf: &mut [u8]) -> Result<Option<usize>, Errno> {
        let mut fds = [
            PollFd::new(self.fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wake.r.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e),
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.contains(PollFlags::POLLERR) {
            return Err(Errno::ENODEV);
        }
        if !revents.contains(PollFlags::POLLIN) {
            return Ok(None);
        }
        match nix::unistd::read(self.fd.as_fd(), buf) {
            Ok(n) => Ok(Some(n)),
            // Another thread took it, or it was interrupted before we read it.
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn dispatch(&self, request: &[u8]) {
        let (h, body) = match InHeader::parse(request) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, fd = self.fd.as_raw_fd(), "dropping a FUSE request");
                return;
            }
        };
        use wire::op;
        match h.opcode {
            // No answer expected.
            op::FORGET | op::BATCH_FORGET | op::INTERRUPT => return,
            op::INIT => {
                // Only once per connection, and already done.
                tracing::warn!("INIT on a live FUSE connection; refused");
            }
            _ => {}
        }
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let reply = Reply {
            fd: self.fd.clone(),
            unique: h.unique,
            inflight: self.inflight.clone(),
            done: false,
        };
        if h.opcode == op::INIT {
            return reply.error(libc::EPROTO);
        }
        if h.unique & wire::UNIQUE_RESEND != 0 {
            self.handler.resent();
        }
        self.handler.handle(&h, body, reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::init_flag::*;

    fn kernel(minor: u32, flags: u64) -> InitIn {
        InitIn {
            major: 7,
            minor,
            max_readahead: 128 * 1024,
            flags,
        }
    }

    #[test]
    fn negotiation_takes_only_what_both_sides_have() {
        let k = kernel(44, ASYNC_READ | HAS_RESEND | INIT_EXT | MAX_PAGES);
        let out = negotiate(&k).unwrap();
        assert_eq!(out.minor, wire::KERNEL_MINOR);
        assert_eq!(out.flags, ASYNC_READ | INIT_EXT | MAX_PAGES);
        assert_eq!(out.max_readahead, 128 * 1024);
        let n = Negotiated {
            kernel: k,
            reply: out,
        };
        assert!(n.can_resend());
        assert_eq!(negotiate(&kernel(38, 0)).unwrap().minor, 38);
    }

    #[test]
    fn old_or_foreign_kernels_are_refused() {
        assert!(negotiate(&kernel(31, 0)).is_err());
        let mut k = kernel(40, 0);
        k.major = 8;
        assert!(negotiate(&k).is_err());
    }

    #[test]
    fn negotiation_is_a_pure_function() {
        let k = kernel(44, u64::MAX);
        assert_eq!(negotiate(&k).unwrap(), negotiate(&k).unwrap());
    }
}
