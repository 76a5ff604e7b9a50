//! Errors of the snapshot side, with the gRPC status containerd expects for each.
//!
//! containerd's metadata layer branches on these codes (ALREADY_EXISTS after a remote Prepare,
//! NOT_FOUND, FAILED_PRECONDITION for removing a parent), so the mapping is part of the contract.

/// A snapshot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot (or its parent) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A snapshot with this key or name exists already.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The request is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The snapshot is in the wrong state for this call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The snapshot exists but cannot be used now (e.g. a lazy layer cannot be reached).
    #[error("snapshot unavailable: {0}")]
    Unavailable(String),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Store(String),
    /// A filesystem or mount operation failed.
    #[error("{0}")]
    Io(String),
}

impl SnapshotError {
    /// An I/O error with context.
    pub fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> SnapshotError {
        SnapshotError::Io(format!("{what}: {e}"))
    }
}

impl From<SnapshotError> for tonic::Status {
    fn from(e: SnapshotError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            SnapshotError::NotFound(_) => tonic::Status::not_found(msg),
            SnapshotError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            SnapshotError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            SnapshotError::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            SnapshotError::Unavailable(_) => tonic::Status::unavailable(msg),
            SnapshotError::Store(_) | SnapshotError::Io(_) => tonic::Status::internal(msg),
        }
    }
}
