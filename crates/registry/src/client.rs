//! The public client: a cheap-to-clone handle over the shared request engine.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::auth::AuthState;
use crate::blob::BlobStream;
use crate::config::RegistryConfig;
use crate::credentials::CredentialStore;
use crate::error::Error;
use crate::manifest::Manifest;
use crate::reference::{Reference, Repository};
use crate::transport::Inner;

/// An OCI distribution client. Clones share connections, tokens and configuration.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl RegistryClient {
    /// Builds a client; fails on an unusable configuration.
    pub fn new(config: RegistryConfig) -> Result<Self, Error> {
        Self::build(config, None)
    }

    /// Like [`RegistryClient::new`], sending requests only where `destinations` allows:
    /// names resolved with its resolver, every URL (redirects and token realms included)
    /// checked before it is requested.
    pub fn with_destinations(
        config: RegistryConfig,
        destinations: Arc<dyn crate::DestinationCheck>,
    ) -> Result<Self, Error> {
        Self::build(config, Some(destinations))
    }

    fn build(
        config: RegistryConfig,
        destinations: Option<Arc<dyn crate::DestinationCheck>>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let mut builder = reqwest::Client::builder();
        if let Some(d) = &destinations {
            builder = builder.dns_resolver(d.resolver()).no_proxy();
        }
        let http = builder
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout())
            .read_timeout(config.request_timeout())
            .user_agent(concat!("dragonfly-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::Config(format!(
                    "cannot build the HTTP client ({e}); check the TLS setup (OpenSSL, system \
                     certificates)"
                ))
            })?;
        let creds = CredentialStore::new(&config.credentials, config.docker_config.clone());
        let auth = AuthState::new(
            http.clone(),
            config.request_timeout(),
            creds,
            destinations.clone(),
        );
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http,
                auth,
                config,
                destinations,
            }),
        })
    }

    /// Fetches the manifest `r` names (by digest, else tag, else `latest`), offering the
    /// `accept` media types (empty: [`crate::media_types::DEFAULT_ACCEPT`]). The digest is
    /// verified when `r` has one, and the server's `Docker-Content-Digest` when it sends one.
    pub async fn get_manifest(&self, r: &Reference, accept: &[&str]) -> Result<Manifest, Error> {
        self.inner.get_manifest(r, accept).await
    }

    /// Size of a blob: `HEAD`, or `GET Range: bytes=0-0` when `HEAD` is refused.
    pub async fn blob_size(&self, repo: &Repository, digest: &str) -> Result<u64, Error> {
        self.inner.blob_size(repo, digest).await
    }

    /// Bytes `range` (end exclusive) of a blob. The answer must be a `206` whose
    /// `Content-Range` covers the range and whose body has exactly that length; a `200`
    /// with the whole blob is accepted only up to [`crate::MAX_WHOLE_BODY_FOR_RANGE`] bytes
    /// and after verifying the blob's digest. An empty range returns empty bytes without a
    /// request. When the range covers the whole blob, its digest is verified too.
    pub async fn get_blob_range(
        &self,
        repo: &Repository,
        digest: &str,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        self.inner.get_blob_range(repo, digest, range).await
    }

    /// Bytes `range` of a blob as they arrive (the same checks as
    /// [`RegistryClient::get_blob_range`]; an answer holding the whole blob is verified
    /// before any byte is handed on).
    pub async fn get_blob_range_stream(
        &self,
        repo: &Repository,
        digest: &str,
        range: Range<u64>,
    ) -> Result<crate::RangeBody, Error> {
        self.inner.get_blob_range_stream(repo, digest, range).await
    }

    /// The whole blob as a stream that checks its length and digest (a mismatch is the
    /// stream's last item, an `Err`).
    pub async fn get_blob(&self, repo: &Repository, digest: &str) -> Result<BlobStream, Error> {
        self.inner.get_blob(repo, digest).await
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
