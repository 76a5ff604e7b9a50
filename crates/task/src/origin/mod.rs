//! Origins: where a task's bytes come from when no peer has them. [`Origins::for_url`] is the
//! only place a [`TaskUrl`] becomes a fetcher: a registry blob (range requests), a registry
//! manifest (fetched whole, verified against its digest, served from memory) or an HTTP(S) file
//! (range requests). Each is counted in the same [`OriginMetrics`].

mod error;
mod http;
mod metered;
mod registry;

use std::collections::HashMap;
use std::sync::Arc;

use dragonfly_registry::{Credential, Manifest, Reference, RegistryClient, RegistryConfig};
use dragonfly_storage::RangeSource;

pub use error::OriginError;
pub use http::HttpOrigin;
pub use metered::{Metered, OriginMetrics};
pub use registry::{RegistryBlob, RegistryManifest};

use crate::url::TaskUrl;

/// What a request adds to the origin's own settings: headers from a download request or a
/// preheat (an `Authorization` header becomes the registry credential of an OCI task; every
/// header is sent to an HTTP origin). Never logged.
#[derive(Clone, Default)]
pub struct Access {
    /// Request headers.
    pub headers: HashMap<String, String>,
}

impl Access {
    fn authorization(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&String> = self.headers.keys().collect();
        f.debug_struct("Access").field("headers", &names).finish()
    }
}

/// The origin of one task, ready to be put behind the swarm.
#[derive(Clone)]
pub struct Origin {
    kind: Kind,
    source: Arc<dyn RangeSource>,
}

#[derive(Clone)]
enum Kind {
    Blob(Arc<RegistryBlob>),
    Manifest(Arc<RegistryManifest>),
    Http(Arc<HttpOrigin>),
}

impl Origin {
    /// The task's size as the origin reports it.
    pub async fn size(&self) -> Result<u64, OriginError> {
        match &self.kind {
            Kind::Blob(b) => b.size().await,
            Kind::Manifest(m) => m.bytes().await.map(|b| b.len() as u64),
            Kind::Http(h) => h.size().await,
        }
    }

    /// The origin as a range source (metered).
    pub fn source(&self) -> Arc<dyn RangeSource> {
        self.source.clone()
    }
}

/// Builds origins: the daemon's registry settings (mirrors, credentials, TLS) and metrics.
#[derive(Clone)]
pub struct Origins {
    config: RegistryConfig,
    registry: RegistryClient,
    metrics: OriginMetrics,
}

impl Origins {
    /// Origins with `config`'s registry settings, counted in `metrics`.
    pub fn new(config: RegistryConfig, metrics: OriginMetrics) -> Result<Origins, OriginError> {
        let registry =
            RegistryClient::new(config.clone()).map_err(|source| OriginError::Client { source })?;
        Ok(Origins {
            config,
            registry,
            metrics,
        })
    }

    /// The registry client with the daemon's own settings.
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    /// The origin of `url`, with what `access` adds.
    pub fn for_url(&self, url: &TaskUrl, access: &Access) -> Result<Origin, OriginError> {
        let kind = match url {
            TaskUrl::OciBlob(o) => Kind::Blob(Arc::new(RegistryBlob::new(
                self.client_for(&o.repo.registry, access)?,
                o.clone(),
            ))),
            TaskUrl::OciManifest(o) => Kind::Manifest(Arc::new(RegistryManifest::new(
                self.client_for(&o.repo.registry, access)?,
                o.clone(),
                self.metrics.clone(),
            ))),
            TaskUrl::Http(u) => Kind::Http(Arc::new(HttpOrigin::new(
                u.clone(),
                access.headers.clone(),
            )?)),
        };
        let source: Arc<dyn RangeSource> = match &kind {
            Kind::Blob(b) => Arc::new(Metered::new(b.clone(), "registry", self.metrics.clone())),
            // Served from memory after its one fetch, which is counted where it happens.
            Kind::Manifest(m) => m.clone(),
            Kind::Http(h) => Arc::new(Metered::new(h.clone(), "http", self.metrics.clone())),
        };
        Ok(Origin { kind, source })
    }

    /// The manifest or index `reference` names, from its registry (any manifest media type),
    /// counted like every other origin fetch.
    pub async fn fetch_manifest(&self, reference: &Reference) -> Result<Manifest, OriginError> {
        registry::fetch_manifest(&self.registry, reference, &self.metrics).await
    }

    /// The daemon's client, or one that also carries the credential of `access`'s
    /// `Authorization` header for `registry` (used for that task only).
    fn client_for(&self, registry: &str, access: &Access) -> Result<RegistryClient, OriginError> {
        let Some(header) = access.authorization() else {
            return Ok(self.registry.clone());
        };
        let credential = Credential::from_authorization(header)
            .map_err(|source| OriginError::BadCredential { source })?;
        let mut config = self.config.clone();
        config.credentials.insert(registry.to_owned(), credential);
        RegistryClient::new(config).map_err(|source| OriginError::Client { source })
    }
}
