//! Reaching a job's clusters: which clusters it targets, the active schedulers of one (the
//! caller tries them in turn until one answers), and a client of one, dialled with the
//! manager's credentials (mutual TLS) or plain.

use std::time::Duration;

use dragonfly_membership::client::Dialer;
use dragonfly_membership::Role;
use dragonfly_proto::scheduler::scheduler_client::SchedulerClient;
use dragonfly_runtime::grpc::{endpoint, Timeouts};
use tonic::transport::Channel;

use crate::store::clusters::Cluster;
use crate::store::hosts::{Kind, Member};
use crate::store::Db;

/// The clusters `ids` names (all when empty); an error for the log when there are none.
pub async fn target_clusters(db: &Db, ids: &[i64]) -> Result<Vec<Cluster>, String> {
    let clusters: Vec<Cluster> = db
        .clusters()
        .await
        .map_err(|e| format!("cannot list clusters: {e}"))?
        .into_iter()
        .filter(|c| ids.is_empty() || ids.contains(&c.id))
        .collect();
    if clusters.is_empty() {
        return Err("no scheduler cluster to work in; create one or register a scheduler".into());
    }
    Ok(clusters)
}

/// The active schedulers of `cluster`; an error for the log when there are none.
pub async fn active(db: &Db, cluster: &Cluster) -> Result<Vec<Member>, String> {
    let schedulers = db
        .members(Kind::Scheduler, Some(cluster.id), true)
        .await
        .map_err(|e| format!("cluster {}: {e}", cluster.name))?;
    if schedulers.is_empty() {
        return Err(format!("cluster {} has no active scheduler", cluster.name));
    }
    Ok(schedulers)
}

/// `s`'s address as dialled and logged.
pub fn address(s: &Member) -> String {
    format!("{}:{}", s.ip, s.port)
}

/// A client of scheduler `s` whose calls may take `request`.
pub async fn connect(
    dialer: &Dialer,
    s: &Member,
    request: Duration,
) -> Result<SchedulerClient<Channel>, String> {
    let addr = address(s);
    let timeouts = Timeouts {
        request,
        ..Timeouts::CONTROL
    };
    let ch = endpoint(&addr, timeouts).map_err(|e| e.to_string())?;
    let ch = dialer
        .connect_channel(ch, &[Role::Scheduler])
        .await
        .map_err(|e| format!("cannot connect to scheduler {addr}: {e}"))?;
    Ok(SchedulerClient::new(ch))
}
