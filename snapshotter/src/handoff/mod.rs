//! Keeping lazy mounts' FUSE connections alive while the daemon restarts.
//!
//! The kernel keeps a FUSE connection — mount, inodes, open files, queued requests — as long
//! as one open file description of its `/dev/fuse` fd exists. After each lazy mount the
//! daemon writes a [`record::MountRecord`] and hands a copy of the fd to a keeper outside
//! itself: systemd's file descriptor store (`FDSTORE=1` on `$NOTIFY_SOCKET`, back as
//! `LISTEN_FDS` on the next start) or the [`holder`] process. A new daemon takes the held fds
//! back, checks each against its record and the mount table, and adopts it (see
//! the layer manager's `restore`); running containers see a pause.

pub mod holder;
pub mod record;
pub mod teardown;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sd_notify::NotifyState;

use crate::config::HandoffMode;
use holder::{HolderClient, HolderError};
pub use record::{MountRecord, Records, RECORD_FORMAT};

/// Why a connection could not be handed to its keeper.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The record could not be written.
    #[error(transparent)]
    Record(#[from] record::RecordError),
    /// The holder failed.
    #[error(transparent)]
    Holder(#[from] HolderError),
    /// systemd's notification socket failed.
    #[error("cannot hand the FUSE fd to systemd ($NOTIFY_SOCKET): {0}")]
    Systemd(#[source] std::io::Error),
    /// `handoff: systemd` without systemd.
    #[error("fuse.handoff is systemd but $NOTIFY_SOCKET is not set; run under systemd with Type=notify or set fuse.handoff: holder")]
    NoSystemd,
}

enum Keeper {
    Systemd,
    Holder {
        client: HolderClient,
        socket: PathBuf,
        log: PathBuf,
    },
    Off,
}

/// The daemon's side of the handoff.
pub struct Handoff {
    keeper: Keeper,
    records: Records,
    /// Taken once: the fds a previous process left.
    held: Mutex<Option<BTreeMap<String, OwnedFd>>>,
}

impl Handoff {
    /// Picks the keeper for `mode`, with records (and the holder's socket) in `dir`.
    pub fn open(dir: &Path, mode: HandoffMode) -> Result<Handoff, HandoffError> {
        let records = Records::open(dir)?;
        let systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
        let keeper = match mode {
            HandoffMode::Off => Keeper::Off,
            HandoffMode::Systemd if !systemd => return Err(HandoffError::NoSystemd),
            HandoffMode::Systemd => Keeper::Systemd,
            HandoffMode::Auto if systemd => Keeper::Systemd,
            HandoffMode::Auto | HandoffMode::Holder => Keeper::Holder {
                client: HolderClient::new(&dir.join("holder.sock")),
                socket: dir.join("holder.sock"),
                log: dir.join("holder.log"),
            },
        };
        if !matches!(keeper, Keeper::Off) {
            warn_request_timeouts();
        }
        let held = match &keeper {
            Keeper::Systemd => listen_fds(),
            Keeper::Holder { client, .. } if client.alive() => client.get()?,
            _ => BTreeMap::new(),
        };
        Ok(Handoff {
            keeper,
            records,
            held: Mutex::new(Some(held)),
        })
    }

    /// Whether connections are kept across restarts at all.
    pub fn enabled(&self) -> bool {
        !matches!(self.keeper, Keeper::Off)
    }

    /// The records.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// What the keeper still held from a previous process, by name; empty after the first
    /// call.
    pub fn take_held(&self) -> BTreeMap<String, OwnedFd> {
        self.held
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or_default()
    }

    /// Records `record` under `name`, then hands a copy of `fd` to the keeper. Blocking.
    pub fn keep(
        &self,
        name: &str,
        record: &MountRecord,
        fd: BorrowedFd<'_>,
    ) -> Result<(), HandoffError> {
        match &self.keeper {
            Keeper::Off => Ok(()),
            Keeper::Systemd => {
                self.records.write(name, record)?;
                let state = [NotifyState::FdStore, NotifyState::FdName(name)];
                sd_notify::notify_with_fds(&state, &[fd]).map_err(HandoffError::Systemd)
            }
            Keeper::Holder {
                client,
                socket,
                log,
            } => {
                self.records.write(name, record)?;
                if client.put(name, fd).is_ok() {
                    return Ok(());
                }
                // Not running (it exits when idle), or it died: start one and retry.
                holder::ensure_running(socket, log)?.put(name, fd)?;
                Ok(())
            }
        }
    }

    /// Makes the keeper close what it holds under `name` and removes its record. Blocking.
    pub fn release(&self, name: &str) {
        match &self.keeper {
            Keeper::Off => {}
            Keeper::Systemd => {
                let state = [NotifyState::FdStoreRemove, NotifyState::FdName(name)];
                if let Err(e) = sd_notify::notify(&state) {
                    tracing::warn!(name, error = %e, "cannot remove a FUSE fd from systemd's store");
                }
            }
            Keeper::Holder { client, .. } => {
                if let Err(e) = client.remove(name) {
                    if client.alive() {
                        tracing::warn!(name, error = %e, "cannot release a FUSE fd from the holder");
                    }
                }
            }
        }
        self.records.remove(name);
    }

    /// Tells systemd (if it runs us) that start-up is done.
    pub fn ready(&self) {
        if matches!(self.keeper, Keeper::Systemd) {
            let _ = sd_notify::notify(&[NotifyState::Ready]);
        }
    }

    /// Tells systemd (if it runs us) that we are stopping.
    pub fn stopping(&self) {
        if matches!(self.keeper, Keeper::Systemd) {
            let _ = sd_notify::notify(&[NotifyState::Stopping]);
        }
    }
}

/// Kernels with FUSE request timeouts abort a whole connection whose request waits longer
/// than the timeout, restarts included: say so when one is set.
fn warn_request_timeouts() {
    for knob in ["default_request_timeout", "max_request_timeout"] {
        let path = format!("/proc/sys/fs/fuse/{knob}");
        let secs: u64 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if secs > 0 {
            tracing::warn!(knob = %path, secs, "FUSE requests time out: a daemon restart longer than this aborts running containers' lazy layers; raise it or set it to 0");
        }
    }
}

/// The fds systemd passed us (`LISTEN_FDS`, `LISTEN_FDNAMES`), by name.
fn listen_fds() -> BTreeMap<String, OwnedFd> {
    let fds = match sd_notify::listen_fds_with_names() {
        Ok(fds) => fds,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed LISTEN_FDS from systemd");
            return BTreeMap::new();
        }
    };
    fds.map(|(raw, name)| {
        // SAFETY: systemd passed these fds to us (LISTEN_PID is our pid); nobody else owns them.
        (name, unsafe { OwnedFd::from_raw_fd(raw) })
    })
    .collect()
}

/// Whether `fd` is a `/dev/fuse` description whose connection is still alive.
pub fn is_live_fuse(fd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let Ok(st) = nix::sys::stat::fstat(fd.as_fd()) else {
        return false;
    };
    let chr = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
    let fuse = nix::sys::stat::major(st.st_rdev) == 10 && nix::sys::stat::minor(st.st_rdev) == 229;
    let mut p = [PollFd::new(fd.as_fd(), PollFlags::empty())];
    let ok = poll(&mut p, PollTimeout::ZERO).is_ok();
    let err = p[0].revents().is_some_and(|r| {
        r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
    });
    chr && fuse && ok && !err
}
