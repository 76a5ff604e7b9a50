//! The schedulers this host uses: announcing the host to each, keeping alive, and picking the
//! scheduler responsible for a task by rendezvous hashing of the task ID (so every peer of a
//! task meets on the same scheduler, and state partitions without shared storage). A scheduler
//! that fails is skipped for a while; with none left, reads go to the origin. The list is
//! static (`p2p.schedulers`) or replaced at run time from the manager (see `dynconfig`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use dragonfly_membership::client::Dialer;
use dragonfly_membership::Role;
use dragonfly_proto::scheduler as pb;
use dragonfly_proto::scheduler::scheduler_client::SchedulerClient;
use dragonfly_runtime::grpc::{member_channel, BadAddress, Timeouts};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::membership::Membership;
use super::PeerSource;
use crate::config::P2pConfig;

/// How long a failed scheduler is skipped.
const DOWN_FOR: Duration = Duration::from_secs(5);

/// One scheduler of the pool.
pub struct Member {
    addr: String,
    client: SchedulerClient<Channel>,
    down_until: Mutex<Option<Instant>>,
    /// This host is announced to it.
    announced: AtomicBool,
    /// It was announced to at least once (a later re-announce means it forgot us).
    ever: AtomicBool,
    /// Held across an announcement: the first one of the daemon's life (a fresh start, which
    /// drops the peers the scheduler kept from the old process) ends before any peer
    /// registers with this scheduler.
    announcing: tokio::sync::Mutex<()>,
}

/// A handle on the scheduler a call went to, for reporting it down.
pub type SchedulerRef = Arc<Member>;

/// The P2P engine cannot be set up, or a scheduler refused this host.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A scheduler address does not parse.
    #[error("{what}: {source}")]
    BadAddress {
        /// Which setting or list it came from.
        what: &'static str,
        /// Why.
        #[source]
        source: BadAddress,
    },
    /// Neither schedulers nor a manager are configured.
    #[error("p2p.schedulers and p2p.manager are both empty")]
    NothingToAsk,
    /// `p2p.host_id` is not the ID the certificate gives this host.
    #[error("p2p.host_id {0} is not {1}, the ID this host's certificate names; leave host_id out")]
    HostId(String, String),
    /// No local address reaches the scheduler or manager.
    #[error("cannot tell which local address reaches {0}; set p2p.advertise_ip")]
    NoRoute(String),
    /// A scheduler did not take the announcement.
    #[error("announcing to scheduler {addr}: {}", .source.message())]
    Announce {
        /// The scheduler.
        addr: String,
        /// Its answer.
        #[source]
        source: tonic::Status,
    },
}

fn member(addr: &str, what: &'static str, dialer: &Dialer) -> Result<Arc<Member>, PoolError> {
    let channel = member_channel(addr, Timeouts::CONTROL, dialer, &[Role::Scheduler])
        .map_err(|source| PoolError::BadAddress { what, source })?;
    Ok(Arc::new(Member {
        addr: addr.to_owned(),
        client: SchedulerClient::new(channel),
        down_until: Mutex::new(None),
        announced: AtomicBool::new(false),
        ever: AtomicBool::new(false),
        announcing: tokio::sync::Mutex::new(()),
    }))
}

/// The schedulers of this host.
pub struct SchedulerPool {
    members: RwLock<Vec<Arc<Member>>>,
    host: pb::Host,
    /// How schedulers (and parents, and the manager) are dialled.
    dialer: Dialer,
    /// Piece uploads running now (reported in keepalives).
    pub active_uploads: Arc<AtomicU32>,
    /// Blob sources to register again when a scheduler forgets this host.
    sources: Mutex<Vec<Weak<PeerSource>>>,
    /// Some scheduler took this host's announcement since the daemon started.
    announced_once: AtomicBool,
    /// Re-announcements of held pieces running at once (each reads and hashes its blob).
    pub(super) rehash: Arc<tokio::sync::Semaphore>,
}

/// Blobs read and hashed at once to announce the pieces they hold.
const REHASH_AT_ONCE: usize = 2;
/// Registrations sent at once when every blob registers again.
const REGISTER_AT_ONCE: usize = 16;

/// Where this host's traffic goes first: the first scheduler, or the manager.
pub fn towards(config: &P2pConfig) -> Result<String, PoolError> {
    match (config.schedulers.first(), config.manager.is_empty()) {
        (Some(s), _) => Ok(s.clone()),
        (None, false) => Ok(config.manager.clone()),
        (None, true) => Err(PoolError::NothingToAsk),
    }
}

/// The address this host announces: `p2p.advertise_ip`, or the one that routes `towards`.
pub async fn advertised_ip(config: &P2pConfig, towards: &str) -> Result<IpAddr, PoolError> {
    match config.advertise_ip {
        Some(ip) => Ok(ip),
        None => dragonfly_runtime::registration::local_ip_towards(towards)
            .await
            .ok_or_else(|| PoolError::NoRoute(towards.to_owned())),
    }
}

fn hostname() -> String {
    dragonfly_runtime::registration::hostname("localhost")
}

/// The host ID without a certificate naming one: `p2p.host_id`, or `<ip>-<hostname>`
/// (`-seed` for a seed peer).
pub fn default_host_id(config: &P2pConfig, ip: IpAddr, seed: bool) -> String {
    config
        .host_id
        .clone()
        .unwrap_or_else(|| format!("{ip}-{}{}", hostname(), if seed { "-seed" } else { "" }))
}

impl SchedulerPool {
    /// A pool for `config.schedulers`, announcing this host with the peer service on
    /// `upload_port`, as `membership` makes it (its certificate's ID is the host ID).
    pub async fn new(
        config: &P2pConfig,
        upload_port: u16,
        seed: bool,
        membership: &Membership,
    ) -> Result<Arc<SchedulerPool>, PoolError> {
        let dialer = &membership.dialer;
        let towards = towards(config)?;
        let members = config
            .schedulers
            .iter()
            .map(|a| member(a, "p2p.schedulers", dialer))
            .collect::<Result<Vec<_>, _>>()?;
        let ip = advertised_ip(config, &towards).await?;
        let hostname = hostname();
        let id = match (&membership.identity, &config.host_id) {
            (Some(me), Some(id)) if *id != me.id => {
                return Err(PoolError::HostId(id.clone(), me.id.clone()))
            }
            (Some(me), _) => me.id.clone(),
            (None, _) => default_host_id(config, ip, seed),
        };
        let host = pb::Host {
            id,
            hostname,
            ip: ip.to_string(),
            upload_port: u32::from(upload_port),
            r#type: if seed {
                pb::HostType::Seed
            } else {
                pb::HostType::Normal
            } as i32,
            idc: config.idc.clone(),
            location: config.location.clone(),
            upload_slots: config.upload_slots,
            tcp_pieces: true,
            demand_pieces: true,
        };
        Ok(Arc::new(SchedulerPool {
            members: RwLock::new(members),
            host,
            dialer: dialer.clone(),
            active_uploads: Arc::new(AtomicU32::new(0)),
            sources: Mutex::new(Vec::new()),
            announced_once: AtomicBool::new(false),
            rehash: Arc::new(tokio::sync::Semaphore::new(REHASH_AT_ONCE)),
        }))
    }

    /// Remembers a blob source so it registers again (and re-announces its pieces) after a
    /// scheduler forgot this host.
    pub fn track(&self, source: &Arc<PeerSource>) {
        let mut sources = self.sources.lock().expect("sources lock");
        // Dropped sources are pruned each time the list reaches a power of two: amortised
        // constant work per source, even for thousands of blobs offered after a restart.
        if sources.len().is_power_of_two() {
            sources.retain(|s| s.strong_count() > 0);
        }
        sources.push(Arc::downgrade(source));
    }

    fn reregister_all(&self) {
        let live: Vec<Arc<PeerSource>> = self
            .sources
            .lock()
            .expect("sources lock")
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        if live.is_empty() {
            return;
        }
        tracing::info!(
            sources = live.len(),
            "registering blobs again with the scheduler"
        );
        for s in &live {
            s.forget_registration();
        }
        // A daemon holding thousands of blobs does not ask the scheduler thousands of times
        // at once.
        tokio::spawn(futures::stream::iter(live).for_each_concurrent(
            REGISTER_AT_ONCE,
            |s| async move {
                s.registered().await;
            },
        ));
    }

    /// The content length and piece length the task's scheduler knows for `task`, if any.
    pub async fn stat_task(&self, task: &str) -> Option<(u64, u32)> {
        let (i, mut c) = self.for_task(task)?;
        match c
            .stat_task(pb::StatTaskRequest {
                task_id: task.to_owned(),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                (r.known && r.content_length > 0).then_some((r.content_length, r.piece_length))
            }
            Err(e) => {
                self.mark_down(&i, e.message());
                None
            }
        }
    }

    /// How members are dialled.
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// This host's ID.
    pub fn host_id(&self) -> &str {
        &self.host.id
    }

    /// This host as announced.
    pub fn host(&self) -> &pb::Host {
        &self.host
    }

    /// Replaces the scheduler list (from the manager); schedulers kept keep their state.
    /// Returns whether it changed. Blobs register again, since tasks may move.
    pub fn set_schedulers(&self, addrs: &[String]) -> Result<bool, PoolError> {
        let mut members = self.members.write().expect("members lock");
        let mut wanted: Vec<String> = addrs.to_vec();
        wanted.sort();
        wanted.dedup();
        let mut current: Vec<String> = members.iter().map(|m| m.addr.clone()).collect();
        current.sort();
        if current == wanted {
            return Ok(false);
        }
        let next = wanted
            .iter()
            .map(|a| match members.iter().find(|m| &m.addr == a) {
                Some(m) => Ok(m.clone()),
                None => member(a, "the manager's scheduler list", &self.dialer),
            })
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(schedulers = ?wanted, "scheduler list changed");
        *members = next;
        drop(members);
        self.reregister_all();
        Ok(true)
    }

    /// The schedulers now.
    pub fn schedulers(&self) -> Vec<String> {
        let members = self.members.read().expect("members lock");
        members.iter().map(|m| m.addr.clone()).collect()
    }

    /// The scheduler for `task`, skipping ones that failed recently; `None` if all are down.
    pub fn for_task(&self, task: &str) -> Option<(SchedulerRef, SchedulerClient<Channel>)> {
        let now = Instant::now();
        let members = self.members.read().expect("members lock");
        members
            .iter()
            .filter(|m| {
                m.down_until
                    .lock()
                    .expect("down lock")
                    .is_none_or(|t| t <= now)
            })
            .max_by_key(|m| {
                let d = Sha256::new()
                    .chain_update(task.as_bytes())
                    .chain_update([0])
                    .chain_update(m.addr.as_bytes())
                    .finalize();
                u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
            })
            .map(|m| (m.clone(), m.client.clone()))
    }

    /// Marks scheduler `m` as failed for a while.
    pub fn mark_down(&self, m: &SchedulerRef, error: &str) {
        let mut d = m.down_until.lock().expect("down lock");
        if d.is_none_or(|t| t <= Instant::now()) {
            tracing::warn!(scheduler = %m.addr, error, "scheduler unavailable; using others or the origin for {}s", DOWN_FOR.as_secs());
        }
        *d = Some(Instant::now() + DOWN_FOR);
    }

    /// Announces this host to scheduler `m` now (e.g. when it says it does not know us).
    pub async fn announce_to(&self, m: &SchedulerRef) -> Result<u32, PoolError> {
        let _one = m.announcing.lock().await;
        self.announce(m, false).await
    }

    /// Before a peer registers with `m`: this daemon's first announcement to it is done (see
    /// [`Member::announcing`]).
    pub async fn ensure_announced(&self, m: &SchedulerRef) -> Result<(), PoolError> {
        if m.ever.load(Ordering::Acquire) {
            return Ok(());
        }
        self.announce_and_resync(m).await.map(|_| ())
    }

    /// Announces to `m` (a fresh start the first time in this daemon's life) and, when the
    /// scheduler had lost this host or this daemon just started, registers every blob again.
    /// `None` when another caller announced while this one waited: callers that queue up
    /// behind the first announcement do not repeat it (nor the re-registration of every blob).
    async fn announce_and_resync(&self, m: &Member) -> Result<Option<u32>, PoolError> {
        let _one = m.announcing.lock().await;
        if m.announced.load(Ordering::Acquire) {
            return Ok(None);
        }
        let fresh = !m.ever.load(Ordering::Acquire);
        let secs = self.announce(m, fresh).await?;
        m.announced.store(true, Ordering::Release);
        let forgot = m.ever.swap(true, Ordering::AcqRel);
        let first = !self.announced_once.swap(true, Ordering::Relaxed);
        if forgot || first {
            // The scheduler lost this host (restart or expiry), or this daemon just started
            // with blobs from before its restart.
            self.reregister_all();
        }
        *m.down_until.lock().expect("down lock") = None;
        tracing::info!(scheduler = %m.addr, host = %self.host.id, fresh, "announced to scheduler");
        Ok(Some(secs))
    }

    async fn announce(&self, m: &Member, fresh_start: bool) -> Result<u32, PoolError> {
        let r = m
            .client
            .clone()
            .announce_host(pb::AnnounceHostRequest {
                protocol: pb::PROTOCOL,
                host: Some(self.host.clone()),
                fresh_start,
            })
            .await
            .map_err(|source| PoolError::Announce {
                addr: m.addr.clone(),
                source,
            })?;
        Ok(r.into_inner().keepalive_interval_secs.max(1))
    }

    /// Announces the host to every scheduler and keeps it alive (re-announcing to schedulers
    /// that forgot it, e.g. after their restart). Runs until aborted.
    pub async fn keepalive_loop(self: Arc<Self>) {
        let mut interval = Duration::from_secs(5);
        loop {
            let members: Vec<Arc<Member>> = self.members.read().expect("members lock").clone();
            for m in &members {
                if !m.announced.load(Ordering::Relaxed) {
                    match self.announce_and_resync(m).await {
                        Ok(Some(secs)) => interval = Duration::from_secs(u64::from(secs)),
                        Ok(None) => {}
                        Err(e) => self.mark_down(m, &e.to_string()),
                    }
                    continue;
                }
                let req = pb::KeepAliveRequest {
                    host_id: self.host.id.clone(),
                    active_uploads: self.active_uploads.load(Ordering::Relaxed),
                };
                match m.client.clone().keep_alive(req).await {
                    Ok(r) if r.get_ref().known => {}
                    Ok(_) => m.announced.store(false, Ordering::Relaxed),
                    Err(e) => {
                        m.announced.store(false, Ordering::Relaxed);
                        self.mark_down(m, e.message());
                    }
                }
            }
            let retry_soon =
                members.is_empty() || members.iter().any(|m| !m.announced.load(Ordering::Relaxed));
            tokio::time::sleep(if retry_soon {
                Duration::from_secs(1).min(interval)
            } else {
                interval
            })
            .await;
        }
    }
}
