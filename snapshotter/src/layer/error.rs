//! What can go wrong with a layer, and which gRPC code containerd gets for it: a layer the
//! image describes wrongly is the request's fault, one that cannot be fetched now is
//! unavailable, a failure of ours is internal. The snapshot side only sees the code.

use dragonfly_task::OpenError;

use crate::snapshot::{LayerFault, SnapshotError};

use super::unpack::UnpackError;

/// A layer could not be mounted, unpacked or used.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A Prepare label is missing or malformed.
    #[error("{0}")]
    BadLabel(String),
    /// The layer's blob cannot be opened through the swarm.
    #[error("cannot open layer {digest}: {source}")]
    Open {
        /// The layer.
        digest: String,
        /// Why.
        #[source]
        source: Box<OpenError>,
    },
    /// The footer or TOC cannot be read.
    #[error("cannot read the {part} of layer {digest}: {source}")]
    Read {
        /// `footer` or `TOC`.
        part: &'static str,
        /// The layer.
        digest: String,
        /// The piece store's error.
        #[source]
        source: dragonfly_storage::StoreError,
    },
    /// The TOC is malformed or hostile.
    #[error("bad TOC in layer {digest}: {source}")]
    BadToc {
        /// The layer.
        digest: String,
        /// What the format library found.
        #[source]
        source: dragonfly_estargz::Error,
    },
    /// The TOC does not hash to the manifest's `toc.digest`.
    #[error("TOC of layer {digest} failed verification: {source}")]
    TocMismatch {
        /// The layer.
        digest: String,
        /// The mismatch.
        #[source]
        source: dragonfly_estargz::Error,
    },
    /// The whole blob could not be downloaded (or failed its digest).
    #[error("cannot download layer {digest}: {source}")]
    Download {
        /// The layer.
        digest: String,
        /// The piece store's error.
        #[source]
        source: dragonfly_storage::StoreError,
    },
    /// The layer's archive cannot be unpacked.
    #[error("cannot unpack layer {digest}: {source}")]
    Unpack {
        /// The layer.
        digest: String,
        /// The unpacker's error (it names the entry).
        #[source]
        source: UnpackError,
    },
    /// FUSE cannot be mounted.
    #[error("cannot mount FUSE on {mountpoint} (is /dev/fuse available?): {source}")]
    Mount {
        /// Where.
        mountpoint: String,
        /// What failed.
        #[source]
        source: crate::fs::mount::MountError,
    },
    /// The snapshot's lazy layer is not mounted (its re-mount after a restart failed).
    #[error("lazy layer of snapshot id {0} is not mounted (its re-mount after a restart failed; see the daemon log)")]
    NotMounted(u64),
    /// A blocking task died.
    #[error("{what} task failed: {source}")]
    Task {
        /// Which.
        what: &'static str,
        /// The runtime's error.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl LayerError {
    /// Whose fault it is, as containerd sees it.
    pub fn fault(&self) -> LayerFault {
        match self {
            LayerError::BadLabel(_)
            | LayerError::BadToc { .. }
            | LayerError::TocMismatch { .. }
            | LayerError::Unpack { .. } => LayerFault::BadInput,
            LayerError::Open { .. }
            | LayerError::Read { .. }
            | LayerError::Download { .. }
            | LayerError::NotMounted(_) => LayerFault::Unavailable,
            LayerError::Mount { .. } | LayerError::Task { .. } => LayerFault::Internal,
        }
    }
}

impl From<LayerError> for SnapshotError {
    fn from(e: LayerError) -> SnapshotError {
        SnapshotError::Layer {
            fault: e.fault(),
            source: Box::new(e),
        }
    }
}
