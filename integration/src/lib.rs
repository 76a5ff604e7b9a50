//! Test bed for end-to-end tests: real `docker-registry`, real containerd with our daemon as a
//! proxy snapshotter, fixture images built from a busybox-static rootfs, and a root filesystem
//! walker to compare what containers see. Everything a test starts lives in its own temp dir
//! and is torn down on drop, also when the test panics.

pub mod bed;
pub mod containerd;
pub mod daemon;
pub mod fixtures;
pub mod oci;
pub mod procs;
pub mod registry;
pub mod rootfs;
pub mod scheduler;
pub mod swarm;

pub use bed::TestBed;
