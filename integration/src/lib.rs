//! Test bed for end-to-end tests: real `docker-registry`, real containerd with our daemon as a
//! proxy snapshotter, fixture images built from a busybox-static rootfs, and a root filesystem
//! walker to compare what containers see. Everything a test starts lives in its own temp dir
//! and is torn down on drop, also when the test panics.
//!
//! * [`procs`] — child-process guards with log files, command runner with time limit, mount
//!   and pid helpers, the per-test temp dir.
//! * [`registry`] — `docker-registry` per test and its parsed access log (bytes served, marks).
//! * [`containerd`] — containerd per test with our daemon as the `dragonfly` proxy
//!   snapshotter; `ctr` / `ctr-remote`; containers.
//! * [`cri`] — containerd with its CRI plugin, driven like kubelet (pods, containers, exec).
//! * [`daemon`] — our `dragonfly-snapshotter` (start, SIGKILL, restart on the same root).
//! * [`fixtures`] / [`oci`] — the fixture images (umoci and our own tar writer), publishing as
//!   gzip, eStargz (optionally with a landmark) and zstd:chunked; eStargz TOC helpers.
//! * [`mount`] — an image's root filesystem mounted from a view snapshot of any snapshotter.
//! * [`rootfs`] — canonical listings of a tree and their differences (the oracle comparison).
//! * [`bed`] / [`swarm`] / [`scheduler`] — registry + daemon(s) + containerd(s) per test.
//! * [`throttle`] — a rate-limited TCP proxy: a slow origin without touching qdiscs.
//! * [`manager`] / [`postgres`] — our manager binary, and a PostgreSQL server per test;
//!   [`openapi`] — calling it as operators do.

pub mod bed;
pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod fdstore;
pub mod fixtures;
pub mod hostile;
pub mod manager;
pub mod mount;
pub mod oci;
pub mod openapi;
pub mod postgres;
pub mod procs;
pub mod registry;
pub mod rootfs;
pub mod scheduler;
pub mod swarm;
pub mod throttle;

pub use bed::TestBed;
