//! The registry as a source of byte ranges for the piece store: of a blob (range requests),
//! or of a manifest (fetched whole once, verified against its digest, served from memory —
//! manifests are small). The P2P engine puts parents in front of these; the piece store only
//! sees [`RangeSource`].

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dragonfly_registry::{media_types, Manifest, Reference, RegistryClient, Repository};
use dragonfly_storage::{RangeSource, SourceError};
use futures::future::{BoxFuture, FutureExt};

use crate::metrics::Metrics;

/// Ranged reads of one blob from its registry.
pub struct RegistrySource {
    client: RegistryClient,
    repo: Repository,
    digest: String,
    metrics: Arc<Metrics>,
}

impl RegistrySource {
    /// A source for `digest` in `repo`.
    pub fn new(
        client: RegistryClient,
        repo: Repository,
        digest: String,
        metrics: Arc<Metrics>,
    ) -> RegistrySource {
        RegistrySource {
            client,
            repo,
            digest,
            metrics,
        }
    }
}

impl RangeSource for RegistrySource {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, SourceError>> {
        let client = self.client.clone();
        let repo = self.repo.clone();
        let digest = self.digest.clone();
        let metrics = self.metrics.clone();
        async move {
            let started = Instant::now();
            let res = client.get_blob_range(&repo, &digest, range.clone()).await;
            let result = if res.is_ok() { "ok" } else { "error" };
            metrics.registry_fetches.with_label_values(&[result]).inc();
            metrics
                .registry_fetch_seconds
                .with_label_values(&[result])
                .observe(started.elapsed().as_secs_f64());
            match res {
                Ok(bytes) => {
                    metrics.registry_fetch_bytes.inc_by(bytes.len() as u64);
                    Ok(bytes)
                }
                Err(e) => Err(SourceError {
                    retryable: e.is_retryable(),
                    message: format!(
                        "registry {}/{} blob {digest} bytes {}..{}: {e}",
                        repo.registry, repo.repository, range.start, range.end
                    ),
                }),
            }
        }
        .boxed()
    }
}

/// The manifest or index `reference` names, from its registry (any manifest media type),
/// counted in the registry metrics like blob reads.
pub async fn fetch_manifest(
    client: &RegistryClient,
    reference: &Reference,
    metrics: &Metrics,
) -> Result<Manifest, dragonfly_registry::Error> {
    let res = client
        .get_manifest(reference, media_types::DEFAULT_ACCEPT)
        .await;
    let result = if res.is_ok() { "ok" } else { "error" };
    metrics.registry_fetches.with_label_values(&[result]).inc();
    if let Ok(m) = &res {
        metrics.registry_fetch_bytes.inc_by(m.bytes.len() as u64);
    }
    res
}

/// A manifest or index by digest, from its registry.
pub struct ManifestSource {
    inner: Arc<ManifestInner>,
}

struct ManifestInner {
    client: RegistryClient,
    reference: Reference,
    fetched: tokio::sync::OnceCell<Bytes>,
    metrics: Arc<Metrics>,
}

impl ManifestSource {
    /// A source for manifest `digest` in `repo`.
    pub fn new(
        client: RegistryClient,
        repo: Repository,
        digest: String,
        metrics: Arc<Metrics>,
    ) -> ManifestSource {
        ManifestSource {
            inner: Arc::new(ManifestInner {
                client,
                reference: Reference {
                    registry: repo.registry,
                    repository: repo.repository,
                    tag: None,
                    digest: Some(digest),
                },
                fetched: tokio::sync::OnceCell::new(),
                metrics,
            }),
        }
    }

    /// The whole manifest (fetched once; the registry client checks it against the digest).
    pub async fn bytes(&self) -> Result<Bytes, SourceError> {
        self.inner.bytes().await
    }
}

impl ManifestInner {
    async fn bytes(&self) -> Result<Bytes, SourceError> {
        self.fetched
            .get_or_try_init(|| async {
                let m = fetch_manifest(&self.client, &self.reference, &self.metrics)
                    .await
                    .map_err(|e| SourceError {
                        retryable: e.is_retryable(),
                        message: format!("manifest {}: {e}", self.reference),
                    })?;
                Ok(m.bytes)
            })
            .await
            .cloned()
    }
}

impl RangeSource for ManifestSource {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, SourceError>> {
        let inner = self.inner.clone();
        async move {
            let all = inner.bytes().await?;
            if range.end > all.len() as u64 {
                return Err(SourceError {
                    retryable: false,
                    message: format!(
                        "manifest {} is {} bytes, not {}",
                        inner.reference,
                        all.len(),
                        range.end
                    ),
                });
            }
            Ok(all.slice(range.start as usize..range.end as usize))
        }
        .boxed()
    }
}
