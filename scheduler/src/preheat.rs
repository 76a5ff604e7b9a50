//! Preheat: the manager asks a scheduler of a cluster to fill hosts with tasks before anyone
//! pulls them. The scheduler picks the targets by scope (the seed peer a pull would trigger,
//! every seed peer, or every host), triggers each target's download (`Peer.TriggerDownload`:
//! seeds fetch from the origin, other peers through the swarm) and polls `Peer.StatTask` until
//! the target holds the task, its download failed, or time runs out. All targets are worked on
//! at once (one connection per host); only the RPCs in flight are bounded. Repeating a preheat is
//! harmless: a target that already holds a task answers at once. Origin headers travel with the
//! triggers and are never logged. With a progress sink, every poll that finds a target further
//! along is reported (the manager turns these into its jobs' live progress).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dragonfly_proto::peer::peer_client::PeerClient;
use dragonfly_proto::peer::{StatTaskRequest, StatTaskResponse, TriggerDownloadRequest};
use dragonfly_proto::scheduler as pb;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::Status;

use crate::scheduling::pick_seed;
use crate::seed::peer_client;
use crate::state::{HostInfo, State};
use dragonfly_membership::client::Dialer;

/// RPCs to targets in flight at once.
const PARALLEL: usize = 16;
/// How often a target's progress is checked.
const POLL: Duration = Duration::from_millis(300);

/// Checks the request: tasks named like the swarm names them, with an origin.
fn validate(req: &pb::PreheatRequest) -> Result<(), Status> {
    if req.tasks.is_empty() {
        return Err(Status::invalid_argument("preheat needs at least one task"));
    }
    for t in &req.tasks {
        t.id.parse::<dragonfly_task::TaskId>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
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

/// Where progress goes: `(task, host, present bytes, content length)` as it changes.
pub type ProgressSink = tokio::sync::mpsc::UnboundedSender<pb::PreheatProgress>;

/// Runs a preheat; one result per task and target (a task without any target gets one failed
/// result saying so). Progress goes to `progress` if given.
pub async fn preheat(
    state: Arc<State>,
    dialer: Dialer,
    req: pb::PreheatRequest,
    progress: Option<ProgressSink>,
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
    // Targets grouped by host: one connection per host, all its tasks triggered, then polled.
    let mut work: Vec<(HostInfo, Vec<pb::Task>)> = Vec::new();
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
            match work.iter_mut().find(|(w, _)| w.id == h.id) {
                Some((_, tasks)) => tasks.push(task.clone()),
                None => work.push((h, vec![task.clone()])),
            }
        }
    }
    tracing::info!(
        tasks = req.tasks.len(),
        hosts = work.len(),
        ?scope,
        "preheat started"
    );
    // Every host is worked on at once; only the RPCs in flight are bounded, so waiting for
    // slow downloads never holds up the other hosts.
    let rpcs = Semaphore::new(PARALLEL);
    let done: Vec<pb::PreheatResult> =
        futures::future::join_all(work.iter().map(|(host, tasks)| {
            fill_host(host, &dialer, tasks, deadline, &rpcs, progress.as_ref())
        }))
        .await
        .into_iter()
        .flatten()
        .collect();
    let failed = done.iter().filter(|r| !r.ok).count();
    tracing::info!(results = done.len(), failed, "preheat finished");
    results.extend(done);
    Ok(pb::PreheatResponse { results })
}

/// Where one task stands on a host.
enum Progress {
    /// Triggered; `retriggered` once it had to be started again.
    Waiting { retriggered: bool },
    /// Finished: held, or why not.
    Done(Result<(), String>),
}

/// The result of one task on `host`.
fn result(host: &HostInfo, t: &pb::Task, outcome: Result<(), String>) -> pb::PreheatResult {
    pb::PreheatResult {
        task_id: t.id.clone(),
        url: t.url.clone(),
        host_id: host.id.to_string(),
        hostname: host.hostname.clone(),
        ip: host.ip.clone(),
        ok: outcome.is_ok(),
        description: outcome.err().unwrap_or_default(),
    }
}

/// Filling one host: its peer client, the RPC permits, and what was last reported of each
/// task to the progress sink.
struct HostFill<'a> {
    host: &'a HostInfo,
    client: PeerClient<Channel>,
    rpcs: &'a Semaphore,
    sink: Option<&'a ProgressSink>,
    reported: Vec<(u64, u64)>,
    deadline: Instant,
}

impl HostFill<'_> {
    async fn trigger(&self, t: &pb::Task) -> Result<(), String> {
        let _permit = self.rpcs.acquire().await.expect("semaphore open");
        self.client
            .clone()
            .trigger_download(TriggerDownloadRequest {
                task: Some(t.clone()),
                background: false,
            })
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "cannot start the download on {}: {}",
                    self.host.ip,
                    e.message()
                )
            })
    }

    async fn stat(&self, t: &pb::Task) -> Result<StatTaskResponse, tonic::Status> {
        let _permit = self.rpcs.acquire().await.expect("semaphore open");
        self.client
            .clone()
            .stat_task(StatTaskRequest {
                task_id: t.id.clone(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Sends what the host holds of task `i` to the sink, if it changed.
    fn report(&mut self, i: usize, t: &pb::Task, present: u64, total: u64) {
        let Some(sink) = self.sink else { return };
        if self.reported[i] != (present, total) {
            self.reported[i] = (present, total);
            let _ = sink.send(pb::PreheatProgress {
                task_id: t.id.clone(),
                host_id: self.host.id.to_string(),
                present_bytes: present,
                content_length: total,
            });
        }
    }

    /// Where a waiting task stands after a StatTask answer.
    async fn step(
        &self,
        t: &pb::Task,
        retriggered: bool,
        stat: Result<StatTaskResponse, tonic::Status>,
    ) -> Progress {
        let ip = &self.host.ip;
        match stat {
            Err(e) => Progress::Done(Err(format!(
                "cannot ask {ip} about the task: {}",
                e.message()
            ))),
            Ok(s) if s.complete => Progress::Done(Ok(())),
            Ok(s) if s.running && Instant::now() >= self.deadline => Progress::Done(Err(format!(
                "timed out on {ip} with {} of {} bytes",
                s.present_bytes, s.content_length
            ))),
            Ok(s) if s.running => Progress::Waiting { retriggered },
            Ok(s) if !s.error.is_empty() => {
                Progress::Done(Err(format!("download failed on {ip}: {}", s.error)))
            }
            // Neither running nor failed: the blob was evicted or the peer restarted since
            // the trigger; start it once more.
            Ok(_) if retriggered => Progress::Done(Err(format!(
                "the download on {ip} stopped without an error"
            ))),
            Ok(_) => match self.trigger(t).await {
                Ok(()) => Progress::Waiting { retriggered: true },
                Err(e) => Progress::Done(Err(e)),
            },
        }
    }

    /// One round of StatTask over the tasks still waiting.
    async fn poll(&mut self, tasks: &[pb::Task], progress: &mut [Progress]) {
        for (i, (t, p)) in tasks.iter().zip(progress.iter_mut()).enumerate() {
            let Progress::Waiting { retriggered } = *p else {
                continue;
            };
            let stat = self.stat(t).await;
            if let Ok(s) = &stat {
                self.report(i, t, s.present_bytes, s.content_length);
            }
            *p = self.step(t, retriggered, stat).await;
        }
    }
}

/// Triggers `tasks` on `host` and waits until it holds them (or they fail, or time runs out);
/// a result per task. Each RPC takes a permit of `rpcs`; changes in what the host holds go to
/// `sink`.
async fn fill_host(
    host: &HostInfo,
    dialer: &Dialer,
    tasks: &[pb::Task],
    deadline: Instant,
    rpcs: &Semaphore,
    sink: Option<&ProgressSink>,
) -> Vec<pb::PreheatResult> {
    let client = {
        let _permit = rpcs.acquire().await.expect("semaphore open");
        peer_client(host, dialer).await
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            return tasks
                .iter()
                .map(|t| result(host, t, Err(e.to_string())))
                .collect()
        }
    };
    let mut fill = HostFill {
        host,
        client,
        rpcs,
        sink,
        reported: vec![(0, 0); tasks.len()],
        deadline,
    };
    let mut progress = Vec::new();
    for t in tasks {
        progress.push(match fill.trigger(t).await {
            Ok(()) => Progress::Waiting { retriggered: false },
            Err(e) => Progress::Done(Err(e)),
        });
    }
    let waiting = |progress: &[Progress]| {
        progress
            .iter()
            .any(|p| matches!(p, Progress::Waiting { .. }))
    };
    while waiting(&progress) {
        fill.poll(tasks, &mut progress).await;
        if waiting(&progress) {
            tokio::time::sleep(POLL).await;
        }
    }
    tasks
        .iter()
        .zip(progress)
        .map(|(t, p)| match p {
            Progress::Done(outcome) => result(host, t, outcome),
            Progress::Waiting { .. } => unreachable!("every task is done"),
        })
        .collect()
}
