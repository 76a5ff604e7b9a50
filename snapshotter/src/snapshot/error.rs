//! Errors of the snapshot side, with the gRPC status containerd expects for each.
//!
//! containerd's metadata layer branches on these codes (ALREADY_EXISTS after a remote Prepare,
//! NOT_FOUND, FAILED_PRECONDITION for removing a parent), so the mapping is part of the contract.
//! Failures underneath (the metadata database, the filesystem, a lazy layer) keep their typed
//! cause as the error's source.

/// A failure below the snapshotter, kept whole.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Whose fault a layer's failure is, as containerd is told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFault {
    /// The image describes the layer wrongly (labels, TOC, archive): INVALID_ARGUMENT.
    BadInput,
    /// The layer cannot be fetched or used now: UNAVAILABLE.
    Unavailable,
    /// Something of ours failed: INTERNAL.
    Internal,
}

impl LayerFault {
    fn prefix(self) -> &'static str {
        match self {
            LayerFault::BadInput => "invalid argument: ",
            LayerFault::Unavailable => "snapshot unavailable: ",
            LayerFault::Internal => "",
        }
    }
}

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
    /// The metadata store failed.
    #[error("metadata store: {what}{}", colon(.source))]
    Store {
        /// What it was doing or found.
        what: String,
        /// The database's (or decoder's) error.
        #[source]
        source: Option<Cause>,
    },
    /// A filesystem or mount operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A lazy (or downloaded) layer failed.
    #[error("{}{source}", fault.prefix())]
    Layer {
        /// Which code containerd gets.
        fault: LayerFault,
        /// The layer's error.
        #[source]
        source: Cause,
    },
    /// A blocking task (disk work, FUSE mount) died.
    #[error("{what} task failed: {source}")]
    Task {
        /// Which task.
        what: &'static str,
        /// The runtime's error.
        #[source]
        source: tokio::task::JoinError,
    },
}

fn colon(source: &Option<Cause>) -> String {
    source
        .as_ref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default()
}

impl SnapshotError {
    /// An I/O error with context.
    pub fn io(what: impl std::fmt::Display, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            what: what.to_string(),
            source,
        }
    }

    /// The metadata store failed, with `source`.
    pub fn store(what: impl std::fmt::Display, source: impl Into<Cause>) -> SnapshotError {
        SnapshotError::Store {
            what: what.to_string(),
            source: Some(source.into()),
        }
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
            SnapshotError::Layer { fault, .. } => match fault {
                LayerFault::BadInput => tonic::Status::invalid_argument(msg),
                LayerFault::Unavailable => tonic::Status::unavailable(msg),
                LayerFault::Internal => tonic::Status::internal(msg),
            },
            SnapshotError::Store { .. } | SnapshotError::Io { .. } | SnapshotError::Task { .. } => {
                tonic::Status::internal(msg)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept_and_shown() {
        let e = SnapshotError::io("cannot create /x", std::io::Error::other("disk full"));
        assert_eq!(e.to_string(), "cannot create /x: disk full");
        assert!(std::error::Error::source(&e).is_some());
        let e = SnapshotError::Layer {
            fault: LayerFault::Unavailable,
            source: "cannot open layer sha256:a: registry down".into(),
        };
        assert_eq!(
            e.to_string(),
            "snapshot unavailable: cannot open layer sha256:a: registry down"
        );
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
        let e = SnapshotError::Store {
            what: "parent \"p\" of a snapshot is missing".into(),
            source: None,
        };
        assert_eq!(
            e.to_string(),
            "metadata store: parent \"p\" of a snapshot is missing"
        );
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Internal);
    }
}
