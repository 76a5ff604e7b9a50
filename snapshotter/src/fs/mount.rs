//! Mounting and unmounting a [`LayerFs`] with fuser.
//!
//! Mounts are read-only, visible to every user (containers run as any uid; the kernel checks
//! permissions with `default_permissions`), honour device nodes and set-id bits like an
//! unpacked layer would, and are served by several FUSE threads with cloned fds.

use std::path::{Path, PathBuf};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use super::LayerFs;

/// A mounted layer; unmounted by [`MountedLayerFs::unmount`] (or lazily detached on drop).
pub struct MountedLayerFs {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

/// Mounts `fs` on `mountpoint`. Blocks on the mount syscall and the FUSE handshake: call it
/// from a blocking thread.
pub fn mount(fs: LayerFs, mountpoint: &Path, threads: usize) -> std::io::Result<MountedLayerFs> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("dragonfly".into()),
        MountOption::Subtype("dragonfly".into()),
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    Ok(MountedLayerFs {
        session: Some(session),
        mountpoint: mountpoint.to_owned(),
    })
}

impl MountedLayerFs {
    /// Detaches the mount; the FUSE threads end once the kernel drops the connection (at once,
    /// or when the last user of a busy mount goes away). Blocking.
    pub fn unmount(mut self) {
        if let Some(session) = self.session.take() {
            if let Err(e) = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
            {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "cannot detach FUSE mount");
            }
            drop(session);
        }
    }
}

impl Drop for MountedLayerFs {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
