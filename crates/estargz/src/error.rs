//! Errors of the format library. Every message names what is wrong with the layer, so an
//! operator can tell a corrupt or hostile blob from a bug.

/// A layer blob could not be parsed, or its data failed verification.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The blob's footer is not an eStargz or zstd:chunked footer.
    #[error("not an eStargz or zstd:chunked layer: {0}")]
    BadFooter(String),
    /// The TOC could not be decompressed or parsed.
    #[error("malformed TOC: {0}")]
    BadToc(String),
    /// The TOC is larger than the configured limit.
    #[error("TOC too large: {what} is over the limit of {limit} (raise the limit only for trusted images)")]
    TocTooLarge {
        /// Which quantity.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The TOC JSON's digest is not the one the manifest promised.
    #[error("TOC digest mismatch: the manifest says {expected}, the blob's TOC is {actual}; the layer was tampered with or corrupted")]
    TocDigestMismatch {
        /// From the manifest annotation.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// A TOC entry is invalid (bad path, duplicate, missing field, ...).
    #[error("bad TOC entry {name:?}: {reason}")]
    BadEntry {
        /// The entry's name as written in the TOC.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A chunk's bytes could not be decompressed.
    #[error("cannot decompress chunk at offset {offset}: {reason}")]
    BadChunk {
        /// Compressed offset of the chunk.
        offset: u64,
        /// What went wrong.
        reason: String,
    },
    /// A chunk's decompressed bytes do not match its digest.
    #[error("chunk at offset {offset} does not match its digest (expected sha256:{expected}, got sha256:{actual}); the blob was tampered with or corrupted")]
    ChunkDigestMismatch {
        /// Compressed offset of the chunk.
        offset: u64,
        /// Expected hex digest.
        expected: String,
        /// Actual hex digest.
        actual: String,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;
