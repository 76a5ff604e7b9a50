//! get_image_distribution, answered at once (no job row, as Dragonfly): the image is resolved
//! like a preheat (destination policy, credentials, platform), then every active scheduler of
//! each target cluster is asked which peers hold each layer (`Scheduler.GetTask`, a few layers
//! at once) and the answers merged. The answer lists the layers, and per peer host the layers it caches; a cluster
//! that could not be asked is named in `errors` rather than failing the whole answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dragonfly_membership::client::Dialer;
use dragonfly_proto::scheduler as pb;
use dragonfly_task::TaskRole;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::args::PreheatKind;
use super::destination::{DestinationPolicy, Refused};
use super::image::{self, ImageBlob, ManifestUrl};
use super::schedulers;
use super::task_args::Distribution;
use super::task_runner::{host_type_name, merge};
use crate::store::clusters::Cluster;
use crate::store::Db;

/// Why the distribution cannot be told.
#[derive(Debug, thiserror::Error)]
pub enum DistributionError {
    /// The URL leads somewhere the policy refuses.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The image cannot be resolved at its registry.
    #[error("cannot resolve the image: {0}")]
    Resolve(#[from] image::ResolveError),
    /// Resolving took too long.
    #[error("resolving the image took longer than {0}s; check the registry or raise args.timeout")]
    Timeout(u64),
    /// No cluster to ask.
    #[error("{0}")]
    NoCluster(String),
}

/// What get_image_distribution works with.
pub struct Lookup<'a> {
    /// Clusters and schedulers.
    pub db: &'a Db,
    /// How schedulers are dialled.
    pub dialer: &'a Dialer,
    /// Where image URLs may point.
    pub destinations: Arc<DestinationPolicy>,
}

/// One layer's holders in one cluster.
type Holders = Vec<pb::TaskPeer>;

impl Lookup<'_> {
    /// The distribution of the image `d` names over `cluster_ids` (all when empty).
    pub async fn run(
        &self,
        d: &Distribution,
        cluster_ids: &[i64],
    ) -> Result<Value, DistributionError> {
        let url = reqwest::Url::parse(&d.url)
            .map_err(|_| Refused::NotHttp(crate::redact::url(&d.url)))?;
        super::preflight::walk(&self.destinations, PreheatKind::Image, &url).await?;
        let m =
            ManifestUrl::parse(&url).ok_or_else(|| Refused::NotHttp(crate::redact::url(&d.url)))?;
        let resolved = tokio::time::timeout(
            Duration::from_secs(d.timeout_secs),
            image::resolve(&m, &d.platform, &d.secrets, self.destinations.clone()),
        )
        .await
        .map_err(|_| DistributionError::Timeout(d.timeout_secs))??;
        let layers: Vec<ImageBlob> = resolved
            .blobs
            .into_iter()
            .filter(|b| b.role == TaskRole::Layer)
            .collect();
        let clusters = schedulers::target_clusters(self.db, cluster_ids)
            .await
            .map_err(DistributionError::NoCluster)?;
        let mut peers: BTreeMap<(i64, String), Value> = BTreeMap::new();
        let mut errors = Vec::new();
        for c in &clusters {
            match self.holders(c, &layers, d).await {
                Ok(held) => add_holders(&mut peers, c.id, &m, &layers, &held),
                Err(e) => errors.push(json!({"scheduler_cluster_id": c.id, "error": e})),
            }
        }
        Ok(json!({
            "image": {"layers": layers.iter().map(|l| json!({
                "url": blob_url(&m, l),
                "digest": l.id().to_string(),
                "size": l.size,
            })).collect::<Vec<_>>()},
            "peers": peers.into_values().collect::<Vec<_>>(),
            "errors": errors,
        }))
    }

    /// Per layer, the peers of `cluster` holding it, merged over its active schedulers (a
    /// task's peers are on the scheduler its ID hashes to); an error if none answered.
    async fn holders(
        &self,
        cluster: &Cluster,
        layers: &[ImageBlob],
        d: &Distribution,
    ) -> Result<Vec<Holders>, String> {
        let members = schedulers::active(self.db, cluster).await?;
        let mut last_error = String::new();
        let mut merged: Option<Vec<pb::GetTaskResponse>> = None;
        for s in &members {
            match self.on_scheduler(s, layers, d).await {
                Ok(answers) => {
                    merged = Some(match merged.take() {
                        None => answers,
                        Some(had) => had
                            .into_iter()
                            .zip(answers)
                            .map(|(a, b)| merge(Some(a), b))
                            .collect(),
                    })
                }
                Err(e) => last_error = e,
            }
        }
        merged
            .map(|m| m.into_iter().map(|r| r.peers).collect())
            .ok_or(last_error)
    }

    /// What scheduler `s` knows of each layer.
    async fn on_scheduler(
        &self,
        s: &crate::store::hosts::Member,
        layers: &[ImageBlob],
        d: &Distribution,
    ) -> Result<Vec<pb::GetTaskResponse>, String> {
        let client =
            schedulers::connect(self.dialer, s, Duration::from_secs(d.timeout_secs)).await?;
        let ids: Vec<String> = layers.iter().map(|l| l.id().to_string()).collect();
        let answers: Vec<Result<pb::GetTaskResponse, tonic::Status>> = stream::iter(ids)
            .map(|task_id| {
                let mut c = client.clone();
                async move {
                    c.get_task(pb::GetTaskRequest { task_id })
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .buffered(d.concurrent_layer_count)
            .collect()
            .await;
        answers
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("scheduler {}: {}", schedulers::address(s), e.message()))
    }
}

/// `scheme://registry/v2/repo/blobs/digest`, the layer's URL as Dragonfly shows it.
fn blob_url(m: &ManifestUrl, l: &ImageBlob) -> String {
    format!(
        "{}://{}/v2/{}/blobs/{}",
        m.scheme,
        m.registry,
        m.repository,
        l.id()
    )
}

/// Adds the holders of each layer in cluster `cluster_id` to `peers` (one entry per host).
fn add_holders(
    peers: &mut BTreeMap<(i64, String), Value>,
    cluster_id: i64,
    m: &ManifestUrl,
    layers: &[ImageBlob],
    held: &[Holders],
) {
    for (layer, holders) in layers.iter().zip(held) {
        for p in holders {
            let entry = peers
                .entry((cluster_id, p.host_id.clone()))
                .or_insert_with(|| {
                    json!({
                        "host_id": p.host_id,
                        "hostname": p.hostname,
                        "ip": p.ip,
                        "host_type": host_type_name(p.host_type),
                        "scheduler_cluster_id": cluster_id,
                        "cached_layers": [],
                    })
                });
            entry["cached_layers"]
                .as_array_mut()
                .expect("built as an array")
                .push(json!({
                    "url": blob_url(m, layer),
                    "digest": layer.id().to_string(),
                    "present_bytes": p.present_bytes,
                    "finished": p.finished,
                }));
        }
    }
}
