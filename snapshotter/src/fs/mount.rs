//! Mounting a [`LayerFs`], or adopting the live connection of one a previous process mounted.
//!
//! Mounts are read-only, visible to every user (containers run as any uid; the kernel checks
//! permissions with `default_permissions`), and honour device nodes and set-id bits like an
//! unpacked layer would. We open `/dev/fuse` and call `mount(2)` ourselves, so nothing ever
//! unmounts behind our back (no `fusermount`, no unmount on drop of a session).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::Mode;

use super::session::{handshake, notify_resend, Handler, Negotiated, Session, SessionError};
use super::LayerFs;

/// How long the kernel may take to send INIT after `mount(2)`.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A mounted layer: the connection's description, its reader threads, and what INIT settled.
pub struct MountedLayerFs {
    fd: Arc<OwnedFd>,
    session: Option<Session>,
    mountpoint: PathBuf,
    negotiated: Negotiated,
}

/// Why a layer could not be mounted or adopted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `/dev/fuse` cannot be opened.
    #[error("cannot open /dev/fuse (is the fuse module loaded, and are we root?): {0}")]
    Device(#[source] nix::Error),
    /// `mount(2)` failed.
    #[error("mount(2) of the FUSE layer failed: {0}")]
    Mount(#[source] nix::Error),
    /// The handshake failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Reader threads could not start.
    #[error("cannot start FUSE threads: {0}")]
    Threads(#[source] std::io::Error),
}

/// Mounts `fs` on `mountpoint` and answers INIT. Blocking: call it from a blocking thread.
pub fn mount(fs: LayerFs, mountpoint: &Path, threads: usize) -> Result<MountedLayerFs, MountError> {
    let fd = nix::fcntl::open(
        "/dev/fuse",
        OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(MountError::Device)?;
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        fd.as_raw_fd()
    );
    nix::mount::mount(
        Some("dragonfly"),
        mountpoint,
        Some("fuse.dragonfly"),
        MsFlags::MS_RDONLY,
        Some(data.as_str()),
    )
    .map_err(MountError::Mount)?;
    let negotiated = match handshake(fd.as_fd(), INIT_TIMEOUT) {
        Ok(n) => n,
        Err(e) => {
            let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
            return Err(e.into());
        }
    };
    serve(Arc::new(fd), fs, mountpoint, threads, negotiated, false)
}

/// Serves a live connection a previous process mounted and negotiated: no mount, no INIT.
/// With `resend`, the kernel is asked to queue again the requests the previous process had
/// read but not answered. Blocking.
pub fn adopt(
    fd: OwnedFd,
    fs: LayerFs,
    mountpoint: &Path,
    threads: usize,
    negotiated: Negotiated,
) -> Result<MountedLayerFs, MountError> {
    let resend = negotiated.can_resend();
    serve(Arc::new(fd), fs, mountpoint, threads, negotiated, resend)
}

fn serve(
    fd: Arc<OwnedFd>,
    fs: LayerFs,
    mountpoint: &Path,
    threads: usize,
    negotiated: Negotiated,
    resend: bool,
) -> Result<MountedLayerFs, MountError> {
    let handler: Arc<dyn Handler> = Arc::new(fs);
    let name = mountpoint
        .parent()
        .and_then(|p| p.file_name())
        .map_or_else(|| "layer".into(), |n| n.to_string_lossy().into_owned());
    // Before any thread reads: a request we read ourselves is never resent to us.
    if resend {
        match notify_resend(fd.as_fd()) {
            Ok(()) => {
                tracing::debug!(mountpoint = %mountpoint.display(), "asked the kernel to resend unanswered requests")
            }
            Err(e) => {
                tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "cannot ask the kernel to resend requests")
            }
        }
    }
    let session =
        Session::spawn(fd.clone(), handler, threads, &name).map_err(MountError::Threads)?;
    Ok(MountedLayerFs {
        fd,
        session: Some(session),
        mountpoint: mountpoint.to_owned(),
        negotiated,
    })
}

impl MountedLayerFs {
    /// The connection's description, to be held across a restart.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// What INIT settled.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Detaches the mount; the FUSE threads end once the kernel drops the connection (at once,
    /// or when the last user of a busy mount goes away). Blocking.
    pub fn unmount(mut self) {
        if let Err(e) = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "cannot detach FUSE mount");
        }
        // The threads keep serving a busy detached mount until its connection ends.
        self.session.take();
    }

    /// Stops serving without unmounting, for a successor to adopt: no new request is read,
    /// and those being answered get up to `grace`. Blocking.
    pub fn hand_over(mut self, grace: Duration) {
        if let Some(s) = self.session.take() {
            s.stop(grace);
        }
    }
}
