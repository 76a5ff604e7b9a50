//! The daemon's local API on its unix socket (`dragonfly.dfdaemon.v1`), what `dfctl` talks to:
//! [`download`] (files by URL through the swarm) and [`images`] (an image's index, manifest
//! and config through the swarm, for `dfctl image pull`). [`caller`] identifies who calls;
//! [`part_file`] writes a download's file as them.

pub mod caller;
pub mod download;
pub mod images;
pub mod part_file;
