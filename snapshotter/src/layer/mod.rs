//! Lazy layers: which Prepare labels describe one, where its bytes come from, and the manager
//! that mounts it and drives its prefetch and background fetch.

pub mod labels;
pub mod manager;
pub mod source;
pub mod toc;
pub mod unpack;

pub use manager::{LayerManager, LayerSettings};
