//! The task model of Dragonfly-rs, shared by the manager, the scheduler and the daemon, so no
//! crate formats or sniffs these strings by hand:
//!
//! - [`TaskId`]: what a task is called (`sha256:<hex>` for OCI objects, `task:<hex>` for files
//!   by URL), with the file-ID rules in [`file_id`];
//! - [`TaskUrl`]: where a task comes from (`oci://`, `oci-manifest://`, `http(s)://`), and
//!   [`TaskRole`]: what it is to its image;
//! - [`origin`]: every origin adapter (registry blob, registry manifest, HTTP) behind one
//!   factory, each wrapped in the same metrics, with typed errors;
//! - [`TaskSpec`] and [`TaskOpener`]: what opening a task takes, as the layers above the swarm
//!   see it.

mod error;
pub mod file_id;
mod id;
mod open;
pub mod origin;
mod url;

pub use dragonfly_registry::{Algorithm as DigestAlgorithm, Digest};
pub use error::TaskError;
pub use id::TaskId;
pub use open::{OpenError, TaskOpener, TaskSpec};
pub use url::{OciObject, TaskRole, TaskUrl};
