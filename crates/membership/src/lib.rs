//! Cluster membership. The manager's certificate authority issues each member a certificate
//! naming its [`Role`] and ID (a URI SAN `dragonfly://<role>/<id>`, see [`Identity`]); members
//! talk over mutual TLS checked against that CA ([`Credentials`]); servers learn who is calling
//! from the handshake ([`server`]), clients check that the server has the role they expect
//! ([`client`]). A member gets its certificate as files (from `dragonfly-manager certs` or
//! cert-manager) or by joining with a token ([`join`]). Without credentials everything runs
//! in the clear, for loopback use only.

mod ca;
pub mod client;
mod credentials;
mod error;
mod files;
mod identity;
pub mod join;
mod pinned;
mod request;
pub mod server;

pub use ca::{Ca, Issued};
pub use credentials::Credentials;
pub use error::MembershipError;
pub use files::{Obtained, TlsFiles};
pub use identity::{Identity, Role};
pub use pinned::{ca_mac, fingerprint, token_key};
pub use request::{CertRequest, NewRequest};
