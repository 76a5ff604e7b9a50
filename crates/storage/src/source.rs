//! Where missing bytes come from: anything that can serve a byte range of a blob.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, TryFutureExt};
use futures::stream::{self, BoxStream, StreamExt};

use crate::gate::Priority;

/// A failure of a [`RangeSource`]: what failed (for the user), whether trying again may help,
/// and the typed error behind it when the source had one (an origin's, for callers that look).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// What failed, for the user.
    pub message: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// The source's own error, if it had a typed one.
    pub cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl SourceError {
    /// A failure described by `message`.
    pub fn new(message: String, retryable: bool) -> SourceError {
        SourceError {
            message,
            retryable,
            cause: None,
        }
    }

    /// A failure caused by `error` (its message is the error's).
    pub fn caused_by(
        error: impl std::error::Error + Send + Sync + 'static,
        retryable: bool,
    ) -> SourceError {
        SourceError {
            message: error.to_string(),
            retryable,
            cause: Some(Arc::new(error)),
        }
    }
}

/// The bytes of a range as they arrive: consecutive chunks, in order, that add up to the range
/// (the store checks); an `Err` ends it.
pub type RangeStream = BoxStream<'static, Result<Bytes, SourceError>>;

/// A source of byte ranges of one blob (the registry, a parent peer, ...).
pub trait RangeSource: Send + Sync + 'static {
    /// Exactly the bytes of `range` (the store checks the length), for a reader of `priority`
    /// (a source in front of a shared origin may treat a waiting container differently from a
    /// background fill).
    fn fetch(
        &self,
        range: Range<u64>,
        priority: Priority,
    ) -> BoxFuture<'static, Result<Bytes, SourceError>>;

    /// The bytes of `range` as they arrive, so the store can hand out each piece as soon as it
    /// is complete rather than when the whole range is (what a seed relaying the origin to a
    /// waiting reader needs). By default, [`RangeSource::fetch`]'s answer as one chunk.
    fn fetch_stream(
        &self,
        range: Range<u64>,
        priority: Priority,
    ) -> BoxFuture<'static, Result<RangeStream, SourceError>> {
        self.fetch(range, priority)
            .map_ok(|b| stream::once(async move { Ok(b) }).boxed())
            .boxed()
    }

    /// Called once the bytes of `range` (from an earlier `fetch`) are in the store and
    /// readable by others (their sync to disk follows), e.g. to announce the pieces to a
    /// scheduler. Must not block.
    fn stored(&self, _range: Range<u64>) {}

    /// Called once when the blob leaves the store (evicted or removed), e.g. to tell a
    /// scheduler that nobody should be sent here for its pieces any more. Must not block.
    fn released(&self) {}

    /// Takes `origin` as the origin behind this source (an explicit refresh: new credentials,
    /// a freshly signed URL). A source that sits in front of an origin swaps it and returns
    /// true; a source that is itself an origin returns false, and the blob replaces it.
    fn swap_origin(&self, _origin: Arc<dyn RangeSource>) -> bool {
        false
    }

    /// False for a source that does not know its blob's origin yet (see
    /// [`crate::Blob::origin_unknown`]).
    fn origin_known(&self) -> bool {
        true
    }
}
