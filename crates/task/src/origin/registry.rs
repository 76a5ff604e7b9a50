//! The registry as an origin: a blob read with range requests, or a manifest fetched whole
//! once (the registry client checks it against its digest) and served from memory — manifests
//! are small.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dragonfly_registry::{media_types, Manifest, Reference, RegistryClient};
use dragonfly_storage::{Priority, RangeSource, RangeStream, SourceError};
use futures::future::{BoxFuture, FutureExt};
use futures::StreamExt;

use super::error::OriginError;
use super::metered::OriginMetrics;
use crate::url::OciObject;

/// Ranged reads of one blob from its registry.
pub struct RegistryBlob {
    client: RegistryClient,
    object: OciObject,
}

impl RegistryBlob {
    /// `object` read with `client`.
    pub fn new(client: RegistryClient, object: OciObject) -> RegistryBlob {
        RegistryBlob { client, object }
    }

    /// The blob's size (a HEAD request).
    pub async fn size(&self) -> Result<u64, OriginError> {
        let digest = self.object.digest.to_string();
        self.client
            .blob_size(&self.object.repo, &digest)
            .await
            .map_err(|source| OriginError::Registry {
                what: format!("size of {digest}"),
                source,
            })
    }
}

impl RangeSource for RegistryBlob {
    fn fetch(
        &self,
        range: Range<u64>,
        _: Priority,
    ) -> BoxFuture<'static, Result<Bytes, SourceError>> {
        let client = self.client.clone();
        let o = self.object.clone();
        async move {
            let digest = o.digest.to_string();
            client
                .get_blob_range(&o.repo, &digest, range.clone())
                .await
                .map_err(|source| {
                    OriginError::Registry {
                        what: format!(
                            "{}/{} blob {digest} bytes {}..{}",
                            o.repo.registry, o.repo.repository, range.start, range.end
                        ),
                        source,
                    }
                    .into()
                })
        }
        .boxed()
    }

    fn fetch_stream(
        &self,
        range: Range<u64>,
        _: Priority,
    ) -> BoxFuture<'static, Result<RangeStream, SourceError>> {
        let client = self.client.clone();
        let o = self.object.clone();
        async move {
            let digest = o.digest.to_string();
            let what = format!(
                "{}/{} blob {digest} bytes {}..{}",
                o.repo.registry, o.repo.repository, range.start, range.end
            );
            let error = move |source| -> SourceError {
                OriginError::Registry {
                    what: what.clone(),
                    source,
                }
                .into()
            };
            let body = client
                .get_blob_range_stream(&o.repo, &digest, range.clone())
                .await
                .map_err(&error)?;
            Ok(body.map(move |chunk| chunk.map_err(&error)).boxed())
        }
        .boxed()
    }
}

/// The manifest or index `reference` names (any manifest media type), counted in `metrics`.
pub(super) async fn fetch_manifest(
    client: &RegistryClient,
    reference: &Reference,
    metrics: &OriginMetrics,
) -> Result<Manifest, OriginError> {
    let started = Instant::now();
    let res = client
        .get_manifest(reference, media_types::DEFAULT_ACCEPT)
        .await;
    let bytes = res.as_ref().map_or(0, |m| m.bytes.len() as u64);
    metrics.observe("registry", res.is_ok(), bytes, started.elapsed());
    res.map_err(|source| OriginError::Registry {
        what: format!("manifest {reference}"),
        source,
    })
}

/// A manifest or index by digest, from its registry.
pub struct RegistryManifest {
    inner: Arc<ManifestInner>,
}

struct ManifestInner {
    client: RegistryClient,
    reference: Reference,
    fetched: tokio::sync::OnceCell<Bytes>,
    metrics: OriginMetrics,
}

impl RegistryManifest {
    /// Manifest `object` read with `client`.
    pub fn new(
        client: RegistryClient,
        object: OciObject,
        metrics: OriginMetrics,
    ) -> RegistryManifest {
        RegistryManifest {
            inner: Arc::new(ManifestInner {
                client,
                reference: Reference {
                    registry: object.repo.registry,
                    repository: object.repo.repository,
                    tag: None,
                    digest: Some(object.digest.to_string()),
                },
                fetched: tokio::sync::OnceCell::new(),
                metrics,
            }),
        }
    }

    /// The whole manifest (fetched once).
    pub async fn bytes(&self) -> Result<Bytes, OriginError> {
        self.inner.bytes().await
    }
}

impl ManifestInner {
    async fn bytes(&self) -> Result<Bytes, OriginError> {
        self.fetched
            .get_or_try_init(|| async {
                fetch_manifest(&self.client, &self.reference, &self.metrics)
                    .await
                    .map(|m| m.bytes)
            })
            .await
            .cloned()
    }
}

impl RangeSource for RegistryManifest {
    fn fetch(
        &self,
        range: Range<u64>,
        _: Priority,
    ) -> BoxFuture<'static, Result<Bytes, SourceError>> {
        let inner = self.inner.clone();
        async move {
            let all = inner.bytes().await?;
            if range.end > all.len() as u64 {
                return Err(OriginError::ShortManifest {
                    reference: inner.reference.to_string(),
                    len: all.len() as u64,
                    wanted: range.end,
                }
                .into());
            }
            Ok(all.slice(range.start as usize..range.end as usize))
        }
        .boxed()
    }
}
