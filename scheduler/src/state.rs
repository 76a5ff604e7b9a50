//! The in-memory model: hosts, tasks, the peers of each task and the pieces each peer holds,
//! piece digests recorded from the origin, and blocklists.
//!
//! Locking: one `RwLock` over the host table, one over the task table, and a `Mutex` per task,
//! so requests about different tasks do not contend.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use dragonfly_proto::scheduler as pb;

use crate::pieceset::PieceSet;

/// A host that announced itself.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// The announced host.
    pub id: Arc<str>,
    /// Its hostname.
    pub hostname: String,
    /// Address of its peer service.
    pub ip: String,
    /// Port of its peer service.
    pub upload_port: u32,
    /// Whether that port speaks the raw-TCP piece protocol.
    pub tcp_pieces: bool,
    /// Whether its peer service fetches missing pieces of triggered tasks on demand.
    pub demand_pieces: bool,
    /// Seed peer or normal.
    pub seed: bool,
    /// IDC.
    pub idc: String,
    /// Location.
    pub location: String,
    /// Upload slots.
    pub upload_slots: u32,
    /// Uploads running (from keepalives).
    pub active_uploads: u32,
    /// Last announce or keepalive.
    pub last_seen: Instant,
    /// Protocol revision it speaks.
    pub protocol: u32,
}

/// One peer (a host downloading a task).
#[derive(Debug)]
pub struct PeerState {
    /// The peer.
    pub id: Arc<str>,
    /// Its host.
    pub host_id: Arc<str>,
    /// Pieces it holds.
    pub pieces: PieceSet,
    /// Uploads children reported as good / bad.
    pub uploads_ok: u64,
    /// Uploads reported bad.
    pub uploads_failed: u64,
    /// Moving average of the cost of pieces fetched from it, ms.
    pub cost_ms: f64,
    /// Whether it was sent to the origin.
    pub back_to_source: bool,
    /// Parents this peer must not be given again.
    pub avoid: HashSet<Arc<str>>,
    /// When it first asked for parents and got none (for the seed wait bound).
    pub waiting_since: Option<Instant>,
    /// When it registered.
    pub created_at: SystemTime,
    /// Its last registration or piece report.
    pub updated_at: SystemTime,
}

/// The seed peer status of a task.
#[derive(Debug, Clone)]
pub enum SeedStatus {
    /// Never triggered.
    None,
    /// Triggered on a host at a time.
    Triggered {
        /// The seed host.
        host: Arc<str>,
        /// When.
        at: Instant,
    },
    /// The trigger failed.
    Failed {
        /// When.
        at: Instant,
    },
}

/// One task.
pub struct TaskState {
    /// The task ID.
    pub id: Arc<str>,
    /// Total bytes (0 unknown).
    pub content_length: u64,
    /// Piece length, fixed by the first registration.
    pub piece_length: u32,
    /// Origin URL.
    pub url: String,
    /// Expected digest of the whole content.
    pub digest: String,
    /// Headers for the origin, from the latest registrant; in memory only, never logged.
    pub origin_headers: HashMap<String, String>,
    /// Piece digests recorded from origin downloads.
    pub piece_digests: HashMap<u32, String>,
    /// Peers by ID.
    pub peers: HashMap<Arc<str>, PeerState>,
    /// Peers holding at least one piece, for sampling.
    pub holders: Vec<Arc<str>>,
    /// Parents that served corrupt pieces: never a parent again for this task.
    pub blocklist: HashSet<Arc<str>>,
    /// Seed peer status.
    pub seed: SeedStatus,
    /// When a peer on a seed host last reported a piece of this task.
    pub last_seed_piece: Option<Instant>,
    /// When the task last had a peer.
    pub last_active: Instant,
}

impl std::fmt::Debug for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskState")
            .field("id", &self.id)
            .field("content_length", &self.content_length)
            .field("piece_length", &self.piece_length)
            .field(
                "origin_headers",
                &format_args!("<{} redacted>", self.origin_headers.len()),
            )
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl TaskState {
    /// Pieces of the task (0 when the length is unknown).
    pub fn piece_count(&self) -> u32 {
        if self.piece_length == 0 {
            return 0;
        }
        self.content_length.div_ceil(u64::from(self.piece_length)) as u32
    }

    /// Whether `peer` holds every piece.
    pub fn is_complete(&self, peer: &PeerState) -> bool {
        let n = self.piece_count();
        n > 0 && peer.pieces.len() >= n
    }

    /// Peers of this task currently fetching from the origin.
    pub fn back_to_source_peers(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.back_to_source && !self.is_complete(p))
            .count()
    }

    /// Bytes of the pieces in `set` (the last piece may be short).
    pub fn bytes_of(&self, set: &PieceSet) -> u64 {
        let pl = u64::from(self.piece_length);
        let n = u64::from(set.len());
        if pl == 0 || n == 0 {
            return 0;
        }
        let last = self.piece_count().saturating_sub(1);
        let full = n * pl;
        if set.contains(last) {
            full - (u64::from(self.piece_count()) * pl - self.content_length)
        } else {
            full
        }
    }

    fn remove_peer(&mut self, peer: &str) -> Option<PeerState> {
        let removed = self.peers.remove(peer)?;
        self.holders.retain(|h| &**h != peer);
        Some(removed)
    }

    /// The task as the origin-facing seed needs it.
    pub fn to_proto(&self) -> pb::Task {
        pb::Task {
            id: self.id.to_string(),
            content_length: self.content_length,
            piece_length: self.piece_length,
            url: self.url.clone(),
            digest: self.digest.clone(),
            origin_headers: self.origin_headers.clone(),
        }
    }
}

/// Why a state change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// Unknown host.
    #[error("host {0} is not announced; call AnnounceHost first")]
    UnknownHost(String),
    /// Unknown task.
    #[error("task {0} is not known; call RegisterPeer first")]
    UnknownTask(String),
    /// Unknown peer.
    #[error("peer {0} is not registered for task {1}; call RegisterPeer first")]
    UnknownPeer(String, String),
    /// A field is missing or malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A bound on what the scheduler keeps is reached.
    #[error("{0}; raise it in the scheduler's config or wait for idle entries to expire")]
    Full(String),
}

/// Bounds on what remote callers can make the scheduler keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Hosts announced at once.
    pub max_hosts: usize,
    /// Tasks known at once.
    pub max_tasks: usize,
    /// Peers registered on one task.
    pub max_peers_per_task: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_hosts: 50_000,
            max_tasks: 200_000,
            max_peers_per_task: 50_000,
        }
    }
}

/// Hosts and tasks.
#[derive(Default)]
pub struct State {
    hosts: RwLock<HashMap<Arc<str>, HostInfo>>,
    tasks: RwLock<HashMap<Arc<str>, Arc<Mutex<TaskState>>>>,
    limits: Limits,
}

/// Longest free-text field (hostname, IDC, location) and URL accepted.
const MAX_TEXT: usize = 512;
const MAX_URL: usize = 8192;
/// Most origin headers, and their total size, kept for a task.
const MAX_HEADERS: usize = 64;
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most pieces of one task (a piece set of a peer holding all of them is 512 KiB).
const MAX_PIECES: u64 = 1 << 22;

fn check_len(what: &str, text: &str, max: usize) -> Result<(), StateError> {
    if text.len() > max {
        return Err(StateError::Invalid(format!(
            "{what} is {} bytes; at most {max}",
            text.len()
        )));
    }
    Ok(())
}

fn check_headers(h: &HashMap<String, String>) -> Result<(), StateError> {
    let bytes: usize = h.iter().map(|(k, v)| k.len() + v.len()).sum();
    if h.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Err(StateError::Invalid(format!(
            "task.origin_headers: at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_id(what: &str, id: &str) -> Result<(), StateError> {
    if id.is_empty() || id.len() > 512 {
        return Err(StateError::Invalid(format!("{what} must be 1..=512 bytes")));
    }
    Ok(())
}

fn check_digest(what: &str, d: &str) -> Result<(), StateError> {
    let ok = dragonfly_task::Digest::parse(d)
        .is_ok_and(|d| d.algorithm() == dragonfly_task::DigestAlgorithm::Sha256);
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid(format!(
            "{what} {d:?} is not sha256:<64 hex>"
        )))
    }
}

impl State {
    /// An empty state within `limits`.
    pub fn with_limits(limits: Limits) -> State {
        State {
            limits,
            ..State::default()
        }
    }

    /// Adds or refreshes a host.
    pub fn announce_host(&self, protocol: u32, h: &pb::Host) -> Result<(), StateError> {
        check_id("host.id", &h.id)?;
        if h.ip.parse::<std::net::IpAddr>().is_err() || h.upload_port == 0 || h.upload_port > 65535
        {
            return Err(StateError::Invalid(
                "host.ip (an IP address) and host.upload_port (1..=65535) are required".into(),
            ));
        }
        check_len("host.hostname", &h.hostname, MAX_TEXT)?;
        check_len("host.idc", &h.idc, MAX_TEXT)?;
        check_len("host.location", &h.location, MAX_TEXT)?;
        let id: Arc<str> = Arc::from(h.id.as_str());
        let info = HostInfo {
            id: id.clone(),
            hostname: h.hostname.clone(),
            ip: h.ip.clone(),
            upload_port: h.upload_port,
            tcp_pieces: h.tcp_pieces,
            demand_pieces: h.demand_pieces,
            seed: h.r#type == pb::HostType::Seed as i32,
            idc: h.idc.clone(),
            location: h.location.clone(),
            upload_slots: h.upload_slots.max(1),
            active_uploads: 0,
            last_seen: Instant::now(),
            protocol,
        };
        let mut hosts = self.hosts.write().expect("hosts lock");
        if !hosts.contains_key(&id) && hosts.len() >= self.limits.max_hosts {
            return Err(StateError::Full(format!(
                "{} hosts are announced (scheduling.max_hosts)",
                hosts.len()
            )));
        }
        hosts.insert(id, info);
        Ok(())
    }

    /// Marks a host alive; false if unknown.
    pub fn keepalive(&self, host: &str, active_uploads: u32) -> bool {
        match self.hosts.write().expect("hosts lock").get_mut(host) {
            Some(h) => {
                h.last_seen = Instant::now();
                h.active_uploads = active_uploads;
                true
            }
            None => false,
        }
    }

    /// A copy of a host.
    pub fn host(&self, id: &str) -> Option<HostInfo> {
        self.hosts.read().expect("hosts lock").get(id).cloned()
    }

    /// Alive hosts as announced.
    pub fn hosts(&self) -> Vec<pb::Host> {
        self.with_hosts(|hosts| {
            hosts
                .values()
                .map(|h| pb::Host {
                    id: h.id.to_string(),
                    hostname: h.hostname.clone(),
                    ip: h.ip.clone(),
                    upload_port: h.upload_port,
                    r#type: if h.seed {
                        pb::HostType::Seed
                    } else {
                        pb::HostType::Normal
                    } as i32,
                    idc: h.idc.clone(),
                    location: h.location.clone(),
                    upload_slots: h.upload_slots,
                    tcp_pieces: h.tcp_pieces,
                    demand_pieces: h.demand_pieces,
                })
                .collect()
        })
    }

    /// Per host of `hosts`: seconds since it was last heard from, tasks and bytes it holds.
    pub fn host_statuses(&self, hosts: &[pb::Host]) -> Vec<pb::HostStatus> {
        let tasks = self.all_tasks();
        let mut held: HashMap<Arc<str>, (u32, u64)> = HashMap::new();
        for t in tasks {
            let t = t.lock().expect("task lock");
            for p in t.peers.values().filter(|p| !p.pieces.is_empty()) {
                let e = held.entry(p.host_id.clone()).or_default();
                e.0 += 1;
                e.1 += t.bytes_of(&p.pieces);
            }
        }
        let seen = self.hosts.read().expect("hosts lock");
        hosts
            .iter()
            .map(|h| {
                let (tasks, present_bytes) = held.get(h.id.as_str()).copied().unwrap_or_default();
                pb::HostStatus {
                    host_id: h.id.clone(),
                    seconds_since_seen: seen
                        .get(h.id.as_str())
                        .map_or(0, |i| i.last_seen.elapsed().as_secs() as u32),
                    tasks,
                    present_bytes,
                }
            })
            .collect()
    }

    /// Alive seed hosts.
    pub fn seed_hosts(&self) -> Vec<HostInfo> {
        self.hosts
            .read()
            .expect("hosts lock")
            .values()
            .filter(|h| h.seed)
            .cloned()
            .collect()
    }

    /// Runs `f` with the host table.
    pub fn with_hosts<R>(&self, f: impl FnOnce(&HashMap<Arc<str>, HostInfo>) -> R) -> R {
        f(&self.hosts.read().expect("hosts lock"))
    }

    /// Counts (hosts, tasks, peers).
    pub fn counts(&self) -> (usize, usize, usize) {
        let hosts = self.hosts.read().expect("hosts lock").len();
        let tasks = self.tasks.read().expect("tasks lock");
        let peers = tasks
            .values()
            .map(|t| t.lock().expect("task lock").peers.len())
            .sum();
        (hosts, tasks.len(), peers)
    }

    /// The task, if known.
    pub fn task(&self, id: &str) -> Option<Arc<Mutex<TaskState>>> {
        self.tasks.read().expect("tasks lock").get(id).cloned()
    }

    /// Every task, copied out of the table (so no table lock is held while each is locked).
    fn all_tasks(&self) -> Vec<Arc<Mutex<TaskState>>> {
        self.tasks
            .read()
            .expect("tasks lock")
            .values()
            .cloned()
            .collect()
    }

    /// Removes a host and its peers from every task.
    pub fn leave_host(&self, host: &str) {
        self.hosts.write().expect("hosts lock").remove(host);
        self.drop_peers_of(host);
    }

    /// Removes every peer of `host` from every task (the host stays); how many there were.
    pub fn drop_peers_of(&self, host: &str) -> usize {
        let mut dropped = 0;
        for t in self.all_tasks() {
            let mut t = t.lock().expect("task lock");
            let gone: Vec<Arc<str>> = t
                .peers
                .values()
                .filter(|p| &*p.host_id == host)
                .map(|p| p.id.clone())
                .collect();
            dropped += gone.len();
            for p in gone {
                t.remove_peer(&p);
            }
        }
        dropped
    }

    /// Registers a peer for a task (creating the task); returns (content_length, piece_length).
    pub fn register_peer(
        &self,
        host_id: &str,
        peer_id: &str,
        task: &pb::Task,
    ) -> Result<(u64, u32), StateError> {
        check_id("peer_id", peer_id)?;
        check_id("task.id", &task.id)?;
        check_len("task.url", &task.url, MAX_URL)?;
        check_headers(&task.origin_headers)?;
        if task.piece_length != 0
            && (!task.piece_length.is_power_of_two() || task.piece_length < 16 * 1024)
        {
            return Err(StateError::Invalid(format!(
                "task.piece_length {} must be a power of two of at least 16 KiB",
                task.piece_length
            )));
        }
        if !task.digest.is_empty() {
            check_digest("task.digest", &task.digest)?;
            if task.id.starts_with("sha256:") && task.digest != task.id {
                return Err(StateError::Invalid(format!(
                    "task.digest {} of a blob must be its ID {}",
                    task.digest, task.id
                )));
            }
        }
        if self.host(host_id).is_none() {
            return Err(StateError::UnknownHost(host_id.to_owned()));
        }
        let entry = {
            let mut tasks = self.tasks.write().expect("tasks lock");
            if !tasks.contains_key(task.id.as_str()) && tasks.len() >= self.limits.max_tasks {
                return Err(StateError::Full(format!(
                    "{} tasks are known (scheduling.max_tasks)",
                    tasks.len()
                )));
            }
            tasks
                .entry(Arc::from(task.id.as_str()))
                .or_insert_with(|| {
                    Arc::new(Mutex::new(TaskState {
                        id: Arc::from(task.id.as_str()),
                        content_length: task.content_length,
                        piece_length: task.piece_length,
                        url: task.url.clone(),
                        digest: task.digest.clone(),
                        origin_headers: HashMap::new(),
                        piece_digests: HashMap::new(),
                        peers: HashMap::new(),
                        holders: Vec::new(),
                        blocklist: HashSet::new(),
                        seed: SeedStatus::None,
                        last_seed_piece: None,
                        last_active: Instant::now(),
                    }))
                })
                .clone()
        };
        let mut t = entry.lock().expect("task lock");
        let (length, piece_length) = (
            if t.content_length == 0 {
                task.content_length
            } else {
                t.content_length
            },
            if t.piece_length == 0 {
                task.piece_length
            } else {
                t.piece_length
            },
        );
        if piece_length != 0 && length.div_ceil(u64::from(piece_length)) > MAX_PIECES {
            return Err(StateError::Invalid(format!(
                "task {} would have more than {MAX_PIECES} pieces of {piece_length} bytes",
                task.id
            )));
        }
        (t.content_length, t.piece_length) = (length, piece_length);
        if t.url.is_empty() {
            t.url = task.url.clone();
        }
        if t.digest.is_empty() {
            t.digest = task.digest.clone();
        }
        if !task.origin_headers.is_empty() {
            t.origin_headers = task.origin_headers.clone();
        }
        t.last_active = Instant::now();
        let id: Arc<str> = Arc::from(peer_id);
        if !t.peers.contains_key(&id) && t.peers.len() >= self.limits.max_peers_per_task {
            return Err(StateError::Full(format!(
                "task {} has {} peers (scheduling.max_peers_per_task)",
                task.id,
                t.peers.len()
            )));
        }
        t.peers.entry(id.clone()).or_insert_with(|| PeerState {
            id,
            host_id: Arc::from(host_id),
            pieces: PieceSet::default(),
            uploads_ok: 0,
            uploads_failed: 0,
            cost_ms: 0.0,
            back_to_source: false,
            avoid: HashSet::new(),
            waiting_since: None,
            created_at: SystemTime::now(),
            updated_at: SystemTime::now(),
        });
        Ok((t.content_length, t.piece_length))
    }

    /// Records a finished piece; `Ok(false)` when refused because its digest contradicts the
    /// recorded one.
    pub fn piece_finished(&self, r: &pb::PieceFinished) -> Result<bool, StateError> {
        let piece = r
            .piece
            .as_ref()
            .ok_or_else(|| StateError::Invalid("piece is required".into()))?;
        check_digest("piece digest", &piece.digest)?;
        let task = self
            .task(&r.task_id)
            .ok_or_else(|| StateError::UnknownTask(r.task_id.clone()))?;
        let mut t = task.lock().expect("task lock");
        let count = t.piece_count();
        if piece.number >= count {
            return Err(StateError::Invalid(format!(
                "piece {} is past the end of task {} ({count} pieces; a task's size and piece length come with RegisterPeer)",
                piece.number, r.task_id
            )));
        }
        if !t.peers.contains_key(r.peer_id.as_str()) {
            return Err(StateError::UnknownPeer(
                r.peer_id.clone(),
                r.task_id.clone(),
            ));
        }
        let reporter = &t.peers[r.peer_id.as_str()];
        // Only a peer that fetched the piece from the origin on the scheduler's word (or a
        // seed peer) says what its digest is; anyone else's hash is its own business.
        let origin_facing = r.parent_id.is_empty()
            && (reporter.back_to_source || self.host(&reporter.host_id).is_some_and(|h| h.seed));
        match t.piece_digests.get(&piece.number) {
            Some(d) if *d != piece.digest => {
                tracing::warn!(task = %r.task_id, peer = %r.peer_id, piece = piece.number, "piece report contradicts the recorded digest; refused");
                return Ok(false);
            }
            None if origin_facing => {
                t.piece_digests.insert(piece.number, piece.digest.clone());
            }
            None if r.parent_id.is_empty() => {
                tracing::debug!(task = %r.task_id, peer = %r.peer_id, piece = piece.number, "piece held by a peer not sent to the origin: holder recorded, digest not");
            }
            _ => {}
        }
        if !r.parent_id.is_empty() {
            if let Some(parent) = t.peers.get_mut(r.parent_id.as_str()) {
                parent.uploads_ok += 1;
                parent.cost_ms = if parent.cost_ms == 0.0 {
                    f64::from(r.cost_ms)
                } else {
                    0.8 * parent.cost_ms + 0.2 * f64::from(r.cost_ms)
                };
            }
        }
        t.last_active = Instant::now();
        let host = t.peers[r.peer_id.as_str()].host_id.clone();
        if self.host(&host).is_some_and(|h| h.seed) {
            t.last_seed_piece = Some(Instant::now());
        }
        let peer = t.peers.get_mut(r.peer_id.as_str()).expect("checked above");
        let first = peer.pieces.is_empty();
        peer.pieces.insert(piece.number);
        peer.waiting_since = None;
        peer.updated_at = SystemTime::now();
        if first {
            let id = peer.id.clone();
            t.holders.push(id);
        }
        Ok(true)
    }

    /// A child reports a parent: corrupt bytes blocklist it for the task (and forget its
    /// pieces); a failed transfer keeps it away from this child.
    pub fn bad_parent(&self, r: &pb::ReportBadParentRequest) -> Result<(), StateError> {
        let task = self
            .task(&r.task_id)
            .ok_or_else(|| StateError::UnknownTask(r.task_id.clone()))?;
        let mut t = task.lock().expect("task lock");
        let parent: Arc<str> = Arc::from(r.parent_id.as_str());
        // Only a parent the scheduler can have named is recorded (the sets stay bounded).
        let named = t.peers.contains_key(&parent)
            || r.parent_id
                .strip_prefix(crate::scheduling::HOST_PARENT_PREFIX)
                .is_some_and(|h| self.host(h).is_some());
        if !named {
            tracing::debug!(task = %r.task_id, parent = %r.parent_id, "report about a parent that is not (or no longer) on the task; nothing to record");
            return Ok(());
        }
        let reason: String = r.reason.chars().take(MAX_TEXT).collect();
        if r.corrupt {
            tracing::warn!(task = %r.task_id, parent = %r.parent_id, reporter = %r.peer_id, %reason, "parent served corrupt data; blocklisted for the task");
            t.blocklist.insert(parent.clone());
            if let Some(p) = t.peers.get_mut(&parent) {
                p.pieces.clear();
            }
            t.holders.retain(|h| *h != parent);
        }
        if let Some(p) = t.peers.get_mut(&parent) {
            p.uploads_failed += 1;
        }
        if r.unreachable {
            // An on-demand seed that had no peer of the task yet is named by its host.
            let parent_host = t.peers.get(&parent).map(|p| p.host_id.clone()).or_else(|| {
                r.parent_id
                    .strip_prefix(crate::scheduling::HOST_PARENT_PREFIX)
                    .map(Arc::from)
            });
            if let SeedStatus::Triggered { host, .. } = &t.seed {
                if parent_host.as_ref() == Some(host) {
                    tracing::warn!(task = %r.task_id, seed = %host, reporter = %r.peer_id, %reason, "the seed peer fetching the task is unreachable; peers stop waiting for it");
                    t.seed = SeedStatus::Failed { at: Instant::now() };
                }
            }
        }
        let child = t
            .peers
            .get_mut(r.peer_id.as_str())
            .ok_or_else(|| StateError::UnknownPeer(r.peer_id.clone(), r.task_id.clone()))?;
        child.avoid.insert(parent);
        Ok(())
    }

    /// The host peer `peer` of `task` belongs to, if both are known.
    pub fn peer_host(&self, task: &str, peer: &str) -> Option<Arc<str>> {
        let t = self.task(task)?;
        let t = t.lock().expect("task lock");
        t.peers.get(peer).map(|p| p.host_id.clone())
    }

    /// The peers of `task` as a get_task job shows them (`None`: the task is unknown).
    pub fn task_peers(&self, task: &str) -> Option<pb::GetTaskResponse> {
        let t = self.task(task)?;
        let t = t.lock().expect("task lock");
        let hosts = self.hosts.read().expect("hosts lock");
        let ms = |at: SystemTime| {
            at.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        };
        let mut peers: Vec<pb::TaskPeer> = t
            .peers
            .values()
            .map(|p| {
                let host = hosts.get(&p.host_id);
                pb::TaskPeer {
                    peer_id: p.id.to_string(),
                    host_id: p.host_id.to_string(),
                    hostname: host.map(|h| h.hostname.clone()).unwrap_or_default(),
                    ip: host.map(|h| h.ip.clone()).unwrap_or_default(),
                    host_type: if host.is_some_and(|h| h.seed) {
                        pb::HostType::Seed
                    } else {
                        pb::HostType::Normal
                    } as i32,
                    pieces: p.pieces.len(),
                    present_bytes: t.bytes_of(&p.pieces),
                    finished: t.is_complete(p),
                    created_at_ms: ms(p.created_at),
                    updated_at_ms: ms(p.updated_at),
                }
            })
            .collect();
        peers.sort_by(|a, b| a.host_id.cmp(&b.host_id).then(a.peer_id.cmp(&b.peer_id)));
        Some(pb::GetTaskResponse {
            known: true,
            content_length: t.content_length,
            piece_length: t.piece_length,
            peers,
        })
    }

    /// Forgets the peers of `task` on `hosts` (they deleted it); with none left, the task
    /// itself with its recorded piece digests and blocklist. True if the task is gone.
    pub fn forget_task_on(&self, task: &str, hosts: &HashSet<Arc<str>>) -> bool {
        let mut tasks = self.tasks.write().expect("tasks lock");
        let Some(t) = tasks.get(task).cloned() else {
            return true;
        };
        let mut t = t.lock().expect("task lock");
        let gone: Vec<Arc<str>> = t
            .peers
            .values()
            .filter(|p| hosts.contains(&p.host_id))
            .map(|p| p.id.clone())
            .collect();
        for p in gone {
            t.remove_peer(&p);
        }
        if t.peers.is_empty() {
            drop(t);
            tasks.remove(task);
            return true;
        }
        false
    }

    /// Removes a peer from a task.
    pub fn leave_peer(&self, task: &str, peer: &str) {
        if let Some(t) = self.task(task) {
            t.lock().expect("task lock").remove_peer(peer);
        }
    }

    /// Expires hosts silent for `host_ttl` (with their peers) and idle empty tasks.
    pub fn expire(&self, host_ttl: Duration, task_ttl: Duration) -> (usize, usize) {
        let dead: Vec<Arc<str>> = self
            .hosts
            .read()
            .expect("hosts lock")
            .values()
            .filter(|h| h.last_seen.elapsed() > host_ttl)
            .map(|h| h.id.clone())
            .collect();
        for h in &dead {
            tracing::info!(host = %h, "host expired (no keepalive)");
            self.leave_host(h);
        }
        let mut tasks = self.tasks.write().expect("tasks lock");
        let before = tasks.len();
        tasks.retain(|_, t| {
            let t = t.lock().expect("task lock");
            !(t.peers.is_empty() && t.last_active.elapsed() > task_ttl)
        });
        (dead.len(), before - tasks.len())
    }
}
