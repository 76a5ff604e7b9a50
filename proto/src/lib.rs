//! gRPC contracts of Dragonfly-rs.
//!
//! - [`snapshots`]: containerd's `containerd.services.snapshots.v1.Snapshots` service, which the
//!   peer daemon serves to containerd as a proxy snapshotter (server and client are generated; the
//!   client is what our tests use to speak to the daemon exactly as containerd does).

/// containerd's snapshots service (`containerd.services.snapshots.v1`).
pub mod snapshots {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("containerd.services.snapshots.v1");
}

/// containerd's shared types (`containerd.types`), re-exported from containerd-client.
pub use containerd_client::types;
