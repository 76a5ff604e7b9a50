//! `dragonfly-snapshotter unmount-all`: the one way to tear every lazy mount down for good
//! (a stopping daemon leaves them for its successor).

use std::path::Path;

use super::holder::HolderClient;
use super::Records;

/// What [`unmount_all`] did.
#[derive(Debug, Default)]
pub struct TornDown {
    /// Mounts detached under the snapshots directory.
    pub detached: usize,
    /// FUSE connections the holder let go.
    pub released: usize,
}

/// Why tearing down failed.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    /// A daemon still answers on its socket.
    #[error("the daemon still answers on {0}; stop it first (its mounts would vanish under it)")]
    DaemonRunning(String),
    /// The mount table could not be read.
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(#[source] std::io::Error),
    /// The records directory is unusable.
    #[error(transparent)]
    Record(#[from] super::record::RecordError),
    /// The holder failed.
    #[error(transparent)]
    Holder(#[from] super::holder::HolderError),
}

/// Detaches every mount under `snapshots`, makes the holder in `handoff_dir` drop every
/// connection and removes every record. Refuses while a daemon answers on `daemon_socket`.
pub fn unmount_all(
    daemon_socket: &Path,
    snapshots: &Path,
    handoff_dir: &Path,
) -> Result<TornDown, TeardownError> {
    if std::os::unix::net::UnixStream::connect(daemon_socket).is_ok() {
        return Err(TeardownError::DaemonRunning(
            daemon_socket.display().to_string(),
        ));
    }
    let mut done = TornDown::default();
    let holder = HolderClient::new(&handoff_dir.join("holder.sock"));
    if holder.alive() {
        for name in holder.get()?.into_keys() {
            holder.remove(&name)?;
            done.released += 1;
        }
    }
    let records = Records::open(handoff_dir)?;
    for name in records.names() {
        records.remove(&name);
    }
    done.detached = crate::snapshot::mountinfo::detach_all_under(snapshots)
        .map_err(TeardownError::MountInfo)?;
    Ok(done)
}
