//! The P2P source of one blob: what the piece store calls for missing pieces. It asks the
//! task's scheduler for parents, fetches pieces from several parents at once, checks each
//! against the digest the scheduler recorded when the piece first left the origin, reports bad
//! parents, and fetches from the origin (the registry) whatever no parent could provide — or
//! everything, when the scheduler says so or cannot be reached. Each piece is handed on as it
//! arrives (in order), so a reader waits only for the pieces it needs. Pieces are reported to the
//! scheduler once the store holds them, so nobody is sent to us for a piece we lack.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dragonfly_proto::peer as peerpb;
use dragonfly_proto::scheduler as pb;
use dragonfly_storage::{PieceStore, Priority, RangeSource, RangeStream, SourceError};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{self, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::origin_pieces::{self, Layout};
use super::piece_order::{self, Driver};
use super::piece_wire::PieceRequest;
use super::{Answers, P2p, ParentClients, PieceFetchError, SchedulerPool};
use crate::metrics::Metrics;

/// Longest a read waits for a seed peer before taking the origin itself.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// FindParents rounds in a row whose parents delivered nothing, before the rest of a read
/// goes to the origin.
const MAX_ROUNDS: usize = 4;
/// How long to pause when every parent asked was busy.
const BUSY_PAUSE: Duration = Duration::from_millis(20);
/// Most requests pipelined on one connection: a run of up to 8 MiB of 32 KiB pieces, whose
/// requests (some 150 bytes each) fit in the parent's socket buffer while it answers.
const MAX_PIPELINED: usize = 256;

struct Pending {
    digest: String,
    parent: String,
    cost_ms: u32,
}

#[derive(Default)]
struct SourceState {
    /// `Some(true)` registered; `Some(false)` P2P unusable for this blob.
    registered: Option<bool>,
    /// Pieces fetched but not yet in the store.
    pending: HashMap<u32, Pending>,
    /// Parents that sent this peer a corrupt piece of the task: never asked again, whatever
    /// the scheduler still offers (asks already in flight to them are dropped too).
    corrupt: HashSet<String>,
}

/// Most corrupt parents remembered per task (they are blocklisted by the scheduler as well).
const MAX_CORRUPT_PARENTS: usize = 256;

/// Hands piece `n`'s bytes, verified, on to whoever reads the range.
type Deliver = dyn Fn(u32, Bytes) + Send + Sync;

/// How asking one parent for one piece went.
enum Fetched {
    /// The piece, verified and delivered.
    Delivered,
    /// The parent's upload slots were full.
    Busy,
    /// It failed (and was reported).
    Failed,
}

/// One piece to ask one parent for.
#[derive(Debug, Clone)]
struct Ask {
    piece: u32,
    parent: pb::Parent,
    /// The digest the scheduler recorded; `None` from an on-demand seed.
    digest: Option<String>,
    /// The end (exclusive) of the run of pieces asked of the same on-demand seed.
    until: u32,
}

/// What went wrong with a parent, as reported to the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// It sent bytes that do not match the piece digest.
    Corrupt,
    /// It could not be reached.
    Unreachable,
    /// It refused or failed the request.
    Failed,
}

/// Parents in front of the origin for one blob.
pub struct PeerSource {
    /// Replaced only by an explicit refresh ([`RangeSource::swap_origin`]).
    origin: Mutex<Arc<dyn RangeSource>>,
    store: PieceStore,
    pool: Arc<SchedulerPool>,
    parents: Arc<ParentClients>,
    metrics: Arc<Metrics>,
    task: pb::Task,
    peer_id: String,
    parallel: usize,
    state: Mutex<SourceState>,
}

/// Answers of this many bytes or fewer are hashed on the worker (a 32 KiB piece takes some
/// 20 µs with SHA-NI); more go to a blocking thread, which costs a hand-off each time.
const INLINE_HASH_BYTES: usize = 64 * 1024;

type Answer = Result<Bytes, PieceFetchError>;

/// Each answer with its bytes' digest; `None` if the blocking hash task died.
async fn hash_answers(group: Vec<Answer>) -> Option<Vec<Result<(String, Bytes), PieceFetchError>>> {
    let hash = |group: Vec<Answer>| {
        group
            .into_iter()
            .map(|a| a.map(|d| (sha256(&d), d)))
            .collect::<Vec<_>>()
    };
    let bytes: usize = group.iter().flatten().map(Bytes::len).sum();
    if bytes <= INLINE_HASH_BYTES {
        return Some(hash(group));
    }
    tokio::task::spawn_blocking(move || hash(group)).await.ok()
}

pub(super) fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

impl PeerSource {
    /// The source of `task` (its size, piece length and origin URL), reading from the
    /// parents `p2p`'s scheduler names and from `origin` for the rest.
    pub fn new(
        p2p: &P2p,
        store: PieceStore,
        metrics: Arc<Metrics>,
        origin: Arc<dyn RangeSource>,
        task: pb::Task,
    ) -> Arc<PeerSource> {
        let peer_id = format!(
            "{}-{}-{:016x}",
            p2p.pool.host_id(),
            &task.id[task.id.len().saturating_sub(12)..],
            rand::random::<u64>()
        );
        let source = Arc::new(PeerSource {
            origin: Mutex::new(origin),
            store,
            pool: p2p.pool.clone(),
            parents: p2p.parents.clone(),
            metrics,
            task,
            peer_id,
            parallel: p2p.parallel.max(1),
            state: Mutex::new(SourceState::default()),
        });
        source.pool.track(&source);
        source
    }

    fn origin(&self) -> Arc<dyn RangeSource> {
        self.origin.lock().expect("origin lock").clone()
    }

    /// Records how long a step of a read someone waits for took (see
    /// [`Metrics::p2p_demand_seconds`]).
    fn timed(&self, step: &str, urgent: bool, since: Instant) {
        if urgent {
            self.metrics
                .p2p_demand_seconds
                .with_label_values(&[step])
                .observe(since.elapsed().as_secs_f64());
        }
    }

    fn piece_len(&self, n: u32) -> u64 {
        let pl = u64::from(self.task.piece_length);
        (self.task.content_length - u64::from(n) * pl).min(pl)
    }

    /// Makes the next read register again.
    pub fn forget_registration(&self) {
        self.state.lock().expect("state lock").registered = None;
    }

    /// Registers with the task's scheduler once; false when P2P cannot be used for this blob.
    pub async fn registered(self: &Arc<Self>) -> bool {
        if let Some(r) = self.state.lock().expect("state lock").registered {
            return r;
        }
        let Some((i, mut c)) = self.pool.for_task(&self.task.id) else {
            return false;
        };
        if let Err(e) = self.pool.ensure_announced(&i).await {
            self.pool.mark_down(&i, &e.to_string());
            return false;
        }
        let req = pb::RegisterPeerRequest {
            host_id: self.pool.host_id().to_owned(),
            peer_id: self.peer_id.clone(),
            task: Some(self.task.clone()),
        };
        let asked = Instant::now();
        let mut res = c.register_peer(req.clone()).await;
        if matches!(&res, Err(e) if e.code() == tonic::Code::NotFound) {
            // The scheduler does not know this host yet (it restarted): announce, then retry.
            if self.pool.announce_to(&i).await.is_ok() {
                res = c.register_peer(req).await;
            }
        }
        self.timed("register", true, asked);
        match res {
            Ok(r) => {
                let r = r.into_inner();
                let usable = r.piece_length == self.task.piece_length;
                if !usable {
                    tracing::warn!(task = %self.task.id, ours = self.task.piece_length, swarm = r.piece_length, "the swarm uses another piece length; this blob comes from the origin only");
                }
                self.state.lock().expect("state lock").registered = Some(usable);
                if usable {
                    self.announce_held();
                }
                usable
            }
            Err(e) => {
                // Not cached: try again on the next read, once the scheduler is back.
                self.pool.mark_down(&i, e.message());
                false
            }
        }
    }

    /// After (re-)registering: tells the scheduler about the pieces already in the store (from
    /// before a restart of this daemon or of the scheduler). Their bytes were verified when
    /// they arrived; digests are computed from the store.
    fn announce_held(self: &Arc<Self>) {
        let Some(blob) = self.store.get(&self.task.id) else {
            return;
        };
        if blob.fetched_bytes() == 0 {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            // A daemon restarted with many blobs reads them a few at a time.
            let Ok(_permit) = me.pool.rehash.clone().acquire_owned().await else {
                return;
            };
            let pl = u64::from(me.task.piece_length);
            let count = me.task.content_length.div_ceil(pl) as u32;
            let mut reports = Vec::new();
            for n in 0..count {
                let range = u64::from(n) * pl..(u64::from(n + 1) * pl).min(me.task.content_length);
                if let Ok(Some(data)) = blob.read_local(range).await {
                    let digest = tokio::task::spawn_blocking(move || sha256(&data))
                        .await
                        .unwrap_or_default();
                    reports.push(pb::PieceFinished {
                        peer_id: me.peer_id.clone(),
                        task_id: me.task.id.clone(),
                        piece: Some(pb::PieceInfo {
                            number: n,
                            digest,
                            length: me.piece_len(n) as u32,
                        }),
                        parent_id: String::new(),
                        cost_ms: 0,
                    });
                }
            }
            let held = reports.len();
            if let Some((i, mut c)) = me.pool.for_task(&me.task.id) {
                match c.report_pieces(stream::iter(reports)).await {
                    Ok(_) => {
                        tracing::info!(task = %me.task.id, pieces = held, "announced pieces already held")
                    }
                    Err(e) => me.pool.mark_down(&i, e.message()),
                }
            }
        });
    }

    /// The origin's bytes of `pieces` (one request), handed on in whole pieces as they arrive,
    /// each piece's digest recorded for the scheduler before its bytes go on.
    fn origin_stream(
        self: &Arc<Self>,
        pieces: Range<u32>,
        priority: Priority,
        urgent: bool,
    ) -> RangeStream {
        let layout = Layout {
            piece_length: u64::from(self.task.piece_length),
            content_length: self.task.content_length,
        };
        let asked = Instant::now();
        let body = stream::once(self.origin().fetch_stream(layout.range(&pieces), priority))
            .try_flatten()
            .boxed();
        let me = self.clone();
        let last = pieces.end - 1;
        let record = Box::new(move |n: u32, digest: String, len: u64| {
            me.state.lock().expect("state lock").pending.insert(
                n,
                Pending {
                    digest,
                    parent: String::new(),
                    cost_ms: 0,
                },
            );
            me.metrics.p2p_pieces.with_label_values(&["origin"]).inc();
            me.metrics
                .p2p_bytes
                .with_label_values(&["origin"])
                .inc_by(len);
            if n == last {
                me.timed("origin", urgent, asked);
            }
        });
        origin_pieces::cut(body, pieces, layout, record)
    }

    async fn report_bad(&self, parent: &str, fault: Fault, reason: String) {
        let corrupt = fault == Fault::Corrupt;
        self.metrics
            .p2p_bad_parents
            .with_label_values(&[if corrupt { "corrupt" } else { "failed" }])
            .inc();
        if corrupt {
            tracing::error!(task = %self.task.id, parent, %reason, "parent sent a piece that does not match its digest; reported");
        } else {
            tracing::debug!(task = %self.task.id, parent, %reason, "piece from parent failed");
        }
        if let Some((i, mut c)) = self.pool.for_task(&self.task.id) {
            let req = pb::ReportBadParentRequest {
                peer_id: self.peer_id.clone(),
                task_id: self.task.id.clone(),
                parent_id: parent.to_owned(),
                corrupt,
                reason,
                unreachable: fault == Fault::Unreachable,
            };
            if let Err(e) = c.report_bad_parent(req).await {
                self.pool.mark_down(&i, e.message());
            }
        }
    }

    /// Piece `n`'s bytes from `parent`: over the raw-TCP protocol if it speaks it, else gRPC.
    /// An on-demand parent (a seed) is asked to fetch it from the origin if it lacks it, with
    /// the pieces up to `until` that this read wants from it too.
    async fn piece_from(
        &self,
        parent: &pb::Parent,
        n: u32,
        until: u32,
    ) -> Result<Bytes, PieceFetchError> {
        let fetch_until = if parent.on_demand { until } else { 0 };
        if parent.tcp_pieces {
            let req = PieceRequest {
                task_id: self.task.id.clone(),
                number: n,
                peer_id: self.peer_id.clone(),
                fetch: parent.on_demand,
                fetch_until,
            };
            let max = self.piece_len(n) as usize;
            return self
                .parents
                .get_piece_tcp(&parent.ip, parent.upload_port, &req, max)
                .await;
        }
        let mut client = self
            .parents
            .get(&parent.ip, parent.upload_port)
            .map_err(|e| PieceFetchError {
                unreachable: true,
                busy: false,
                message: e.to_string(),
            })?;
        let req = peerpb::GetPieceRequest {
            task_id: self.task.id.clone(),
            number: n,
            peer_id: self.peer_id.clone(),
            fetch: parent.on_demand,
            fetch_until,
        };
        match client.get_piece(req).await {
            Ok(r) => Ok(r.into_inner().data),
            // Transport failures (refused, reset, host gone) surface as Unavailable.
            Err(e) => Err(PieceFetchError {
                unreachable: e.code() == tonic::Code::Unavailable,
                busy: e.code() == tonic::Code::ResourceExhausted,
                message: format!("GetPiece {n}: {}", e.message()),
            }),
        }
    }

    /// The answers of `batch`'s parent, sent to `answers` as they arrive: one request, or the
    /// run pipelined on one connection.
    async fn pieces_from(&self, batch: &[Ask], answers: &Answers) {
        let first = &batch[0];
        if batch.len() == 1 {
            let got = self
                .piece_from(&first.parent, first.piece, first.until)
                .await;
            let _ = answers.send(got);
            return;
        }
        let reqs: Vec<PieceRequest> = batch
            .iter()
            .map(|a| PieceRequest {
                task_id: self.task.id.clone(),
                number: a.piece,
                peer_id: self.peer_id.clone(),
                fetch: true,
                fetch_until: a.until,
            })
            .collect();
        let max = self.task.piece_length as usize;
        let (ip, port) = (&first.parent.ip, first.parent.upload_port);
        self.parents
            .stream_pieces_tcp(ip, port, &reqs, max, answers)
            .await
    }

    /// The pieces of one batch (see [`PeerSource::batches`]) from its parent, each verified
    /// against its digest and delivered as it arrives. A piece an on-demand seed fetched for
    /// us has no recorded digest yet (`None`): its bytes are checked by what they are part of
    /// (chunk digests of a lazy layer, the blob's digest when it completes).
    async fn fetch_batch(&self, batch: &[Ask], deliver: &Deliver) -> Vec<(u32, Fetched)> {
        if self.is_corrupt(&batch[0].parent.peer_id) {
            return batch.iter().map(|a| (a.piece, Fetched::Failed)).collect();
        }
        let started = Instant::now();
        let (tx, rx) = mpsc::unbounded_channel();
        let asking = async move { self.pieces_from(batch, &tx).await };
        let taking = self.take_answers(batch, rx, started, deliver);
        futures::join!(asking, taking).1
    }

    /// `batch`'s answers as they arrive: those that came together are hashed together (on a
    /// blocking thread when they are large), then each is checked and delivered. A failed
    /// request is reported once per batch.
    async fn take_answers(
        &self,
        batch: &[Ask],
        answers: mpsc::UnboundedReceiver<Answer>,
        started: Instant,
        deliver: &Deliver,
    ) -> Vec<(u32, Fetched)> {
        let parent = &batch[0].parent;
        let mut asks = batch.iter();
        let mut out = Vec::with_capacity(batch.len());
        let mut reported = false;
        let mut groups = UnboundedReceiverStream::new(answers).ready_chunks(MAX_PIPELINED);
        while let Some(group) = groups.next().await {
            let Some(hashed) = hash_answers(group).await else {
                break;
            };
            // `hashed` first: zip must not take an ask past the group's last answer.
            for (answer, ask) in hashed.into_iter().zip(asks.by_ref()) {
                let fetched = match answer {
                    Ok((actual, data)) => self.accept(ask, data, actual, started, deliver).await,
                    // Full upload slots are load, not a fault: ask again shortly.
                    Err(e) if e.busy => Fetched::Busy,
                    Err(e) => {
                        if !std::mem::replace(&mut reported, true) {
                            let fault = if e.unreachable {
                                Fault::Unreachable
                            } else {
                                Fault::Failed
                            };
                            self.report_bad(&parent.peer_id, fault, e.message).await;
                        }
                        Fetched::Failed
                    }
                };
                out.push((ask.piece, fetched));
            }
        }
        out.extend(asks.map(|a| (a.piece, Fetched::Failed)));
        out
    }

    /// Piece `ask.piece` as the parent sent it (`data`, hashing to `actual`): delivered if it
    /// matches the recorded digest and length, else the parent is marked corrupt and reported.
    async fn accept(
        &self,
        ask: &Ask,
        data: Bytes,
        actual: String,
        started: Instant,
        deliver: &Deliver,
    ) -> Fetched {
        let (parent, n) = (&ask.parent, ask.piece);
        let expected = ask.digest.as_deref().unwrap_or(&actual);
        if data.len() as u64 != self.piece_len(n) || actual != expected {
            // Reported once per parent (the rest of its batch is as bad).
            let known = {
                let mut st = self.state.lock().expect("state lock");
                let known = st.corrupt.contains(&parent.peer_id);
                if !known && st.corrupt.len() < MAX_CORRUPT_PARENTS {
                    st.corrupt.insert(parent.peer_id.clone());
                }
                known
            };
            if !known {
                self.report_bad(
                    &parent.peer_id,
                    Fault::Corrupt,
                    format!(
                        "piece {n}: {} bytes hashing to {actual}, expected {expected}",
                        data.len()
                    ),
                )
                .await;
            }
            return Fetched::Failed;
        }
        self.state.lock().expect("state lock").pending.insert(
            n,
            Pending {
                digest: actual,
                parent: parent.peer_id.clone(),
                cost_ms: started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32,
            },
        );
        self.metrics.p2p_pieces.with_label_values(&["peer"]).inc();
        self.metrics
            .p2p_bytes
            .with_label_values(&["peer"])
            .inc_by(data.len() as u64);
        deliver(n, data);
        Fetched::Delivered
    }

    fn is_corrupt(&self, parent: &str) -> bool {
        self.state
            .lock()
            .expect("state lock")
            .corrupt
            .contains(parent)
    }

    /// Which parent to ask for each missing piece: those that hold it with a recorded digest,
    /// spread round-robin (best first); else an on-demand seed (no digest yet). Pieces nobody
    /// can serve are left out (they go to the origin).
    fn plan(missing: &[u32], resp: &pb::FindParentsResponse) -> Vec<Ask> {
        let mut plan = Self::pick_parents(missing, resp);
        // Adjacent pieces asked of the same on-demand seed: each request names the run's end,
        // so the seed fetches the run from the origin in one request.
        let mut i = 0;
        while i < plan.len() {
            let mut j = i + 1;
            while j < plan.len()
                && plan[i].parent.on_demand
                && plan[j].parent.peer_id == plan[i].parent.peer_id
                && plan[j].piece == plan[j - 1].piece + 1
            {
                j += 1;
            }
            let until = plan[j - 1].piece + 1;
            for a in &mut plan[i..j] {
                a.until = until;
            }
            i = j;
        }
        plan
    }

    /// The asks sent together: a run of adjacent pieces asked of one on-demand seed that
    /// speaks the raw-TCP protocol is pipelined on one connection (so the seed sees the run's
    /// first piece first and fetches the whole run from the origin in one request); every
    /// other ask goes alone, spread over connections and parents.
    fn batches(plan: Vec<Ask>) -> Vec<Vec<Ask>> {
        let mut out: Vec<Vec<Ask>> = Vec::new();
        for ask in plan {
            if let Some(batch) = out.last_mut() {
                let prev = &batch[batch.len() - 1];
                if ask.parent.on_demand
                    && ask.parent.tcp_pieces
                    && ask.parent.peer_id == prev.parent.peer_id
                    && ask.until == prev.until
                    && ask.piece == prev.piece + 1
                    && batch.len() < MAX_PIPELINED
                {
                    batch.push(ask);
                    continue;
                }
            }
            out.push(vec![ask]);
        }
        out
    }

    fn pick_parents(missing: &[u32], resp: &pb::FindParentsResponse) -> Vec<Ask> {
        let digests: HashMap<u32, &str> = resp
            .digests
            .iter()
            .map(|d| (d.number, d.digest.as_str()))
            .collect();
        let mut plan = Vec::new();
        for (k, n) in missing.iter().enumerate() {
            let digest = digests.get(n).copied();
            let holders: Vec<&pb::Parent> = resp
                .parents
                .iter()
                .filter(|p| p.pieces.contains(n) && (digest.is_some() || p.on_demand))
                .collect();
            let verified: Vec<&pb::Parent> =
                holders.iter().copied().filter(|p| !p.on_demand).collect();
            let pick = match (digest, verified.is_empty()) {
                (Some(_), false) => verified.get(k % verified.len()),
                _ => holders.iter().find(|p| p.on_demand),
            };
            if let Some(p) = pick {
                plan.push(Ask {
                    piece: *n,
                    parent: (*p).clone(),
                    digest: digest.map(str::to_owned),
                    until: n + 1,
                });
            }
        }
        plan
    }

    /// Asks the scheduler for parents of `missing`; `None` when the swarm cannot help now.
    async fn find_parents(&self, missing: &[u32], urgent: bool) -> Option<pb::FindParentsResponse> {
        let (i, mut c) = self.pool.for_task(&self.task.id)?;
        let req = pb::FindParentsRequest {
            peer_id: self.peer_id.clone(),
            task_id: self.task.id.clone(),
            pieces: missing.to_vec(),
            limit: self.parallel as u32,
            urgent,
        };
        match c.find_parents(req).await {
            Ok(r) => Some(r.into_inner()),
            Err(e) if e.code() == tonic::Code::NotFound => {
                // The scheduler forgot us (restarted, or expired our host): register again
                // on the next read, and take the origin for this one.
                tracing::info!(task = %self.task.id, "scheduler does not know this peer any more; will register again");
                self.state.lock().expect("state lock").registered = None;
                None
            }
            Err(e) => {
                self.pool.mark_down(&i, e.message());
                None
            }
        }
    }

    /// Pieces from parents, each delivered as it arrives; the rest goes to the origin. An
    /// `urgent` read (a container waits) may be served by a seed fetching on demand; a
    /// background fill waits for the seed's own fill instead.
    async fn fetch_from_parents(&self, pieces: &[u32], urgent: bool, deliver: &Deliver) {
        let mut got: HashSet<u32> = HashSet::new();
        // Since the last piece arrived: waiting (for a seed, or for parents still fetching
        // the pieces) is bounded by MAX_WAIT, fruitless parent rounds by MAX_ROUNDS.
        let mut progress_at = Instant::now();
        let mut rounds = 0;
        while rounds < MAX_ROUNDS {
            let missing: Vec<u32> = pieces
                .iter()
                .copied()
                .filter(|n| !got.contains(n))
                .collect();
            if missing.is_empty() {
                break;
            }
            let asked = Instant::now();
            let resp = self.find_parents(&missing, urgent).await;
            self.timed("find_parents", urgent, asked);
            let Some(resp) = resp else {
                break;
            };
            match pb::Decision::try_from(resp.decision) {
                Ok(pb::Decision::Parents) => {}
                Ok(pb::Decision::Wait) if progress_at.elapsed() < MAX_WAIT => {
                    let paused = Instant::now();
                    tokio::time::sleep(Duration::from_millis(u64::from(
                        resp.retry_after_ms.clamp(20, 2000),
                    )))
                    .await;
                    self.timed("wait", urgent, paused);
                    continue;
                }
                _ => break,
            }
            let mut resp = resp;
            resp.parents.retain(|p| !self.is_corrupt(&p.peer_id));
            let plan = Self::plan(&missing, &resp);
            if plan.is_empty() {
                break;
            }
            let asked = Instant::now();
            let results: Vec<Vec<(u32, Fetched)>> = stream::iter(Self::batches(plan))
                .map(|batch| async move { self.fetch_batch(&batch, deliver).await })
                .buffer_unordered(self.parallel)
                .collect()
                .await;
            let results: Vec<(u32, Fetched)> = results.into_iter().flatten().collect();
            self.timed("parents", urgent, asked);
            let before = got.len();
            let busy = results.iter().any(|(_, f)| matches!(f, Fetched::Busy));
            got.extend(results.into_iter().filter_map(|(n, f)| match f {
                Fetched::Delivered => Some(n),
                _ => None,
            }));
            if got.len() > before {
                progress_at = Instant::now();
                rounds = 0;
            } else if busy && progress_at.elapsed() < MAX_WAIT {
                // Parents are busy serving others: a short pause, not a fruitless round.
                tokio::time::sleep(BUSY_PAUSE).await;
            } else {
                rounds += 1;
            }
        }
    }

    /// The bytes of `range`, in order, as they arrive: the pieces parents hold (asked for all
    /// at once, each handed on as soon as it and those before it are in), and what no parent
    /// had, streamed from the origin in contiguous runs.
    async fn fetch_range(
        self: Arc<Self>,
        range: Range<u64>,
        priority: Priority,
    ) -> Result<RangeStream, SourceError> {
        let pl = u64::from(self.task.piece_length);
        let aligned = range.start.is_multiple_of(pl)
            && (range.end.is_multiple_of(pl) || range.end == self.task.content_length);
        if !aligned || range.end > self.task.content_length || !self.registered().await {
            return self.origin().fetch_stream(range, priority).await;
        }
        let pieces: Vec<u32> = ((range.start / pl) as u32..range.end.div_ceil(pl) as u32).collect();
        // A reader blocked on a few chunks; bulk reads and fills take what fills provide.
        let urgent = priority >= Priority::Prefetch;
        let (senders, slots): (HashMap<u32, _>, Vec<_>) = pieces
            .iter()
            .map(|&n| {
                let (tx, rx) = oneshot::channel();
                ((n, tx), (n, rx))
            })
            .unzip();
        let senders = Mutex::new(senders);
        // A piece no parent delivers is dropped with its sender when the rounds end.
        let deliver = move |n: u32, data: Bytes| {
            if let Some(tx) = senders.lock().expect("senders lock").remove(&n) {
                let _ = tx.send(data);
            }
        };
        let me = self.clone();
        let rounds = tokio::spawn(async move {
            me.fetch_from_parents(&pieces, urgent, &deliver).await;
        });
        let origin = move |run: Range<u32>| self.origin_stream(run, priority, urgent);
        Ok(piece_order::in_order(slots, origin, Driver(rounds)))
    }

    fn report_stored(self: Arc<Self>, range: Range<u64>) {
        let pl = u64::from(self.task.piece_length);
        let reports: Vec<pb::PieceFinished> = {
            let mut st = self.state.lock().expect("state lock");
            ((range.start / pl) as u32..range.end.div_ceil(pl) as u32)
                .filter_map(|n| {
                    st.pending.remove(&n).map(|p| pb::PieceFinished {
                        peer_id: self.peer_id.clone(),
                        task_id: self.task.id.clone(),
                        piece: Some(pb::PieceInfo {
                            number: n,
                            digest: p.digest,
                            length: self.piece_len(n) as u32,
                        }),
                        parent_id: p.parent,
                        cost_ms: p.cost_ms,
                    })
                })
                .collect()
        };
        if reports.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let Some((i, mut c)) = self.pool.for_task(&self.task.id) else {
                return;
            };
            if let Err(e) = c.report_pieces(stream::iter(reports)).await {
                self.pool.mark_down(&i, e.message());
            }
        });
    }
}

impl PeerSource {
    /// The blob left the store (evicted or removed): tell the scheduler, so nobody is sent
    /// here for its pieces any more.
    fn leave(&self) {
        let registered = self.state.lock().expect("state lock").registered == Some(true);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !registered {
            return;
        }
        let (pool, task_id, peer_id) = (
            self.pool.clone(),
            self.task.id.clone(),
            self.peer_id.clone(),
        );
        handle.spawn(async move {
            if let Some((_, mut c)) = pool.for_task(&task_id) {
                let req = pb::LeavePeerRequest { peer_id, task_id };
                if let Err(e) = c.leave_peer(req).await {
                    tracing::debug!(error = %e.message(), "LeavePeer failed; the scheduler expires the peer with the host");
                }
            }
        });
    }
}

/// The store holds `Arc<dyn RangeSource>`; this wrapper lets the source hand itself to tasks.
pub struct SharedPeerSource(pub Arc<PeerSource>);

impl RangeSource for SharedPeerSource {
    fn fetch(
        &self,
        range: Range<u64>,
        priority: Priority,
    ) -> BoxFuture<'static, Result<Bytes, SourceError>> {
        let stream = self.0.clone().fetch_range(range.clone(), priority);
        async move {
            let mut body = stream.await?;
            let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
            while let Some(chunk) = body.next().await {
                out.extend_from_slice(&chunk?);
            }
            Ok(out.freeze())
        }
        .boxed()
    }

    fn fetch_stream(
        &self,
        range: Range<u64>,
        priority: Priority,
    ) -> BoxFuture<'static, Result<RangeStream, SourceError>> {
        self.0.clone().fetch_range(range, priority).boxed()
    }

    fn stored(&self, range: Range<u64>) {
        if self.0.state.lock().expect("state lock").registered == Some(true) {
            self.0.clone().report_stored(range);
        }
    }

    fn released(&self) {
        self.0.leave();
    }

    fn swap_origin(&self, origin: Arc<dyn RangeSource>) -> bool {
        *self.0.origin.lock().expect("origin lock") = origin;
        true
    }

    fn origin_known(&self) -> bool {
        self.0.origin().origin_known()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(id: &str, pieces: &[u32], on_demand: bool) -> pb::Parent {
        pb::Parent {
            peer_id: id.into(),
            pieces: pieces.to_vec(),
            on_demand,
            ..pb::Parent::default()
        }
    }

    /// Pieces with a recorded digest go to the peers that hold them; the rest to the on-demand
    /// seed, each naming the end of its run of adjacent pieces asked of the seed.
    #[test]
    fn plan_prefers_verified_holders_and_gives_the_seed_runs() {
        let resp = pb::FindParentsResponse {
            parents: vec![
                parent("peer", &[2], false),
                parent("host:seed", &[0, 1, 2, 3, 5, 6], true),
            ],
            digests: vec![pb::PieceInfo {
                number: 2,
                digest: "sha256:two".into(),
                length: 1,
            }],
            ..pb::FindParentsResponse::default()
        };
        let plan = PeerSource::plan(&[0, 1, 2, 3, 5, 6, 9], &resp);
        let got: Vec<(u32, &str, u32, bool)> = plan
            .iter()
            .map(|a| {
                (
                    a.piece,
                    a.parent.peer_id.as_str(),
                    a.until,
                    a.digest.is_some(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "host:seed", 2, false),
                (1, "host:seed", 2, false),
                (2, "peer", 3, true),
                (3, "host:seed", 4, false),
                (5, "host:seed", 7, false),
                (6, "host:seed", 7, false),
            ],
            "piece 9 has no parent: it goes to the origin"
        );
    }

    /// A seed's runs over the raw-TCP protocol go as one pipelined batch each (at most
    /// MAX_PIPELINED pieces); pieces of verified holders, and a seed's over gRPC, go alone.
    #[test]
    fn a_seeds_runs_are_batched_and_everything_else_goes_alone() {
        let mut tcp_seed = parent("host:seed", &[], true);
        tcp_seed.tcp_pieces = true;
        let ask = |piece: u32, parent: &pb::Parent, until: u32| Ask {
            piece,
            parent: parent.clone(),
            digest: None,
            until,
        };
        let (peer, grpc_seed) = (parent("peer", &[], false), parent("grpc:seed", &[], true));
        let plan = vec![
            ask(0, &tcp_seed, 2),
            ask(1, &tcp_seed, 2),
            ask(2, &peer, 3),
            ask(3, &peer, 4),
            ask(4, &tcp_seed, 6),
            ask(5, &tcp_seed, 6),
            ask(6, &grpc_seed, 8),
            ask(7, &grpc_seed, 8),
        ];
        let got: Vec<Vec<u32>> = PeerSource::batches(plan)
            .iter()
            .map(|b| b.iter().map(|a| a.piece).collect())
            .collect();
        assert_eq!(
            got,
            vec![vec![0, 1], vec![2], vec![3], vec![4, 5], vec![6], vec![7]]
        );

        let long: Vec<Ask> = (0..MAX_PIPELINED as u32 + 3)
            .map(|n| ask(n, &tcp_seed, MAX_PIPELINED as u32 + 3))
            .collect();
        let sizes: Vec<usize> = PeerSource::batches(long).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![MAX_PIPELINED, 3]);
    }
}
