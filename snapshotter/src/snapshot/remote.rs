//! The seam between the containerd side and lazy layers.
//!
//! The snapshotter knows nothing about registries, formats or FUSE: when a `Prepare` carries
//! labels that describe a remote layer, it hands the mountpoint to a [`RemoteLayers`]
//! implementation and, if that mounts the layer, commits the snapshot itself.

use std::collections::BTreeMap;
use std::path::Path;

use futures::future::BoxFuture;

use super::error::SnapshotError;

/// Label containerd sets on every unpack Prepare: the chain ID the committed snapshot must get.
pub const LABEL_TARGET_REF: &str = "containerd.io/snapshot.ref";
/// Label a client sets on a Prepare (`dfctl image pull` does) when it wants the layer's own
/// failure back instead of the fallback (an empty snapshot for containerd to unpack into).
pub const LABEL_NO_FALLBACK: &str = "containerd.io/snapshot/dragonfly.no-fallback";
/// Label we put on snapshots that are served by a lazy (FUSE) layer.
pub const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";
/// Value of [`LABEL_REMOTE`].
pub const REMOTE_VALUE: &str = "remote snapshot";
/// Value of [`LABEL_REMOTE`] for a layer we downloaded and unpacked ourselves: an ordinary
/// directory from then on, not a lazy mount.
pub const UNPACKED_VALUE: &str = "unpacked by dragonfly";

/// Serves layers lazily.
pub trait RemoteLayers: Send + Sync + 'static {
    /// Whether these Prepare labels describe a layer this can try to serve lazily. Cheap, no I/O.
    fn wants(&self, labels: &BTreeMap<String, String>) -> bool;

    /// Labels describing the layer that commits as `target` in containerd namespace
    /// `namespace`, for a Prepare whose own labels do not (found elsewhere, e.g. in
    /// containerd's content store); `None` when nothing is known. Bounded in time.
    fn discover<'a>(
        &'a self,
        _namespace: &'a str,
        _target: &'a str,
    ) -> BoxFuture<'a, Option<BTreeMap<String, String>>> {
        Box::pin(async { None })
    }

    /// Mounts the layer described by `labels` on `mountpoint` (an empty directory). `id`
    /// identifies the snapshot for later calls. Returns labels to store with the committed
    /// snapshot (they come back in `labels` when the layer is re-mounted after a restart).
    fn mount<'a>(
        &'a self,
        id: u64,
        mountpoint: &'a Path,
        labels: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, SnapshotError>>;

    /// Called before a container uses the layer: waits (bounded) for the landmark prefetch and
    /// reports a layer that cannot serve reads.
    fn check(&self, id: u64) -> BoxFuture<'_, Result<(), SnapshotError>>;

    /// Unmounts the layer and releases what it holds.
    fn unmount<'a>(
        &'a self,
        id: u64,
        mountpoint: &'a Path,
    ) -> BoxFuture<'a, Result<(), SnapshotError>>;
}
