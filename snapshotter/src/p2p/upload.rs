//! The peer service: pieces of any blob in the piece store for other peers, within this host's
//! upload slots (a full host answers RESOURCE_EXHAUSTED so the child tries another parent).
//! A plain request only reads what is already stored. A demand request (`fetch`, sent to a
//! seed peer the scheduler named as an on-demand parent) fetches a missing piece of a task
//! this peer opened or is opening from its origin at once, ahead of the task's fill, together
//! with the rest of the run the reader asked for (`fetch_until`), in one origin request, and
//! answers as soon as that piece is in (the run's next pieces follow as they arrive); the
//! store's single-flight makes every peer asking for the same piece share one origin fetch.
//! A scheduler's `DeleteTask` (a delete_task job) removes a task's pieces unless a running
//! lazy mount, a download or an unpack uses them, and says which.

use dragonfly_membership::server::require;
use dragonfly_membership::Role;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use dragonfly_proto::peer as pb;
use dragonfly_proto::peer::peer_server::Peer;
use dragonfly_storage::{Deletion, PieceStore, Priority};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::ratelimit::RateLimit;
use super::triggered::TriggeredDownloads;
use super::SchedulerPool;
use crate::metrics::Metrics;

/// Longest a demand request waits for its piece from the origin.
const DEMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most bytes one demand request makes this peer fetch from the origin (its run included).
const MAX_DEMAND_RUN_BYTES: u64 = 8 << 20;

/// The service.
pub struct PeerService {
    store: PieceStore,
    slots: Arc<Semaphore>,
    pool: Arc<SchedulerPool>,
    metrics: Arc<Metrics>,
    downloads: Option<Arc<TriggeredDownloads>>,
    rate: Option<RateLimit>,
}

impl PeerService {
    /// Serves pieces of `store` with `slots` concurrent uploads.
    pub fn new(
        store: PieceStore,
        slots: u32,
        pool: Arc<SchedulerPool>,
        metrics: Arc<Metrics>,
        downloads: Option<Arc<TriggeredDownloads>>,
        rate_bytes_per_sec: u64,
    ) -> PeerService {
        PeerService {
            store,
            slots: Arc::new(Semaphore::new(slots.max(1) as usize)),
            pool,
            metrics,
            downloads,
            rate: (rate_bytes_per_sec > 0).then(|| RateLimit::new(rate_bytes_per_sec)),
        }
    }

    /// Counts a connection closed because the peer port was at its cap.
    pub fn connection_refused(&self) {
        self.metrics
            .p2p_uploads
            .with_label_values(&["connection_refused"])
            .inc();
    }
}

/// Why a piece was not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadError {
    /// The task or the piece is not in the store.
    NotFound(String),
    /// The request names a piece past the end.
    BadRequest(String),
    /// All upload slots are taken.
    Busy,
    /// Reading the store failed.
    Internal(String),
}

impl From<UploadError> for Status {
    fn from(e: UploadError) -> Status {
        match e {
            UploadError::NotFound(m) => Status::not_found(m),
            UploadError::BadRequest(m) => Status::invalid_argument(m),
            UploadError::Busy => {
                Status::resource_exhausted("all upload slots are busy; try another parent")
            }
            UploadError::Internal(m) => Status::internal(m),
        }
    }
}

impl PeerService {
    /// The blob a request is for: in the store, or (for a demand) one a trigger is opening.
    async fn blob(&self, task_id: &str, fetch: bool) -> Option<dragonfly_storage::Blob> {
        match (self.store.get(task_id), &self.downloads) {
            (Some(b), _) => Some(b),
            (None, Some(d)) if fetch => d.blob_for_demand(task_id).await,
            (None, _) => None,
        }
    }

    /// A missing piece a reader waits for, fetched from the origin now (ahead of any fill)
    /// together with the rest of its `run`, holding no upload slot meanwhile: the store bounds
    /// origin requests itself. Returns once the piece itself is in, while the run goes on
    /// arriving (the reader's requests for the next pieces wait for theirs).
    async fn fetch_for_demand(
        &self,
        blob: &dragonfly_storage::Blob,
        run: std::ops::Range<u64>,
        piece: std::ops::Range<u64>,
        (task_id, number): (&str, u32),
    ) -> Result<(), UploadError> {
        let outcome = |label: &str| self.metrics.p2p_uploads.with_label_values(&[label]).inc();
        let asked = std::time::Instant::now();
        let fetched = tokio::time::timeout(
            DEMAND_TIMEOUT,
            blob.ensure_within(run, piece, Priority::OnDemand),
        )
        .await;
        self.metrics
            .p2p_demand_seconds
            .with_label_values(&["demand_origin"])
            .observe(asked.elapsed().as_secs_f64());
        match fetched {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                outcome("error");
                Err(UploadError::Internal(format!(
                    "cannot fetch piece {number} of task {task_id} from the origin: {e}"
                )))
            }
            Err(_) => {
                outcome("timeout");
                Err(UploadError::Internal(format!(
                    "piece {number} of task {task_id} did not arrive from the origin within {}s",
                    DEMAND_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// Removes `task_id` from the store for a delete_task job, unless it is in use here: a
    /// running lazy mount reads it, or a download or an unpack holds it.
    pub async fn delete(&self, task_id: &str) -> Result<pb::DeleteTaskResponse, Status> {
        if task_id.parse::<dragonfly_task::TaskId>().is_err() {
            return Err(Status::invalid_argument(format!(
                "{task_id:?} is not a task ID (sha256:<hex> or task:<hex>)"
            )));
        }
        if self
            .downloads
            .as_ref()
            .is_some_and(|d| d.is_running(task_id))
        {
            return Ok(kept("a triggered download of it is running here; delete it again when the download ends"));
        }
        let store = self.store.clone();
        let id = task_id.to_owned();
        let deletion = tokio::task::spawn_blocking(move || store.delete_on_request(&id))
            .await
            .map_err(|e| Status::internal(format!("delete task failed: {e}")))?
            .map_err(|e| Status::internal(format!("cannot delete task {task_id}: {e}")))?;
        let answer = match deletion {
            Deletion::NotHeld => pb::DeleteTaskResponse::default(),
            Deletion::Deleted { freed } => {
                if let Some(d) = &self.downloads {
                    d.forget(task_id);
                }
                tracing::info!(task = %task_id, freed, "task deleted on the scheduler's request");
                pb::DeleteTaskResponse {
                    held: true,
                    deleted: true,
                    freed_bytes: freed,
                    reason: String::new(),
                }
            }
            Deletion::Mounted(n) => kept(&format!(
                "served to {n} running lazy mount(s) here; not deleted under them (remove the containers and images using it, then delete again)"
            )),
            Deletion::InUse => kept(
                "in use here by a download or an unpack; delete it again when that ends",
            ),
        };
        if answer.held && !answer.deleted {
            tracing::warn!(task = %task_id, reason = %answer.reason, "task kept despite a delete request");
        }
        Ok(answer)
    }

    /// Piece `number` of `task_id` from the store, within the upload slots and rate limit;
    /// what both transports (gRPC `GetPiece` and the raw-TCP protocol) serve. A `demand`
    /// (`Some(until)`) fetches it from the origin if it is missing, together with the missing
    /// pieces up to `until` (exclusive; bounded) that the reader needs next.
    pub async fn piece(
        &self,
        task_id: &str,
        number: u32,
        demand: Option<u32>,
    ) -> Result<Bytes, UploadError> {
        let outcome = |label: &str| self.metrics.p2p_uploads.with_label_values(&[label]).inc();
        let Some(blob) = self.blob(task_id, demand.is_some()).await else {
            outcome("not_found");
            return Err(UploadError::NotFound(format!(
                "task {task_id} is not in this peer's store"
            )));
        };
        // A demand reaches the origin only for a task this peer was triggered to fetch; for any
        // other blob in its store it is a plain read (a peer cannot make another pull blobs).
        let demand = demand.filter(|_| {
            self.downloads
                .as_ref()
                .is_some_and(|d| d.is_running(task_id))
        });
        let pl = u64::from(blob.piece_length());
        let start = u64::from(number) * pl;
        if start >= blob.size() {
            return Err(UploadError::BadRequest(format!(
                "piece {number} is past the end of task {task_id}"
            )));
        }
        let range = start..(start + pl).min(blob.size());
        if let Some(until) = demand.filter(|_| !blob.has_range(range.clone())) {
            let run_end = (u64::from(until) * pl)
                .min(start + MAX_DEMAND_RUN_BYTES)
                .min(blob.size())
                .max(range.end);
            self.fetch_for_demand(&blob, start..run_end, range.clone(), (task_id, number))
                .await?;
            outcome("demand");
        }
        let Ok(_permit) = self.slots.clone().try_acquire_owned() else {
            outcome("busy");
            return Err(UploadError::Busy);
        };
        self.pool.active_uploads.fetch_add(1, Ordering::Relaxed);
        let res = blob.read_local(range).await;
        self.pool.active_uploads.fetch_sub(1, Ordering::Relaxed);
        let data = match res {
            Ok(Some(d)) => d,
            Ok(None) => {
                outcome("not_found");
                return Err(UploadError::NotFound(format!(
                    "piece {number} of task {task_id} is not here"
                )));
            }
            Err(e) => {
                outcome("error");
                return Err(UploadError::Internal(format!(
                    "cannot read piece {number} of task {task_id}: {e}"
                )));
            }
        };
        if let Some(rate) = &self.rate {
            rate.take(data.len() as u64).await;
        }
        outcome("ok");
        self.metrics.p2p_upload_bytes.inc_by(data.len() as u64);
        Ok(data)
    }
}

/// The answer for a task held but kept, and why.
fn kept(reason: &str) -> pb::DeleteTaskResponse {
    pb::DeleteTaskResponse {
        held: true,
        deleted: false,
        freed_bytes: 0,
        reason: reason.to_owned(),
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn get_piece(
        &self,
        req: Request<pb::GetPieceRequest>,
    ) -> Result<Response<pb::GetPieceResponse>, Status> {
        require(&req, "GetPiece", &[Role::Peer, Role::Seed])?;
        let r = req.into_inner();
        let data = self
            .piece(&r.task_id, r.number, r.fetch.then_some(r.fetch_until))
            .await?;
        Ok(Response::new(pb::GetPieceResponse {
            number: r.number,
            // The receiver checks the piece against the digest the scheduler recorded; hashing
            // here too would halve what a 2-core uploader can serve.
            digest: String::new(),
            data,
        }))
    }

    async fn trigger_download(
        &self,
        req: Request<pb::TriggerDownloadRequest>,
    ) -> Result<Response<pb::TriggerDownloadResponse>, Status> {
        require(&req, "TriggerDownload", &[Role::Scheduler])?;
        let Some(downloads) = &self.downloads else {
            return Err(Status::unimplemented(
                "this peer does not take triggered downloads",
            ));
        };
        let r = req.into_inner();
        let task = r
            .task
            .ok_or_else(|| Status::invalid_argument("task is required"))?;
        let started = downloads.trigger(task, r.background).await?;
        Ok(Response::new(pb::TriggerDownloadResponse { started }))
    }

    async fn stat_task(
        &self,
        req: Request<pb::StatTaskRequest>,
    ) -> Result<Response<pb::StatTaskResponse>, Status> {
        require(
            &req,
            "StatTask",
            &[Role::Scheduler, Role::Manager, Role::Seed, Role::Peer],
        )?;
        let Some(downloads) = &self.downloads else {
            return Err(Status::unimplemented(
                "this peer does not take triggered downloads",
            ));
        };
        Ok(Response::new(downloads.stat(&req.into_inner().task_id)))
    }

    async fn delete_task(
        &self,
        req: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<pb::DeleteTaskResponse>, Status> {
        require(&req, "DeleteTask", &[Role::Scheduler])?;
        let task_id = req.into_inner().task_id;
        self.delete(&task_id).await.map(Response::new)
    }
}
