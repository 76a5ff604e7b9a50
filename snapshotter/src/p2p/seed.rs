//! Triggered downloads: when the scheduler triggers a task (a seed peer for a first download,
//! or any peer for a preheat job), fetch it into the piece store — a seed peer from the origin,
//! other peers through the swarm — reporting pieces as they land, and keep serving it.
//! Registry credentials that come with the trigger are used for that download only: never
//! logged, never stored.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use dragonfly_proto::scheduler as pb;
use dragonfly_registry::{Credential, RegistryClient, RegistryConfig, Repository};
use dragonfly_storage::{Blob, PieceStore, Priority};
use tonic::Status;

use super::http_source::HttpSource;
use super::oci::{self, OciObject};
use super::P2p;
use crate::metrics::Metrics;

/// Starts origin downloads for the scheduler.
pub struct TriggeredDownloads {
    store: PieceStore,
    registry: RegistryConfig,
    p2p: Arc<P2p>,
    metrics: Arc<Metrics>,
    running: Mutex<HashSet<String>>,
    /// Why the last triggered download of a task failed.
    failures: Mutex<std::collections::HashMap<String, String>>,
}

impl TriggeredDownloads {
    /// A downloader into `store` using `registry` settings.
    pub fn new(
        store: PieceStore,
        registry: RegistryConfig,
        p2p: Arc<P2p>,
        metrics: Arc<Metrics>,
    ) -> Arc<TriggeredDownloads> {
        Arc::new(TriggeredDownloads {
            store,
            registry,
            p2p,
            metrics,
            running: Mutex::new(HashSet::new()),
            failures: Mutex::new(Default::default()),
        })
    }

    fn client_for(&self, repo: &Repository, task: &pb::Task) -> Result<RegistryClient, Status> {
        let mut config = self.registry.clone();
        let auth = task
            .origin_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str());
        if let Some(header) = auth {
            let credential = Credential::from_authorization(header)
                .map_err(|e| Status::invalid_argument(format!("the trigger's {e}")))?;
            config.credentials.insert(repo.registry.clone(), credential);
        }
        RegistryClient::new(config).map_err(|e| Status::internal(format!("registry client: {e}")))
    }

    /// Opens `task` in the store with its source: the swarm in front of its origin, an OCI
    /// registry object (`oci://…`, `oci-manifest://…`) or an ordinary HTTP(S) file.
    async fn open(&self, task: &pb::Task) -> Result<Blob, Status> {
        if !(task.url.starts_with("http://") || task.url.starts_with("https://")) {
            let object = OciObject::parse(&task.url).map_err(Status::invalid_argument)?;
            if object.digest != task.id {
                return Err(Status::invalid_argument(format!(
                    "task {} does not match its url's digest {}",
                    task.id, object.digest
                )));
            }
            let client = self.client_for(&object.repo, task)?;
            let size = (task.content_length != 0).then_some(task.content_length);
            return oci::open(
                &self.store,
                Some(&self.p2p),
                &self.metrics,
                &client,
                &object,
                size,
                task.piece_length,
            )
            .await
            .map_err(Status::unavailable);
        }
        if !task.id.starts_with("task:") {
            return Err(Status::invalid_argument(format!(
                "file task {} must be named task:<hex>",
                task.id
            )));
        }
        let headers = task.origin_headers.clone().into_iter().collect();
        let http = HttpSource::new(&task.url, headers).map_err(Status::invalid_argument)?;
        let size = match task.content_length {
            0 => http
                .size()
                .await
                .map_err(|e| Status::unavailable(e.message))?,
            n => n,
        };
        let piece_length =
            super::piece_length_for(&self.store, Some(&self.p2p), &task.id, task.piece_length)
                .await;
        super::open_task(
            &self.store,
            Some(&self.p2p),
            &self.metrics,
            Arc::new(http),
            &task.id,
            task.url.clone(),
            size,
            piece_length,
        )
        .map_err(|e| Status::invalid_argument(format!("cannot store {}: {e}", task.id)))
    }

    /// Starts fetching `task`; false if it is already here or being fetched.
    pub async fn trigger(self: &Arc<Self>, task: pb::Task) -> Result<bool, Status> {
        let digest = task.id.clone();
        if let Some(b) = self.store.get(&digest) {
            if b.is_complete() {
                return Ok(false);
            }
        }
        if !self
            .running
            .lock()
            .expect("running lock")
            .insert(digest.clone())
        {
            return Ok(false);
        }
        let blob = match self.open(&task).await {
            Ok(b) => b,
            Err(e) => {
                self.running.lock().expect("running lock").remove(&digest);
                return Err(e);
            }
        };
        let size = blob.size();
        let me = self.clone();
        self.failures.lock().expect("failures lock").remove(&digest);
        tokio::spawn(async move {
            tracing::info!(task = %digest, size, "triggered download started");
            match blob.fetch_all(Priority::Prefetch).await {
                Ok(()) => {
                    tracing::info!(task = %digest, "triggered download complete and verified")
                }
                Err(e) => {
                    tracing::error!(task = %digest, error = %e, "triggered download failed");
                    me.failures
                        .lock()
                        .expect("failures lock")
                        .insert(digest.clone(), e.to_string());
                }
            }
            me.running.lock().expect("running lock").remove(&digest);
        });
        Ok(true)
    }
}

impl TriggeredDownloads {
    /// What this peer holds of `task_id` and how its triggered download is going.
    pub fn stat(&self, task_id: &str) -> dragonfly_proto::peer::StatTaskResponse {
        let running = self.running.lock().expect("running lock").contains(task_id);
        let error = self
            .failures
            .lock()
            .expect("failures lock")
            .get(task_id)
            .cloned()
            .unwrap_or_default();
        match self.store.get(task_id) {
            Some(b) => dragonfly_proto::peer::StatTaskResponse {
                known: true,
                content_length: b.size(),
                present_bytes: b.fetched_bytes(),
                complete: b.is_verified(),
                running,
                error,
            },
            None => dragonfly_proto::peer::StatTaskResponse {
                running,
                error,
                ..Default::default()
            },
        }
    }
}
