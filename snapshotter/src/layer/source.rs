//! The registry as a source of blob byte ranges for the piece store.
//!
//! The P2P engine will add a peer source beside this one; the piece store only sees
//! [`RangeSource`].

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dragonfly_registry::{RegistryClient, Repository};
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
