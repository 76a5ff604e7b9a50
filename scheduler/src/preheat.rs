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

/// The hosts `scope` fills with `task`, narrowed by `targets`.
fn targets(
    state: &State,
    scope: pb::PreheatScope,
    targets: &pb::PreheatTargets,
    task: &str,
) -> Vec<HostInfo> {
    let seeds = state.seed_hosts();
    let all = match scope {
        pb::PreheatScope::SingleSeedPeer => {
            return pick_seed(task, seeds.iter()).cloned().into_iter().collect()
        }
        pb::PreheatScope::AllSeedPeers => seeds,
        pb::PreheatScope::AllPeers => state.with_hosts(|h| h.values().cloned().collect()),
    };
    narrow(all, targets)
}

/// Dragonfly's priority: `ips`, else `count`, else `percentage` (rounded up); hosts in id
/// order, so every task of one preheat lands on the same hosts.
fn narrow(mut hosts: Vec<HostInfo>, t: &pb::PreheatTargets) -> Vec<HostInfo> {
    hosts.sort_by(|a, b| a.id.cmp(&b.id));
    if !t.ips.is_empty() {
        hosts.retain(|h| t.ips.contains(&h.ip));
    } else if t.count > 0 {
        hosts.truncate(t.count as usize);
    } else if t.percentage > 0 {
        let n = (hosts.len() * t.percentage.min(100) as usize).div_ceil(100);
        hosts.truncate(n);
    }
    hosts
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
    let narrowing = req.targets.clone().unwrap_or_default();
    // Targets grouped by host: one connection per host, all its tasks triggered, then polled.
    let mut work: Vec<(HostInfo, Vec<pb::Task>)> = Vec::new();
    let mut results = Vec::new();
    for task in &req.tasks {
        let hosts = targets(&state, scope, &narrowing, &task.id);
        if hosts.is_empty() {
            results.push(pb::PreheatResult {
                task_id: task.id.clone(),
                url: task.url.clone(),
                ok: false,
                description: match scope {
                    _ if !narrowing.ips.is_empty() => format!("no host of the scope has one of the ips {:?}", narrowing.ips),
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
    let hosts_at_once = Semaphore::new(match narrowing.concurrent_peer_count {
        0 => Semaphore::MAX_PERMITS,
        n => n as usize,
    });
    let limits = Limits {
        rpcs: &rpcs,
        tasks_at_once: match narrowing.concurrent_task_count {
            0 => usize::MAX,
            n => n as usize,
        },
    };
    let done: Vec<pb::PreheatResult> =
        futures::future::join_all(work.iter().map(|(host, tasks)| async {
            let _host = hosts_at_once.acquire().await.expect("semaphore open");
            fill_host(host, &dialer, tasks, deadline, &limits, progress.as_ref()).await
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

/// Bounds on a preheat's work.
struct Limits<'a> {
    /// RPCs in flight over all hosts.
    rpcs: &'a Semaphore,
    /// Tasks triggered and not finished on one host.
    tasks_at_once: usize,
}

/// Where one task stands on a host.
enum Progress {
    /// Not triggered yet (the host has `tasks_at_once` under way).
    Queued,
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

    /// Triggers queued tasks while fewer than `at_once` are under way.
    async fn start_queued(&self, tasks: &[pb::Task], progress: &mut [Progress], at_once: usize) {
        let mut running = progress
            .iter()
            .filter(|p| matches!(p, Progress::Waiting { .. }))
            .count();
        for (t, p) in tasks.iter().zip(progress.iter_mut()) {
            if running >= at_once {
                break;
            }
            if matches!(p, Progress::Queued) {
                if Instant::now() >= self.deadline {
                    *p = Progress::Done(Err(format!(
                        "timed out on {} before the task could start (concurrent_task_count)",
                        self.host.ip
                    )));
                    continue;
                }
                *p = match self.trigger(t).await {
                    Ok(()) => Progress::Waiting { retriggered: false },
                    Err(e) => Progress::Done(Err(e)),
                };
                running += usize::from(matches!(p, Progress::Waiting { .. }));
            }
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
    limits: &Limits<'_>,
    sink: Option<&ProgressSink>,
) -> Vec<pb::PreheatResult> {
    let rpcs = limits.rpcs;
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
    let mut progress: Vec<Progress> = tasks.iter().map(|_| Progress::Queued).collect();
    fill.start_queued(tasks, &mut progress, limits.tasks_at_once)
        .await;
    let waiting = |progress: &[Progress]| {
        progress
            .iter()
            .any(|p| matches!(p, Progress::Waiting { .. }))
    };
    while waiting(&progress) {
        fill.poll(tasks, &mut progress).await;
        fill.start_queued(tasks, &mut progress, limits.tasks_at_once)
            .await;
        if waiting(&progress) {
            tokio::time::sleep(POLL).await;
        }
    }
    tasks
        .iter()
        .zip(progress)
        .map(|(t, p)| match p {
            Progress::Done(outcome) => result(host, t, outcome),
            Progress::Queued | Progress::Waiting { .. } => unreachable!("every task is done"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, ip: &str) -> HostInfo {
        HostInfo {
            id: id.into(),
            hostname: id.into(),
            ip: ip.into(),
            upload_port: 4000,
            tcp_pieces: true,
            demand_pieces: true,
            seed: false,
            idc: String::new(),
            location: String::new(),
            upload_slots: 10,
            active_uploads: 0,
            last_seen: Instant::now(),
            protocol: 0,
        }
    }

    fn four() -> Vec<HostInfo> {
        ["d", "b", "a", "c"]
            .iter()
            .enumerate()
            .map(|(i, id)| host(id, &format!("10.0.0.{i}")))
            .collect()
    }

    fn ids(h: &[HostInfo]) -> Vec<&str> {
        h.iter().map(|h| &*h.id).collect()
    }

    #[test]
    fn ips_win_over_count_and_count_over_percentage() {
        let t = pb::PreheatTargets {
            ips: vec!["10.0.0.0".into(), "10.0.0.3".into()],
            count: 1,
            percentage: 100,
            ..Default::default()
        };
        assert_eq!(ids(&narrow(four(), &t)), ["c", "d"]);
        let t = pb::PreheatTargets {
            count: 2,
            percentage: 100,
            ..Default::default()
        };
        assert_eq!(ids(&narrow(four(), &t)), ["a", "b"], "host-id order");
        let t = pb::PreheatTargets {
            percentage: 30,
            ..Default::default()
        };
        assert_eq!(
            ids(&narrow(four(), &t)),
            ["a", "b"],
            "30 % of 4, rounded up"
        );
        assert_eq!(narrow(four(), &pb::PreheatTargets::default()).len(), 4);
        let t = pb::PreheatTargets {
            count: 9,
            ..Default::default()
        };
        assert_eq!(narrow(four(), &t).len(), 4);
    }
}
