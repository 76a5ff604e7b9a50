//! Triggered downloads: when the scheduler triggers a task (a seed peer for a first download,
//! or any peer for a preheat job), fetch it into the piece store — a seed peer from the origin,
//! other peers through the swarm — reporting pieces as they land, and keep serving it.
//! Registry credentials that come with the trigger are used for that download only: never
//! logged, never stored.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use dragonfly_proto::scheduler as pb;
use dragonfly_storage::{Blob, Priority};
use dragonfly_task::origin::Access;
use dragonfly_task::{TaskError, TaskId, TaskOpener, TaskSpec, TaskUrl};
use tonic::Status;

use super::{open_status, Swarm};

/// Starts origin downloads for the scheduler.
pub struct TriggeredDownloads {
    swarm: Arc<Swarm>,
    running: Mutex<HashSet<String>>,
    /// Why the last triggered download of a task failed.
    failures: Mutex<HashMap<String, String>>,
}

/// What to open for a trigger: its ID must be its URL's (an OCI object's digest), or a file's.
fn spec_of(task: &pb::Task) -> Result<TaskSpec, Status> {
    let bad = |e: String| Status::invalid_argument(e);
    let id: TaskId = task.id.parse().map_err(|e: TaskError| bad(e.to_string()))?;
    let url: TaskUrl = task
        .url
        .parse()
        .map_err(|e: TaskError| bad(e.to_string()))?;
    match (&url, url.oci_id()) {
        (TaskUrl::Http(_), _) if matches!(id, TaskId::File(_)) => {}
        (TaskUrl::Http(_), _) => {
            return Err(bad(format!("file task {id} must be named task:<hex>")));
        }
        (_, Some(of_url)) if of_url == id => {}
        (_, of_url) => {
            return Err(bad(format!(
                "task {id} does not match its url's digest {}",
                of_url.map(|d| d.to_string()).unwrap_or_default()
            )));
        }
    }
    // The trigger's own credentials or freshly signed URL replace what an earlier open had.
    let refresh = !task.origin_headers.is_empty() || matches!(url, TaskUrl::Http(_));
    Ok(TaskSpec {
        id,
        url,
        size: (task.content_length != 0).then_some(task.content_length),
        piece_length: (task.piece_length != 0).then_some(task.piece_length),
        access: Access {
            headers: task.origin_headers.clone().into_iter().collect(),
        },
        refresh,
    })
}

impl TriggeredDownloads {
    /// A downloader opening tasks through `swarm`.
    pub fn new(swarm: Arc<Swarm>) -> Arc<TriggeredDownloads> {
        Arc::new(TriggeredDownloads {
            swarm,
            running: Mutex::new(HashSet::new()),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Opens `task` in the store with its source: the swarm in front of its origin.
    async fn open(&self, task: &pb::Task) -> Result<Blob, Status> {
        let spec = spec_of(task)?;
        self.swarm.open(spec).await.map_err(|e| open_status(&e))
    }

    /// Starts fetching `task`; false if it is already here or being fetched.
    pub async fn trigger(self: &Arc<Self>, task: pb::Task) -> Result<bool, Status> {
        let digest = task.id.clone();
        if let Some(b) = self.swarm.store().get(&digest) {
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
        match self.swarm.store().get(task_id) {
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
