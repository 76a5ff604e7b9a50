//! Triggered downloads: when the scheduler triggers a task (a seed peer for a first download,
//! or any peer for a preheat job), fetch it into the piece store — a seed peer from the origin,
//! other peers through the swarm — reporting pieces as they land, and keep serving it.
//! Registry credentials that come with the trigger are used for that download only: never
//! logged, never stored.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use dragonfly_proto::scheduler as pb;
use dragonfly_storage::{Blob, Priority};
use dragonfly_task::origin::Access;
use dragonfly_task::{TaskError, TaskId, TaskOpener, TaskSpec, TaskUrl};
use tonic::Status;

use super::{open_status, Swarm};

/// How long a peer's demand waits for a triggered task to be opened here.
const OPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Most triggered downloads running at once (triggers come from the network).
const MAX_RUNNING: usize = 256;
/// Most recent failures remembered.
const MAX_FAILURES: usize = 1024;

/// Starts origin downloads for the scheduler.
pub struct TriggeredDownloads {
    swarm: Arc<Swarm>,
    running: Mutex<HashSet<String>>,
    /// Woken whenever a triggered task has been opened (or failed to open).
    opened: tokio::sync::Notify,
    /// Why the last triggered download of a task failed (the latest tasks only).
    failures: Mutex<LruCache<String, String>>,
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
    // A file's content digest, when its first requester gave one.
    let digest = (matches!(id, TaskId::File(_)) && task.digest.starts_with("sha256:"))
        .then(|| task.digest.clone());
    // The trigger's own credentials or freshly signed URL replace what an earlier open had.
    let refresh = !task.origin_headers.is_empty() || matches!(url, TaskUrl::Http(_));
    Ok(TaskSpec {
        id,
        url,
        size: (task.content_length != 0).then_some(task.content_length),
        piece_length: (task.piece_length != 0).then_some(task.piece_length),
        lazy: false,
        access: Access {
            headers: task.origin_headers.clone().into_iter().collect(),
        },
        refresh,
        digest,
    })
}

impl TriggeredDownloads {
    /// A downloader opening tasks through `swarm`.
    pub fn new(swarm: Arc<Swarm>) -> Arc<TriggeredDownloads> {
        Arc::new(TriggeredDownloads {
            swarm,
            running: Mutex::new(HashSet::new()),
            opened: tokio::sync::Notify::new(),
            failures: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAX_FAILURES).expect("not zero"),
            )),
        })
    }

    /// Opens `task` in the store with its source: the swarm in front of its origin.
    async fn open(&self, task: &pb::Task) -> Result<Blob, Status> {
        let spec = spec_of(task)?;
        self.swarm.open(spec).await.map_err(|e| open_status(&e))
    }

    /// The blob of `task_id` for a peer's demand: in the store, or about to be. The scheduler
    /// names this peer as an on-demand parent right after it sends the trigger, so the demand
    /// may arrive first: wait (at most `OPEN_WAIT`) for a trigger to open the task; `None` if
    /// none does, or its open failed.
    pub async fn blob_for_demand(&self, task_id: &str) -> Option<Blob> {
        let deadline = tokio::time::Instant::now() + OPEN_WAIT;
        loop {
            let notified = self.opened.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(b) = self.swarm.store().get(task_id) {
                return Some(b);
            }
            let running = self.running.lock().expect("running lock").contains(task_id);
            let failed = self
                .failures
                .lock()
                .expect("failures lock")
                .contains(task_id);
            if failed && !running {
                return None;
            }
            tokio::time::timeout_at(deadline, notified).await.ok()?;
        }
    }

    /// Starts fetching `task` (at background priority, pausing for demand, when `background`);
    /// false if it is already here or being fetched.
    pub async fn trigger(
        self: &Arc<Self>,
        task: pb::Task,
        background: bool,
    ) -> Result<bool, Status> {
        let digest = task.id.clone();
        if let Some(b) = self.swarm.store().get(&digest) {
            if b.is_complete() {
                return Ok(false);
            }
        }
        {
            let mut running = self.running.lock().expect("running lock");
            if running.contains(&digest) {
                return Ok(false);
            }
            if running.len() >= MAX_RUNNING {
                return Err(Status::resource_exhausted(format!(
                    "this peer already runs {MAX_RUNNING} triggered downloads; trigger another peer or retry later"
                )));
            }
            running.insert(digest.clone());
        }
        let opened = self.open(&task).await;
        if let Err(e) = &opened {
            self.running.lock().expect("running lock").remove(&digest);
            self.failures
                .lock()
                .expect("failures lock")
                .put(digest.clone(), e.message().to_owned());
        }
        self.opened.notify_waiters();
        let blob = opened?;
        let priority = if background {
            // Triggered by a container blocked on chunks: its demand is about to arrive.
            self.swarm.store().demand_expected();
            Priority::Background
        } else {
            Priority::Prefetch
        };
        let size = blob.size();
        let me = self.clone();
        self.failures.lock().expect("failures lock").pop(&digest);
        tokio::spawn(async move {
            tracing::info!(task = %digest, size, background, "triggered download started");
            match blob.fetch_all(priority).await {
                Ok(()) => {
                    tracing::info!(task = %digest, "triggered download complete and verified")
                }
                Err(e) => {
                    tracing::error!(task = %digest, error = %e, "triggered download failed");
                    me.failures
                        .lock()
                        .expect("failures lock")
                        .put(digest.clone(), e.to_string());
                }
            }
            me.running.lock().expect("running lock").remove(&digest);
        });
        Ok(true)
    }
}

impl TriggeredDownloads {
    /// Whether a triggered download of `task_id` is running here: only then may a peer's
    /// demand make this peer fetch from the task's origin.
    pub fn is_running(&self, task_id: &str) -> bool {
        self.running.lock().expect("running lock").contains(task_id)
    }

    /// Marks `task_id` as triggered here (tests of the peer port, whose blobs have no origin
    /// URL to trigger).
    #[cfg(test)]
    pub(crate) fn mark_running(&self, task_id: &str) {
        self.running
            .lock()
            .expect("running lock")
            .insert(task_id.to_owned());
    }

    /// Forgets how the last triggered download of `task_id` ended (the task was deleted).
    pub fn forget(&self, task_id: &str) {
        self.failures.lock().expect("failures lock").pop(task_id);
    }

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
