//! Where missing bytes come from: anything that can serve a byte range of a blob.

use std::ops::Range;

use bytes::Bytes;
use futures::future::BoxFuture;

/// A failure of a [`RangeSource`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// What failed, for the user.
    pub message: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
}

/// A source of byte ranges of one blob (the registry, a parent peer, ...).
pub trait RangeSource: Send + Sync + 'static {
    /// Exactly the bytes of `range` (the store checks the length).
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, SourceError>>;

    /// Called once the bytes of `range` (from an earlier `fetch`) are durable in the store and
    /// readable by others, e.g. to announce the pieces to a scheduler. Must not block.
    fn stored(&self, _range: Range<u64>) {}
}
