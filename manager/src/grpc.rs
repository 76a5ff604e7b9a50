//! The gRPC `dragonfly.manager.v1.Manager` service: schedulers and seed peers register and
//! keep alive (rows turn inactive after three silent intervals), peers ask which schedulers
//! serve them.

use std::sync::Arc;
use std::time::Duration;

use dragonfly_membership::server::{require, ConnPeer};
use dragonfly_membership::Role;
use dragonfly_proto::manager as pb;
use dragonfly_proto::manager::manager_server::Manager;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::scopes::{pick, PeerInfo};
use crate::store::hosts::{Kind, Member, Registration};
use crate::store::{Db, StoreError};

/// The service.
pub struct ManagerService {
    db: Db,
    interval_secs: u32,
}

impl ManagerService {
    /// A service over `db` asking for keepalives every `interval_secs`.
    pub fn new(db: Db, interval_secs: u32) -> ManagerService {
        ManagerService {
            db,
            interval_secs: interval_secs.max(1),
        }
    }
}

fn status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::Conflict(m) => Status::already_exists(m),
        e => Status::unavailable(e.to_string()),
    }
}

fn scheduler(m: Member) -> pb::Scheduler {
    pb::Scheduler {
        id: m.id as u64,
        hostname: m.hostname,
        ip: m.ip,
        port: m.port as u32,
        idc: m.idc,
        location: m.location,
        state: m.state,
        scheduler_cluster_id: m.scheduler_cluster_id as u64,
    }
}

fn seed_peer(m: Member) -> pb::SeedPeer {
    pb::SeedPeer {
        id: m.id as u64,
        hostname: m.hostname,
        ip: m.ip,
        port: m.port as u32,
        idc: m.idc,
        location: m.location,
        state: m.state,
        scheduler_cluster_id: m.scheduler_cluster_id as u64,
    }
}

/// What a scheduler or seed peer said about itself (its cluster is resolved later).
fn registration(
    hostname: String,
    ip: String,
    port: u32,
    idc: String,
    location: String,
) -> Registration {
    Registration {
        hostname,
        ip,
        port: i64::from(port),
        idc,
        location,
        scheduler_cluster_id: 0,
    }
}

/// Over TLS, a member registers or keeps alive only an address its certificate names (so a
/// member cannot point the cluster at someone else's host).
fn check_bound<T>(req: &Request<T>, ip: &str) -> Result<(), Status> {
    let Some(peer) = req.extensions().get::<ConnPeer>().filter(|p| p.tls) else {
        return Ok(());
    };
    let named = ip.parse::<std::net::IpAddr>().is_ok_and(|ip| {
        peer.cert_ips
            .iter()
            .any(|c| c.to_canonical() == ip.to_canonical())
    });
    if named {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{ip} is not an address this member's certificate names ({:?}); register the address it was issued for",
        peer.cert_ips
    )))
}

fn check_addr(ip: &str, port: u32) -> Result<(), Status> {
    if ip.parse::<std::net::IpAddr>().is_err() {
        return Err(Status::invalid_argument(format!(
            "ip {ip:?} is not an IP address"
        )));
    }
    if port == 0 || port > 65535 {
        return Err(Status::invalid_argument(format!(
            "port {port} is not 1..=65535"
        )));
    }
    Ok(())
}

impl ManagerService {
    async fn cluster_for(&self, id: u64) -> Result<i64, Status> {
        if id == 0 {
            return Ok(self.db.default_cluster().await.map_err(status)?.id);
        }
        let id = i64::try_from(id).map_err(|_| Status::invalid_argument("bad cluster id"))?;
        self.db.cluster(id).await.map_err(|e| match e {
            StoreError::NotFound(_) => Status::not_found(format!(
                "scheduler cluster {id} does not exist; create it first"
            )),
            e => status(e),
        })?;
        Ok(id)
    }

    /// Registers `r` in cluster `cluster` (0 = the default cluster).
    async fn register(
        &self,
        kind: Kind,
        mut r: Registration,
        cluster: u64,
    ) -> Result<Member, Status> {
        check_addr(&r.ip, u32::try_from(r.port).unwrap_or(0))?;
        r.scheduler_cluster_id = self.cluster_for(cluster).await?;
        let m = self.db.register(kind, &r).await.map_err(status)?;
        tracing::info!(?kind, ip = %m.ip, port = m.port, cluster = m.scheduler_cluster_id, "registered");
        Ok(m)
    }
}

#[tonic::async_trait]
impl Manager for ManagerService {
    async fn update_scheduler(
        &self,
        req: Request<pb::UpdateSchedulerRequest>,
    ) -> Result<Response<pb::Scheduler>, Status> {
        require(&req, "UpdateScheduler", &[Role::Scheduler])?;
        check_bound(&req, &req.get_ref().ip)?;
        let r = req.into_inner();
        let reg = registration(r.hostname, r.ip, r.port, r.idc, r.location);
        let m = self
            .register(Kind::Scheduler, reg, r.scheduler_cluster_id)
            .await?;
        Ok(Response::new(scheduler(m)))
    }

    async fn update_seed_peer(
        &self,
        req: Request<pb::UpdateSeedPeerRequest>,
    ) -> Result<Response<pb::SeedPeer>, Status> {
        require(&req, "UpdateSeedPeer", &[Role::Seed])?;
        check_bound(&req, &req.get_ref().ip)?;
        let r = req.into_inner();
        let reg = registration(r.hostname, r.ip, r.port, r.idc, r.location);
        let m = self
            .register(Kind::SeedPeer, reg, r.scheduler_cluster_id)
            .await?;
        Ok(Response::new(seed_peer(m)))
    }

    async fn keep_alive(
        &self,
        req: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        let who = require(&req, "KeepAlive", &[Role::Scheduler, Role::Seed])?;
        check_bound(&req, &req.get_ref().ip)?;
        let r = req.into_inner();
        check_addr(&r.ip, r.port)?;
        let kind = match pb::SourceType::try_from(r.source_type) {
            Ok(pb::SourceType::Scheduler) => Kind::Scheduler,
            Ok(pb::SourceType::SeedPeer) => Kind::SeedPeer,
            Err(_) => return Err(Status::invalid_argument("unknown source_type")),
        };
        let role = if kind == Kind::Scheduler {
            Role::Scheduler
        } else {
            Role::Seed
        };
        if who.is_some_and(|id| id.role != role) {
            return Err(Status::permission_denied(
                "a member keeps alive only what its certificate makes it",
            ));
        }
        if !self
            .db
            .keepalive(kind, &r.ip, i64::from(r.port))
            .await
            .map_err(status)?
        {
            return Err(Status::not_found(format!(
                "{}:{} is not registered; register again",
                r.ip, r.port
            )));
        }
        Ok(Response::new(pb::KeepAliveResponse {
            interval_secs: self.interval_secs,
        }))
    }

    async fn list_schedulers(
        &self,
        req: Request<pb::ListSchedulersRequest>,
    ) -> Result<Response<pb::ListSchedulersResponse>, Status> {
        require(&req, "ListSchedulers", &[Role::Peer, Role::Seed])?;
        let r = req.into_inner();
        let clusters = self.db.clusters().await.map_err(status)?;
        let peer = PeerInfo {
            hostname: r.hostname,
            ip: r.ip,
            idc: r.idc,
            location: r.location,
        };
        let Some(cluster) = pick(&clusters, &peer) else {
            return Ok(Response::new(pb::ListSchedulersResponse::default()));
        };
        let schedulers = self
            .db
            .members(Kind::Scheduler, Some(cluster.id), true)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListSchedulersResponse {
            schedulers: schedulers.into_iter().map(scheduler).collect(),
            scheduler_cluster_id: cluster.id as u64,
        }))
    }

    async fn resolve_image_tag(
        &self,
        req: Request<pb::ResolveImageTagRequest>,
    ) -> Result<Response<pb::ResolveImageTagResponse>, Status> {
        require(&req, "ResolveImageTag", &[Role::Peer, Role::Seed])?;
        let r = req.into_inner();
        if r.registry.is_empty() || r.repository.is_empty() || r.tag.is_empty() {
            return Err(Status::invalid_argument(
                "registry, repository and tag are all required",
            ));
        }
        let (tag, preheated_at) = self
            .db
            .image_tag(&r.registry, &r.repository, &r.tag)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ResolveImageTagResponse {
            digest: tag.digest,
            media_type: tag.media_type,
            preheated_at,
        }))
    }
}

/// Marks members silent for three intervals inactive, and exports the counts, forever.
pub async fn expire_loop(db: Db, interval_secs: u32, metrics: Arc<Metrics>) {
    let interval = Duration::from_secs(u64::from(interval_secs.max(1)));
    loop {
        tokio::time::sleep(interval).await;
        for kind in [Kind::Scheduler, Kind::SeedPeer] {
            match db.expire_members(kind, interval * 3).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    ?kind,
                    count = n,
                    "marked inactive: no keepalive for 3 intervals"
                ),
                Err(e) => tracing::error!(error = %e, "cannot expire members"),
            }
            if let Ok(all) = db.members(kind, None, false).await {
                let name = if kind == Kind::Scheduler {
                    "scheduler"
                } else {
                    "seed_peer"
                };
                for state in ["active", "inactive"] {
                    metrics
                        .members
                        .with_label_values(&[name, state])
                        .set(all.iter().filter(|m| m.state == state).count() as i64);
                }
            }
        }
    }
}
