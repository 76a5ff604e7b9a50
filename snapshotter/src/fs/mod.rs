//! The lazy layer filesystem: one read-only FUSE mount per eStargz/zstd:chunked layer.
//!
//! Knows nothing about registries or peers: it maps file reads to TOC chunks and asks a
//! [`chunks::ChunkReader`] for their verified bytes. It speaks the kernel's FUSE protocol
//! itself ([`wire`], [`session`]) so that a live connection can be handed to a successor
//! process and adopted without a new INIT.

pub mod chunks;
pub mod layerfs;
pub mod mount;
pub mod session;
pub mod wire;

pub use chunks::{ChunkCache, ChunkReader};
pub use layerfs::LayerFs;

#[cfg(test)]
mod tests;
