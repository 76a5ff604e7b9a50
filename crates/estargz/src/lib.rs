//! eStargz and zstd:chunked layer formats, as a standalone library.
//!
//! Reading a layer lazily takes four steps, each a function here:
//! 1. [`locate_toc`]: find the TOC from the blob's last [`FOOTER_READ_SIZE`] bytes;
//! 2. [`decode_toc`]: decompress and parse it within [`Limits`], and [`verify_toc_digest`]
//!    against the manifest's `containerd.io/snapshot/stargz/toc.digest`;
//! 3. [`LayerIndex::build`]: validate it into a file tree (overlayfs whiteouts, hardlinks,
//!    chunk maps with compressed ranges, the prefetch landmark);
//! 4. [`decode_chunk`]: turn a chunk's compressed bytes into verified file data.
//!
//! No I/O happens here: callers fetch the byte ranges however they like.

mod chunk;
mod error;
mod footer;
mod index;
mod time;
mod toc;

#[cfg(test)]
mod testutil;

pub use chunk::decode_chunk;
pub use error::{Error, Result};
pub use footer::{locate_toc, LayerFormat, TocLocation, FOOTER_READ_SIZE};
pub use index::{
    Chunk, IndexOptions, IndexStats, LayerIndex, Node, NodeKind, Prefetch, NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
};
pub use toc::{decode_toc, sha256_digest, verify_toc_digest, DecodedToc, Limits, Toc, TocEntry};
