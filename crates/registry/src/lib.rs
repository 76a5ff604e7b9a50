//! OCI distribution (registry) client for the peer daemon and the manager.
//!
//! It parses image references, fetches manifests and reads layer blobs lazily with range
//! requests, handling anonymous, Basic and Bearer-token auth (static credentials or docker's
//! `config.json`), mirrors, retries with back-off and storage redirects. It knows nothing
//! about FUSE, containerd or peers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dragonfly_registry::Error> {
//! use dragonfly_registry::{Reference, RegistryClient, RegistryConfig};
//! let client = RegistryClient::new(RegistryConfig::default())?;
//! let image: Reference = "ghcr.io/org/app:v1".parse()?;
//! let manifest = client.get_manifest(&image, &[]).await?;
//! let first_kib = client
//!     .get_blob_range(&image.repo(), "sha256:…", 0..1024)
//!     .await?;
//! # let _ = (manifest, first_kib);
//! # Ok(()) }
//! ```

mod auth;
mod blob;
mod body;
mod challenge;
mod client;
mod config;
mod credentials;
mod destination;
mod digest;
mod document;
mod error;
mod hosts;
mod log;
mod manifest;
mod range_stream;
mod reference;
mod transport;

#[cfg(test)]
mod testutil;

pub use blob::{BlobStream, MAX_WHOLE_BODY_FOR_RANGE};
pub use client::RegistryClient;
pub use config::{BadAuthorization, Credential, Mirror, RegistryConfig};
pub use destination::DestinationCheck;
pub use digest::{Algorithm, Digest};
pub use document::{
    default_platform, Descriptor, ImageConfig, ImageDocument, NoPlatform, Platform, RootFs,
};
pub use error::Error;
pub use manifest::{media_types, Manifest};
pub use range_stream::RangeBody;
pub use reference::{Reference, Repository};
