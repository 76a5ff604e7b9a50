//! Errors of the piece store.

use std::path::PathBuf;

/// What went wrong in the piece store. Every message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A configuration value is unusable.
    #[error("invalid piece store configuration: {0}")]
    Config(String),
    /// A blob name is not a `sha256:<64 hex>` digest.
    #[error("invalid blob digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    /// A blob is known with a different size than the caller says.
    #[error("blob {digest} is stored with size {stored} but was asked for with size {asked}; the layer's size label or the registry is wrong")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// The size on disk.
        stored: u64,
        /// The size asked for.
        asked: u64,
    },
    /// A range lies outside the blob.
    #[error("range {start}..{end} is outside blob {digest} of {size} bytes")]
    OutOfRange {
        /// The blob.
        digest: String,
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
        /// Size of the blob.
        size: u64,
    },
    /// The source failed.
    #[error("fetching bytes {start}..{end} of {digest} failed: {message}")]
    Fetch {
        /// The blob.
        digest: String,
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
        /// The source's error.
        message: String,
        /// Whether trying again may succeed.
        retryable: bool,
    },
    /// The complete blob does not hash to its digest; all its pieces were discarded.
    #[error("blob {digest} hashes to {actual}: the source served wrong bytes; its pieces were discarded and will be fetched again")]
    DigestMismatch {
        /// The blob.
        digest: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// A request expects a file to hash to something other than what an earlier one said.
    #[error("blob {blob} is being fetched as content with digest {recorded}, not {requested}; wait for that download, or check the digest")]
    DigestConflict {
        /// The blob.
        blob: String,
        /// What the earlier request said.
        recorded: String,
        /// What this one says.
        requested: String,
    },
    /// The blob was evicted or removed while in use.
    #[error("blob {0} was removed from the piece store while in use; open it again")]
    Removed(String),
    /// Disk I/O failed.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { what, path, source }
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Fetch {
                retryable: true,
                ..
            } | StoreError::DigestMismatch { .. }
        )
    }
}
