//! The peer service: pieces of any blob in the piece store for other peers, within this host's
//! upload slots (a full host answers RESOURCE_EXHAUSTED so the child tries another parent).
//! It only reads what is already stored and never fetches, so serving cannot slow FUSE reads
//! down beyond disk I/O.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dragonfly_proto::peer as pb;
use dragonfly_proto::peer::peer_server::Peer;
use dragonfly_storage::PieceStore;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::ratelimit::RateLimit;
use super::seed::SeedDownloader;
use super::SchedulerPool;
use crate::metrics::Metrics;

/// The service.
pub struct PeerService {
    store: PieceStore,
    slots: Arc<Semaphore>,
    pool: Arc<SchedulerPool>,
    metrics: Arc<Metrics>,
    seed: Option<Arc<SeedDownloader>>,
    rate: Option<RateLimit>,
}

impl PeerService {
    /// Serves pieces of `store` with `slots` concurrent uploads.
    pub fn new(
        store: PieceStore,
        slots: u32,
        pool: Arc<SchedulerPool>,
        metrics: Arc<Metrics>,
        seed: Option<Arc<SeedDownloader>>,
        rate_bytes_per_sec: u64,
    ) -> PeerService {
        PeerService {
            store,
            slots: Arc::new(Semaphore::new(slots.max(1) as usize)),
            pool,
            metrics,
            seed,
            rate: (rate_bytes_per_sec > 0).then(|| RateLimit::new(rate_bytes_per_sec)),
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn get_piece(
        &self,
        req: Request<pb::GetPieceRequest>,
    ) -> Result<Response<pb::GetPieceResponse>, Status> {
        let r = req.into_inner();
        let Some(blob) = self.store.get(&r.task_id) else {
            self.metrics
                .p2p_uploads
                .with_label_values(&["not_found"])
                .inc();
            return Err(Status::not_found(format!(
                "task {} is not in this peer's store",
                r.task_id
            )));
        };
        let pl = u64::from(blob.piece_length());
        let start = u64::from(r.number) * pl;
        if start >= blob.size() {
            return Err(Status::invalid_argument(format!(
                "piece {} is past the end of task {}",
                r.number, r.task_id
            )));
        }
        let Ok(_permit) = self.slots.clone().try_acquire_owned() else {
            self.metrics.p2p_uploads.with_label_values(&["busy"]).inc();
            return Err(Status::resource_exhausted(
                "all upload slots are busy; try another parent",
            ));
        };
        self.pool.active_uploads.fetch_add(1, Ordering::Relaxed);
        let res = blob.read_local(start..(start + pl).min(blob.size())).await;
        self.pool.active_uploads.fetch_sub(1, Ordering::Relaxed);
        let data = match res {
            Ok(Some(d)) => d,
            Ok(None) => {
                self.metrics
                    .p2p_uploads
                    .with_label_values(&["not_found"])
                    .inc();
                return Err(Status::not_found(format!(
                    "piece {} of task {} is not here",
                    r.number, r.task_id
                )));
            }
            Err(e) => {
                self.metrics.p2p_uploads.with_label_values(&["error"]).inc();
                return Err(Status::internal(format!(
                    "cannot read piece {} of task {}: {e}",
                    r.number, r.task_id
                )));
            }
        };
        if let Some(rate) = &self.rate {
            rate.take(data.len() as u64).await;
        }
        self.metrics.p2p_uploads.with_label_values(&["ok"]).inc();
        self.metrics.p2p_upload_bytes.inc_by(data.len() as u64);
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
        let Some(seed) = &self.seed else {
            return Err(Status::unimplemented(
                "this peer is not a seed peer (start it with --seed-peer to serve triggers)",
            ));
        };
        let task = req
            .into_inner()
            .task
            .ok_or_else(|| Status::invalid_argument("task is required"))?;
        let started = seed.trigger(task).await?;
        Ok(Response::new(pb::TriggerDownloadResponse { started }))
    }
}
