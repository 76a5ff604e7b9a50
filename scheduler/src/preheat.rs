//! Preheat: the manager asks a scheduler of a cluster to fill hosts with tasks before anyone
//! pulls them. The scheduler picks the targets by scope (the seed peer a pull would trigger,
//! every seed peer, or every host), triggers each target's download (`Peer.TriggerDownload`:
//! seeds fetch from the origin, other peers through the swarm) and polls `Peer.StatTask` until
//! the target holds the task, its download failed, or time runs out. Repeating a preheat is
//! harmless: a target that already holds a task answers at once. Origin headers travel with the
//! triggers and are never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dragonfly_proto::peer::{StatTaskRequest, TriggerDownloadRequest};
use dragonfly_proto::scheduler as pb;
use futures::stream::{self, StreamExt};
use tonic::Status;

use crate::scheduling::pick_seed;
use crate::seed::peer_client;
use crate::state::{HostInfo, State};

/// Targets worked on at once.
const PARALLEL: usize = 16;
/// How often a target's progress is checked.
const POLL: Duration = Duration::from_millis(300);

/// Checks the request: tasks named like the swarm names them, with an origin.
fn validate(req: &pb::PreheatRequest) -> Result<(), Status> {
    if req.tasks.is_empty() {
        return Err(Status::invalid_argument("preheat needs at least one task"));
    }
    for t in &req.tasks {
        let hex =
            t.id.strip_prefix("sha256:")
                .or_else(|| t.id.strip_prefix("task:"));
        if !hex.is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(Status::invalid_argument(format!(
                "task id {:?} is not sha256:<hex> or task:<hex>",
                t.id
            )));
        }
        if t.url.is_empty() {
            return Err(Status::invalid_argument(format!(
                "task {} has no url",
                t.id
            )));
        }
    }
    Ok(())
}

/// The hosts `scope` fills with `task`.
fn targets(state: &State, scope: pb::PreheatScope, task: &str) -> Vec<HostInfo> {
    let seeds = state.seed_hosts();
    match scope {
        pb::PreheatScope::SingleSeedPeer => {
            pick_seed(task, seeds.iter()).cloned().into_iter().collect()
        }
        pb::PreheatScope::AllSeedPeers => seeds,
        pb::PreheatScope::AllPeers => state.with_hosts(|h| h.values().cloned().collect()),
    }
}

/// Runs a preheat; one result per task and target (a task without any target gets one failed
/// result saying so).
pub async fn preheat(
    state: Arc<State>,
    req: pb::PreheatRequest,
) -> Result<pb::PreheatResponse, Status> {
    validate(&req)?;
    let scope = pb::PreheatScope::try_from(req.scope)
        .map_err(|_| Status::invalid_argument(format!("unknown preheat scope {}", req.scope)))?;
    // 0 = an hour; at most a day.
    let secs = match req.timeout_secs {
        0 => 3600,
        s => s.min(24 * 3600),
    };
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs));
    let mut work = Vec::new();
    let mut results = Vec::new();
    for task in &req.tasks {
        let hosts = targets(&state, scope, &task.id);
        if hosts.is_empty() {
            results.push(pb::PreheatResult {
                task_id: task.id.clone(),
                url: task.url.clone(),
                ok: false,
                description: match scope {
                    pb::PreheatScope::AllPeers => "no host is announced to this scheduler".into(),
                    _ => "no seed peer is announced to this scheduler; start one with --seed-peer or use scope all_peers".into(),
                },
                ..Default::default()
            });
        }
        for h in hosts {
            work.push((task.clone(), h));
        }
    }
    tracing::info!(
        tasks = req.tasks.len(),
        targets = work.len(),
        ?scope,
        "preheat started"
    );
    let done: Vec<pb::PreheatResult> = stream::iter(work)
        .map(|(task, host)| async move {
            let mut r = pb::PreheatResult {
                task_id: task.id.clone(),
                url: task.url.clone(),
                host_id: host.id.to_string(),
                hostname: host.hostname.clone(),
                ip: host.ip.clone(),
                ..Default::default()
            };
            match fill(&host, task, deadline).await {
                Ok(()) => r.ok = true,
                Err(e) => r.description = e,
            }
            r
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let failed = done.iter().filter(|r| !r.ok).count();
    tracing::info!(results = done.len(), failed, "preheat finished");
    results.extend(done);
    Ok(pb::PreheatResponse { results })
}

/// Triggers `task` on `host` and waits until it holds it.
async fn fill(host: &HostInfo, task: pb::Task, deadline: Instant) -> Result<(), String> {
    let mut client = peer_client(host).await?;
    let task_id = task.id.clone();
    client
        .trigger_download(TriggerDownloadRequest {
            task: Some(task.clone()),
        })
        .await
        .map_err(|e| format!("cannot start the download on {}: {}", host.ip, e.message()))?;
    let mut retriggered = false;
    loop {
        let stat = client
            .stat_task(StatTaskRequest {
                task_id: task_id.clone(),
            })
            .await
            .map_err(|e| format!("cannot ask {} about the task: {}", host.ip, e.message()))?
            .into_inner();
        if stat.complete {
            return Ok(());
        }
        if !stat.running {
            if !stat.error.is_empty() {
                return Err(format!("download failed on {}: {}", host.ip, stat.error));
            }
            // Neither running nor failed: the blob was evicted or the peer restarted since
            // the trigger; start it once more.
            if retriggered {
                return Err(format!(
                    "the download on {} stopped without an error",
                    host.ip
                ));
            }
            retriggered = true;
            client
                .trigger_download(TriggerDownloadRequest {
                    task: Some(task.clone()),
                })
                .await
                .map_err(|e| {
                    format!("cannot start the download on {}: {}", host.ip, e.message())
                })?;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out on {} with {} of {} bytes",
                host.ip, stat.present_bytes, stat.content_length
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
