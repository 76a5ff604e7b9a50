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
}
