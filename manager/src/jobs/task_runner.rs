//! get_task and delete_task jobs over each target cluster's active schedulers: get_task asks
//! all of them (a task's peers are on the scheduler its ID hashes to) and merges the peers;
//! delete_task asks them in turn until one answers (every host is announced to each). A get_task
//! succeeds when every cluster answered (holding peers or none); a delete_task when every
//! cluster answered and no host kept the task (in use there) or failed to answer. Results keep
//! Dragonfly's shapes: `peers` per cluster for get_task, `success_tasks` / `failure_tasks`
//! per host for delete_task.

use std::time::Duration;

use dragonfly_membership::client::Dialer;
use dragonfly_proto::scheduler as pb;
use tokio::sync::Mutex;

use super::args::JobKind;
use super::model::{ClusterOutcome, HostTask, TaskPeer};
use super::progress::Progress;
use super::schedulers;
use super::task_args::TaskQuery;
use crate::store::clusters::Cluster;
use crate::store::Db;

/// Dragonfly's name of a host type.
pub fn host_type_name(t: i32) -> &'static str {
    if t == pb::HostType::Seed as i32 {
        "super"
    } else {
        "normal"
    }
}

/// Unix milliseconds as RFC 3339 (empty when unknown).
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .filter(|_| ms > 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A scheduler's record of a peer, as a get_task result shows it.
pub fn task_peer(p: &pb::TaskPeer) -> TaskPeer {
    TaskPeer {
        id: p.peer_id.clone(),
        host_id: p.host_id.clone(),
        hostname: p.hostname.clone(),
        ip: p.ip.clone(),
        host_type: host_type_name(p.host_type).to_owned(),
        pieces: p.pieces,
        present_bytes: p.present_bytes,
        finished: p.finished,
        created_at: rfc3339(p.created_at_ms),
        updated_at: rfc3339(p.updated_at_ms),
    }
}

/// What a task job works with.
pub struct TaskJob<'a> {
    /// Where clusters and schedulers are recorded.
    pub db: &'a Db,
    /// How schedulers are dialled.
    pub dialer: &'a Dialer,
}

/// The answer of one scheduler.
enum Answer {
    Got(pb::GetTaskResponse),
    Deleted(pb::DeleteTaskResponse),
}

impl TaskJob<'_> {
    /// Runs `kind` for `q` over `cluster_ids` (all when empty); true on success.
    pub async fn run(
        &self,
        kind: JobKind,
        q: &TaskQuery,
        cluster_ids: &[i64],
        progress: &Mutex<Progress>,
    ) -> bool {
        let clusters = match schedulers::target_clusters(self.db, cluster_ids).await {
            Ok(c) => c,
            Err(e) => {
                progress.lock().await.line(e);
                return false;
            }
        };
        progress.lock().await.line(format!(
            "{} {} in {} cluster(s)",
            kind.as_str(),
            q.task_id,
            clusters.len()
        ));
        let outcomes = futures::future::join_all(
            clusters
                .iter()
                .map(|c| self.on_cluster(kind, q, c, progress)),
        )
        .await;
        let mut p = progress.lock().await;
        let mut all_ok = true;
        for o in outcomes {
            all_ok &= o.state == super::model::JobState::Success;
            p.result.job_states.push(o);
        }
        all_ok
    }

    /// delete_task: the cluster's schedulers in turn until one answers (every host announces
    /// itself to each of them). get_task: every scheduler, the peers merged — a task's peers
    /// register with the one its ID hashes to.
    async fn on_cluster(
        &self,
        kind: JobKind,
        q: &TaskQuery,
        cluster: &Cluster,
        progress: &Mutex<Progress>,
    ) -> ClusterOutcome {
        let members = match schedulers::active(self.db, cluster).await {
            Ok(m) => m,
            Err(e) => {
                progress.lock().await.line(&e);
                return ClusterOutcome::failed(cluster.id, e);
            }
        };
        let mut last_error = String::new();
        let mut found: Option<pb::GetTaskResponse> = None;
        for s in &members {
            match self.ask(kind, q, s).await {
                Ok(Answer::Got(r)) => found = Some(merge(found.take(), r)),
                Ok(answer) => return log_outcome(cluster, q, answer, progress).await,
                Err(e) => {
                    progress.lock().await.line(&e);
                    last_error = e;
                }
            }
        }
        match found {
            Some(r) => log_outcome(cluster, q, Answer::Got(r), progress).await,
            None => ClusterOutcome::failed(cluster.id, last_error),
        }
    }

    async fn ask(
        &self,
        kind: JobKind,
        q: &TaskQuery,
        s: &crate::store::hosts::Member,
    ) -> Result<Answer, String> {
        let addr = schedulers::address(s);
        let request = Duration::from_secs(q.timeout_secs + 10);
        let mut c = schedulers::connect(self.dialer, s, request).await?;
        let failed = |e: tonic::Status| format!("scheduler {addr}: {}", e.message());
        match kind {
            JobKind::DeleteTask => c
                .delete_task(pb::DeleteTaskRequest {
                    task_id: q.task_id.clone(),
                    timeout_secs: q.timeout_secs.min(u64::from(u32::MAX)) as u32,
                    concurrent_peer_count: q.concurrent_peer_count.unwrap_or(0),
                })
                .await
                .map(|r| Answer::Deleted(r.into_inner()))
                .map_err(failed),
            _ => c
                .get_task(pb::GetTaskRequest {
                    task_id: q.task_id.clone(),
                })
                .await
                .map(|r| Answer::Got(r.into_inner()))
                .map_err(failed),
        }
    }
}

/// Two schedulers' records of one task as one (each peer once).
pub fn merge(a: Option<pb::GetTaskResponse>, b: pb::GetTaskResponse) -> pb::GetTaskResponse {
    let Some(mut a) = a else { return b };
    a.known |= b.known;
    a.content_length = a.content_length.max(b.content_length);
    a.piece_length = a.piece_length.max(b.piece_length);
    for p in b.peers {
        if !a.peers.iter().any(|x| x.peer_id == p.peer_id) {
            a.peers.push(p);
        }
    }
    a
}

/// One host's part of a delete_task.
fn deleted_host(task_id: &str, r: &pb::DeleteTaskResult) -> HostTask {
    HostTask {
        task_id: task_id.to_owned(),
        url: String::new(),
        hostname: r.hostname.clone(),
        ip: r.ip.clone(),
        host_type: host_type_name(r.host_type).to_owned(),
        freed_bytes: r.freed_bytes,
        description: crate::redact::text(&r.description).into_owned(),
    }
}

/// The cluster's outcome from its scheduler's answer, logged.
async fn log_outcome(
    cluster: &Cluster,
    q: &TaskQuery,
    answer: Answer,
    progress: &Mutex<Progress>,
) -> ClusterOutcome {
    let mut p = progress.lock().await;
    let name = &cluster.name;
    match answer {
        Answer::Got(r) => {
            let peers: Vec<TaskPeer> = r.peers.iter().map(task_peer).collect();
            let finished = peers.iter().filter(|x| x.finished).count();
            p.line(format!(
                "cluster {name}: {} peer(s) hold pieces of the task, {finished} all of it",
                peers.len()
            ));
            ClusterOutcome {
                peers: Some(peers),
                ..ClusterOutcome::answered(cluster.id, true)
            }
        }
        Answer::Deleted(r) => {
            let (ok, failed): (Vec<_>, Vec<_>) = r.results.iter().partition(|x| x.ok);
            p.line(format!(
                "cluster {name}: {} host(s) asked, {} deleted it, {} kept it or did not answer",
                r.hosts_asked,
                ok.len(),
                failed.len()
            ));
            for f in &failed {
                p.line(format!("  {} ({}): {}", f.hostname, f.ip, f.description));
            }
            ClusterOutcome {
                success_tasks: ok.iter().map(|x| deleted_host(&q.task_id, x)).collect(),
                failure_tasks: failed.iter().map(|x| deleted_host(&q.task_id, x)).collect(),
                ..ClusterOutcome::answered(cluster.id, failed.is_empty())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_records_of_several_schedulers_merge_each_peer_once() {
        let peer = |id: &str| pb::TaskPeer {
            peer_id: id.into(),
            host_type: pb::HostType::Seed as i32,
            created_at_ms: 1_700_000_000_000,
            ..Default::default()
        };
        let a = pb::GetTaskResponse {
            known: false,
            ..Default::default()
        };
        let b = pb::GetTaskResponse {
            known: true,
            content_length: 10,
            piece_length: 4,
            peers: vec![peer("p1"), peer("p2")],
        };
        let c = pb::GetTaskResponse {
            known: true,
            peers: vec![peer("p2"), peer("p3")],
            ..Default::default()
        };
        let m = merge(Some(merge(Some(a), b)), c);
        let ids: Vec<&str> = m.peers.iter().map(|p| p.peer_id.as_str()).collect();
        assert_eq!(ids, ["p1", "p2", "p3"]);
        assert!(m.known && m.content_length == 10 && m.piece_length == 4);
        let shown = task_peer(&m.peers[0]);
        assert_eq!(shown.host_type, "super");
        assert_eq!(shown.created_at, "2023-11-14T22:13:20.000Z");
        assert_eq!(task_peer(&pb::TaskPeer::default()).created_at, "");
    }
}
