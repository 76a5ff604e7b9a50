//! gRPC contracts of Dragonfly-rs.
//!
//! - [`snapshots`]: containerd's `containerd.services.snapshots.v1.Snapshots` service, which the
//!   peer daemon serves to containerd as a proxy snapshotter (server and client are generated; the
//!   client is what our tests use to speak to the daemon exactly as containerd does).
//! - [`scheduler`]: `dragonfly.scheduler.v1.Scheduler`, which peers use to find parents.
//! - [`peer`]: `dragonfly.peer.v1.Peer`, which peers serve to each other (pieces) and to the
//!   scheduler (seed triggers).
//! - [`dfdaemon`]: `dragonfly.dfdaemon.v1.{Download,Image}`, the daemon's local API used by `dfctl`.
//! - [`manager`]: `dragonfly.manager.v1.Manager`: registration and keepalive of schedulers and
//!   seed peers, and the scheduler list peers ask for; `dragonfly.manager.v1.Certificate`:
//!   member certificates for a join token.

/// containerd's snapshots service (`containerd.services.snapshots.v1`).
pub mod snapshots {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("containerd.services.snapshots.v1");
}

/// containerd's shared types (`containerd.types`), re-exported from containerd-client.
pub use containerd_client::types;

/// Our services, in modules mirroring their protobuf packages (generated code refers to other
/// packages by relative path).
pub mod dragonfly {
    /// `dragonfly.scheduler`
    pub mod scheduler {
        /// The scheduler service (`dragonfly.scheduler.v1`).
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("dragonfly.scheduler.v1");

            /// Protocol revision this build speaks (major * 1000 + minor).
            pub const PROTOCOL: u32 = 1000;
        }
    }
    /// `dragonfly.dfdaemon`
    pub mod dfdaemon {
        /// The daemon's local download service (`dragonfly.dfdaemon.v1`).
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("dragonfly.dfdaemon.v1");
        }
    }
    /// `dragonfly.manager`
    pub mod manager {
        /// The manager service (`dragonfly.manager.v1`).
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("dragonfly.manager.v1");
        }
    }
    /// `dragonfly.peer`
    pub mod peer {
        /// The peer service (`dragonfly.peer.v1`).
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("dragonfly.peer.v1");
        }
    }
}

pub use dragonfly::dfdaemon::v1 as dfdaemon;
pub use dragonfly::manager::v1 as manager;
pub use dragonfly::peer::v1 as peer;
pub use dragonfly::scheduler::v1 as scheduler;
