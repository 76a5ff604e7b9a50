//! Lazy layers: which Prepare labels describe one, the manager that mounts it (through the
//! swarm) and drives its prefetch and background fetch, and the unpacker of ordinary layers.

pub mod confined;
pub mod discover;
pub mod error;
pub mod labels;
pub mod manager;
pub mod toc;
pub mod unpack;
#[cfg(test)]
mod unpack_fuzz;
#[cfg(test)]
mod unpack_hostile;

pub use error::LayerError;
pub use manager::{LayerManager, LayerSettings};
