//! The Dragonfly-rs scheduler.
//!
//! It keeps, in memory, the hosts that announced themselves, the tasks (blobs and files) being
//! downloaded, the peers downloading them and the pieces each peer holds, and answers every
//! peer's "who has these pieces?" with ranked parents, or tells it to wait for a seed peer it
//! triggered, or to go to the origin. Nothing here touches disk: after a restart peers announce
//! and report again.

pub mod authz;
pub mod config;
pub mod evaluator;
pub mod metrics;
pub mod pieceset;
pub mod preheat;
pub mod registration;
pub mod scheduling;
pub mod seed;
pub mod server;
pub mod service;
pub mod state;
pub mod task_jobs;
