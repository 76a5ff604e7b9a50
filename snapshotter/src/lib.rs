//! The Dragonfly-rs peer daemon: a containerd proxy snapshotter.
//!
//! Data flows one way: containerd → [`snapshot`] (snapshot semantics, metadata, gRPC) →
//! [`layer`] (a lazy layer: labels → blob → TOC → FUSE mount) → [`fs`] (the FUSE filesystem of
//! one layer, which asks for verified chunks) → the piece store (`dragonfly-storage`) → a
//! source of byte ranges: parents through [`p2p`] (the swarm), else the task's origin
//! (`dragonfly-task`). [`api`] is the local API `dfctl` talks to; [`daemon`] wires it all.

pub mod api;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod handoff;
pub mod layer;
pub mod metrics;
pub mod p2p;
pub mod setup;
pub mod snapshot;
