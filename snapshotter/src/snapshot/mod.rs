//! The containerd side: snapshot semantics, metadata and the snapshots gRPC service.
//!
//! Knows nothing about how a lazy layer's bytes arrive; that is behind [`remote::RemoteLayers`].

pub mod error;
pub mod filters;
pub mod metastore;
pub mod mountinfo;
pub mod remote;
pub mod service;
pub mod snapshotter;

pub use error::{LayerFault, SnapshotError};
pub use snapshotter::{Info, Snapshotter};
