//! The piece store: every blob (a P2P task) is kept as a sparse data file, cut into fixed-length
//! pieces, with a persisted bitmap of the pieces present.
//!
//! Readers ask a [`Blob`] for byte ranges; missing pieces are fetched from the blob's
//! [`RangeSource`] (the registry today, peers later) with adjacent pieces coalesced into one
//! request, each piece fetched once however many readers want it, and requests granted by
//! [`Priority`] so a container's reads overtake prefetch and background fill. A piece is marked
//! present only after its bytes are durable, so a crash never serves a hole. When a blob is
//! complete its digest is checked against its name; a mismatch throws every piece away.
//!
//! The store is bounded: least-recently-used blobs are evicted, never one that is pinned (a
//! mounted layer pins its blob).

mod bitmap;
mod blob;
mod config;
mod error;
mod files;
mod gate;
mod reader;
mod source;
mod store;

pub use blob::{Blob, PinGuard};
pub use config::StoreConfig;
pub use error::StoreError;
pub use gate::Priority;
pub use reader::BlobReader;
pub use source::{RangeSource, RangeStream, SourceError};
pub use store::{Deletion, PieceStore, StoreStats, StoreUsage};

#[cfg(any(test, feature = "testing"))]
pub mod testing;
