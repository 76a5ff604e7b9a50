//! The lazy layer filesystem: one read-only FUSE mount per eStargz/zstd:chunked layer.
//!
//! Knows nothing about registries or peers: it maps file reads to TOC chunks and asks a
//! [`chunks::ChunkReader`] for their verified bytes.

pub mod chunks;
pub mod layerfs;
pub mod mount;

pub use chunks::{ChunkCache, ChunkReader};
pub use layerfs::LayerFs;

#[cfg(test)]
mod tests;
