//! The manager's task jobs on this scheduler's cluster: `get_task` answers from the record of
//! the peers registered for a task and the pieces they reported; `delete_task` asks every
//! announced host (not only the recorded ones: a daemon that restarted holds blobs it has not
//! registered again) to remove the task's pieces, then forgets the peers on the hosts that
//! no longer hold it, and the task with its recorded piece digests once nobody does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use dragonfly_proto::peer::DeleteTaskRequest as PeerDelete;
use dragonfly_proto::scheduler as pb;
use futures::stream::{self, StreamExt};
use tonic::Status;

use crate::seed::peer_client;
use crate::state::{HostInfo, State};
use dragonfly_membership::client::Dialer;

/// Hosts asked at once when the request does not say.
const DEFAULT_AT_ONCE: usize = 500;
/// How long all hosts together may take when the request does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

fn task_id(id: &str) -> Result<(), Status> {
    id.parse::<dragonfly_task::TaskId>()
        .map(|_| ())
        .map_err(|e| Status::invalid_argument(format!("task_id: {e}")))
}

/// The peers holding `req.task_id` (an unknown task: `known: false`, no peers).
pub fn get_task(state: &State, req: &pb::GetTaskRequest) -> Result<pb::GetTaskResponse, Status> {
    task_id(&req.task_id)?;
    Ok(state.task_peers(&req.task_id).unwrap_or_default())
}

fn host_type(h: &HostInfo) -> i32 {
    if h.seed {
        pb::HostType::Seed as i32
    } else {
        pb::HostType::Normal as i32
    }
}

/// Asks `host` to delete `task`: `None` if it held nothing.
async fn delete_on(host: &HostInfo, dialer: &Dialer, task: &str) -> Option<pb::DeleteTaskResult> {
    let answer = async {
        peer_client(host, dialer)
            .await
            .map_err(|e| e.to_string())?
            .delete_task(PeerDelete {
                task_id: task.to_owned(),
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("{}: {}", host.ip, e.message()))
    }
    .await;
    let result = |ok, description: String, freed_bytes| pb::DeleteTaskResult {
        host_id: host.id.to_string(),
        hostname: host.hostname.clone(),
        ip: host.ip.clone(),
        host_type: host_type(host),
        ok,
        description,
        freed_bytes,
    };
    match answer {
        Ok(a) if !a.held => None,
        Ok(a) if a.deleted => Some(result(true, String::new(), a.freed_bytes)),
        Ok(a) => Some(result(false, a.reason, 0)),
        Err(e) => Some(result(
            false,
            format!("cannot ask the host to delete it: {e}"),
            0,
        )),
    }
}

/// Deletes `req.task_id` from every announced host; a result per host that held it or could
/// not be asked in time.
pub async fn delete_task(
    state: Arc<State>,
    dialer: Dialer,
    req: pb::DeleteTaskRequest,
) -> Result<pb::DeleteTaskResponse, Status> {
    task_id(&req.task_id)?;
    let hosts: Vec<HostInfo> = state.with_hosts(|h| h.values().cloned().collect());
    let at_once = match req.concurrent_peer_count {
        0 => DEFAULT_AT_ONCE,
        n => n as usize,
    };
    let timeout = match req.timeout_secs {
        0 => DEFAULT_TIMEOUT,
        s => Duration::from_secs(u64::from(s.min(24 * 3600))),
    };
    let task = req.task_id.as_str();
    let asked: Vec<(HostInfo, _)> = stream::iter(hosts.iter().cloned())
        .map(|h| {
            let (dialer, task) = (dialer.clone(), req.task_id.clone());
            async move {
                let outcome = tokio::time::timeout(timeout, delete_on(&h, &dialer, &task)).await;
                (h, outcome)
            }
        })
        .buffer_unordered(at_once)
        .collect()
        .await;
    let mut results = Vec::new();
    // Hosts that hold nothing of the task any more: their peers of it are stale.
    let mut cleared: HashSet<Arc<str>> = HashSet::new();
    for (h, outcome) in asked {
        match outcome {
            Ok(None) => {
                cleared.insert(h.id.clone());
            }
            Ok(Some(r)) => {
                if r.ok {
                    cleared.insert(h.id.clone());
                }
                results.push(r);
            }
            Err(_) => results.push(pb::DeleteTaskResult {
                host_id: h.id.to_string(),
                hostname: h.hostname.clone(),
                ip: h.ip.clone(),
                host_type: host_type(&h),
                ok: false,
                description: format!("no answer within {}s", timeout.as_secs()),
                freed_bytes: 0,
            }),
        }
    }
    let forgotten = state.forget_task_on(task, &cleared);
    results.sort_by(|a, b| a.host_id.cmp(&b.host_id));
    let failed = results.iter().filter(|r| !r.ok).count();
    tracing::info!(task = %task, hosts = hosts.len(), deleted = results.len() - failed, failed, forgotten, "delete task finished");
    Ok(pb::DeleteTaskResponse {
        results,
        hosts_asked: hosts.len() as u32,
    })
}
