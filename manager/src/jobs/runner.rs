//! The durable job runner. It claims PENDING jobs from the database (so several managers on
//! one PostgreSQL share the work), runs up to `jobs.concurrency` at once, heartbeats each
//! RUNNING job with its progress, and puts jobs whose heartbeat stopped (their manager died)
//! back to PENDING — up to `jobs.max_attempts` runs, then FAILURE with a log line — so every
//! job ends as SUCCESS or FAILURE even across restarts. Before a job hands its URLs on, they
//! are checked against the destination policy once more (addresses, redirects, token realms).
//!
//! A preheat resolves its tasks (an image's config and layers, or file URLs), then asks one
//! active scheduler of each target cluster to fill the scope's hosts (`Scheduler.Preheat`) and
//! records which hosts hold which task. The job succeeds when every task reached at least one
//! host in every cluster; a readable log says what happened either way. get_task and
//! delete_task jobs run in [`super::task_runner`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use dragonfly_proto::scheduler as pb;
use dragonfly_task::{TaskId, TaskRole};
use tokio::sync::{Notify, Semaphore};

use super::args::{JobKind, Preheat, PreheatKind, Scope, Secrets};
use super::destination::{DestinationPolicy, Refused};
use super::image::{self, ManifestUrl};
use super::model::{ClusterOutcome, HostTask, JobState};
use super::progress::{live_tasks, Progress};
use super::schedulers;
use super::task_args::TaskQuery;
use super::task_runner::TaskJob;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::clusters::Cluster;
use crate::store::image_tags::ImageTag;
use crate::store::jobs::Claimed;
use crate::store::Db;
use dragonfly_membership::client::Dialer;

/// How often a RUNNING job's heartbeat (with its live progress) is written.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What the runner works from: the stored plan (and secrets) of a claimed job.
enum JobPlan {
    Preheat {
        preheat: Box<Preheat>,
        secrets: Secrets,
    },
    /// get_task or delete_task.
    Task { kind: JobKind, query: TaskQuery },
}

impl JobPlan {
    fn of(c: &Claimed) -> Result<JobPlan, String> {
        let bad = |e: serde_json::Error| e.to_string();
        match JobKind::parse(&c.job.kind).map_err(|e| e.message)? {
            JobKind::Preheat => Ok(JobPlan::Preheat {
                preheat: serde_json::from_value(c.plan.clone()).map_err(bad)?,
                secrets: serde_json::from_value(c.secrets.clone()).map_err(bad)?,
            }),
            kind @ (JobKind::GetTask | JobKind::DeleteTask) => Ok(JobPlan::Task {
                kind,
                query: serde_json::from_value(c.plan.clone()).map_err(bad)?,
            }),
            JobKind::GetImageDistribution => {
                Err("get_image_distribution is answered at once, never stored".into())
            }
        }
    }

    fn timeout_secs(&self) -> u64 {
        match self {
            JobPlan::Preheat { preheat, .. } => preheat.timeout_secs,
            JobPlan::Task { query, .. } => query.timeout_secs,
        }
    }
}

/// Why a preheat's tasks cannot be known.
#[derive(Debug, thiserror::Error)]
enum PlanError {
    #[error("{0} is not a manifest URL")]
    NotManifestUrl(String),
    #[error("resolving {0} timed out")]
    Timeout(String),
    #[error(transparent)]
    Resolve(#[from] image::ResolveError),
    #[error(transparent)]
    FileId(#[from] dragonfly_task::TaskError),
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// The runner.
pub struct Runner {
    db: Db,
    config: Arc<Config>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Where preheat URLs may point.
    destinations: Arc<DestinationPolicy>,
    /// How schedulers are dialled (mutual TLS with the manager's certificate, or plain).
    dialer: Dialer,
}

impl Runner {
    /// A runner over `db`, woken early by `wake`, dialling schedulers through `dialer`.
    pub fn new(
        db: Db,
        config: Arc<Config>,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        dialer: Dialer,
    ) -> Arc<Runner> {
        let destinations = Arc::new(DestinationPolicy::new(config.jobs.allowed_networks.clone()));
        Arc::new(Runner {
            db,
            config,
            wake,
            metrics,
            destinations,
            dialer,
        })
    }

    /// Runs forever.
    pub async fn run(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(self.config.jobs.concurrency.max(1)));
        let stale = Duration::from_secs(self.config.jobs.stale_after_secs.max(1));
        loop {
            self.requeue_stale(stale).await;
            // Claim while there are free slots and pending jobs.
            loop {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                match self.db.claim_job().await {
                    Ok(Some(c)) => {
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.run_job(c).await;
                            drop(permit);
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot claim a job");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Requeues RUNNING jobs whose manager stopped reporting, or fails them at the cap.
    async fn requeue_stale(&self, stale: Duration) {
        let max = self.config.jobs.max_attempts;
        match self.db.requeue_stale_jobs(stale, max).await {
            Ok((requeued, failed)) => {
                for job in requeued {
                    tracing::warn!(
                        job,
                        "requeued a RUNNING job whose manager stopped reporting"
                    );
                }
                for job in failed {
                    self.metrics.jobs.with_label_values(&["failure"]).inc();
                    tracing::warn!(
                        job,
                        max_attempts = max,
                        "job FAILURE: its manager stopped while running it jobs.max_attempts times"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot requeue stale jobs"),
        }
    }

    async fn run_job(&self, c: Claimed) {
        let id = c.job.id;
        let started = Instant::now();
        let mut progress = Progress::new(c.job.log.clone());
        if c.job.attempts > 1 {
            progress.line(format!(
                "run {} (the previous run's manager stopped)",
                c.job.attempts
            ));
        }
        tracing::info!(job = id, task_id = %c.job.task_id, attempt = c.job.attempts, "job started");
        let max = self.config.jobs.max_attempts;
        let (success, progress) = match JobPlan::of(&c) {
            // Requeued by a manager with a higher cap, or before there was one.
            _ if c.job.attempts > i64::from(max) => {
                progress.line(format!(
                    "run {} is over jobs.max_attempts ({max}); not running it again",
                    c.job.attempts
                ));
                (false, progress)
            }
            Err(e) => {
                progress.line(format!("the stored job cannot be read: {e}"));
                (false, progress)
            }
            Ok(plan) => {
                let shared = Arc::new(tokio::sync::Mutex::new(progress));
                let timeout = Duration::from_secs(plan.timeout_secs().max(1));
                let heartbeat = {
                    let (db, shared) = (self.db.clone(), shared.clone());
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(HEARTBEAT).await;
                            // Copied out, so the preheat is not held up by the write.
                            let p = shared.lock().await.snapshot();
                            if let Err(e) = db.job_progress(id, &p.result, &p.log).await {
                                tracing::warn!(job = id, error = %e, "cannot record job progress");
                            }
                        }
                    })
                };
                let clusters = &c.job.scheduler_cluster_ids;
                let work = async {
                    match &plan {
                        JobPlan::Preheat { preheat, secrets } => {
                            self.preheat(id, (preheat, secrets), clusters, shared.clone())
                                .await
                        }
                        JobPlan::Task { kind, query } => {
                            let on = TaskJob {
                                db: &self.db,
                                dialer: &self.dialer,
                            };
                            on.run(*kind, query, clusters, &shared).await
                        }
                    }
                };
                let outcome = tokio::time::timeout(timeout, work).await;
                heartbeat.abort();
                let mut p = shared.lock().await.snapshot();
                let ok = match outcome {
                    Ok(ok) => ok,
                    Err(_) => {
                        p.line(format!("timed out after {}s", timeout.as_secs()));
                        false
                    }
                };
                (ok, p)
            }
        };
        let mut progress = progress;
        progress.line(if success { "SUCCESS" } else { "FAILURE" });
        self.metrics
            .jobs
            .with_label_values(&[if success { "success" } else { "failure" }])
            .inc();
        let state = if success {
            JobState::Success
        } else {
            JobState::Failure
        };
        if let Err(e) = self
            .db
            .finish_job(id, state, &progress.result, &progress.log)
            .await
        {
            tracing::error!(job = id, error = %e, "cannot record the job's end; it will run again");
            return;
        }
        tracing::info!(
            job = id,
            success,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "job finished"
        );
    }

    /// Checks where every URL of `plan` leads (addresses, redirects, token realms) now,
    /// when it is about to be fetched.
    async fn check_destinations(&self, plan: &Preheat) -> Result<(), Refused> {
        for u in &plan.urls {
            let parsed =
                reqwest::Url::parse(u).map_err(|_| Refused::NotHttp(crate::redact::url(u)))?;
            super::preflight::walk(&self.destinations, plan.kind, &parsed).await?;
        }
        Ok(())
    }

    /// The tasks of a preheat, and for an image by tag what the tag names.
    async fn tasks(
        &self,
        plan: &Preheat,
        secrets: &Secrets,
    ) -> Result<(Vec<(pb::Task, TaskRole)>, Option<ImageTag>), PlanError> {
        self.check_destinations(plan).await?;
        let mut headers: std::collections::HashMap<String, String> = secrets
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !secrets.username.is_empty() {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", secrets.username, secrets.password));
            headers.insert("Authorization".into(), format!("Basic {basic}"));
        }
        let piece_length = plan.piece_length.unwrap_or(0) as u32;
        match plan.kind {
            PreheatKind::Image => {
                let m = reqwest::Url::parse(&plan.urls[0])
                    .ok()
                    .as_ref()
                    .and_then(ManifestUrl::parse)
                    .ok_or_else(|| PlanError::NotManifestUrl(plan.urls[0].clone()))?;
                let image = tokio::time::timeout(
                    Duration::from_secs(self.config.jobs.resolve_timeout_secs.max(1)),
                    image::resolve(&m, &plan.platform, secrets, self.destinations.clone()),
                )
                .await
                .map_err(|_| PlanError::Timeout(plan.urls[0].clone()))??;
                let tag = image.tag.map(|(digest, media_type)| ImageTag {
                    registry: m.registry.clone(),
                    repository: m.repository.clone(),
                    tag: m.reference.clone(),
                    digest,
                    media_type,
                });
                let tasks = image
                    .blobs
                    .into_iter()
                    .map(|b| {
                        let id = b.id().to_string();
                        let task = pb::Task {
                            id: id.clone(),
                            content_length: b.size,
                            piece_length,
                            url: b.url.to_string(),
                            digest: id,
                            origin_headers: headers.clone(),
                        };
                        (task, b.role)
                    })
                    .collect();
                Ok((tasks, tag))
            }
            PreheatKind::File => Ok((
                plan.urls
                    .iter()
                    .map(|u| {
                        let id = TaskId::file(
                            u,
                            &plan.tag,
                            &plan.application,
                            &plan.filtered_query_params,
                        )?;
                        let task = pb::Task {
                            id: id.to_string(),
                            content_length: 0,
                            piece_length,
                            url: u.clone(),
                            digest: String::new(),
                            origin_headers: headers.clone(),
                        };
                        Ok((task, TaskRole::File))
                    })
                    .collect::<Result<Vec<_>, PlanError>>()?,
                None,
            )),
        }
    }

    /// Runs a preheat; true if every task reached a host in every target cluster.
    async fn preheat(
        &self,
        job: i64,
        (preheat, secrets): (&Preheat, &Secrets),
        cluster_ids: &[i64],
        progress: Arc<tokio::sync::Mutex<Progress>>,
    ) -> bool {
        let (tasks, tag) = match self.tasks(preheat, secrets).await {
            Ok(t) => t,
            Err(e) => {
                progress.lock().await.line(e.to_string());
                return false;
            }
        };
        let mut p = progress.lock().await;
        p.live = live_tasks(&tasks);
        let tasks: Vec<pb::Task> = tasks.into_iter().map(|(t, _)| t).collect();
        let total: u64 = tasks.iter().map(|t| t.content_length).sum();
        p.line(format!(
            "{} task(s) to preheat{}",
            tasks.len(),
            if total > 0 {
                format!(", {total} bytes")
            } else {
                String::new()
            }
        ));
        drop(p);
        let clusters = match schedulers::target_clusters(&self.db, cluster_ids).await {
            Ok(c) => c,
            Err(e) => {
                progress.lock().await.line(e);
                return false;
            }
        };
        let scope = match preheat.scope {
            Scope::SingleSeedPeer => pb::PreheatScope::SingleSeedPeer,
            Scope::AllSeedPeers => pb::PreheatScope::AllSeedPeers,
            Scope::AllPeers => pb::PreheatScope::AllPeers,
        };
        // Clusters are independent: preheat them at once.
        let outcomes = futures::future::join_all(clusters.iter().map(|cluster| {
            self.preheat_cluster(
                cluster,
                &tasks,
                (scope, &preheat.targets),
                preheat.timeout_secs,
                &progress,
            )
        }))
        .await;
        let mut all_ok = true;
        let mut p = progress.lock().await;
        for (ok, outcome) in outcomes {
            all_ok &= ok;
            p.result.job_states.push(outcome);
        }
        // The image is in the swarm: remember what its tag named, for pulls without the
        // registry.
        if let (true, Some(tag)) = (all_ok, tag) {
            match self.db.record_image_tag(&tag, job).await {
                Ok(()) => p.line(format!(
                    "{}/{}:{} is {}",
                    tag.registry, tag.repository, tag.tag, tag.digest
                )),
                Err(e) => {
                    p.line(format!("cannot record what the tag names: {e}"));
                    all_ok = false;
                }
            }
        }
        drop(p);
        all_ok
    }

    async fn preheat_cluster(
        &self,
        cluster: &Cluster,
        tasks: &[pb::Task],
        (scope, targets): (pb::PreheatScope, &crate::jobs::args::Targets),
        timeout_secs: u64,
        progress: &tokio::sync::Mutex<Progress>,
    ) -> (bool, ClusterOutcome) {
        let (cluster_id, name) = (cluster.id, cluster.name.as_str());
        let fail = |e: String| {
            let e = crate::redact::text(&e).into_owned();
            (false, ClusterOutcome::failed(cluster_id, e))
        };
        let members = match schedulers::active(&self.db, cluster).await {
            Ok(s) => s,
            Err(e) => {
                progress.lock().await.line(&e);
                return fail(e);
            }
        };
        let request = pb::PreheatRequest {
            tasks: tasks.to_vec(),
            scope: scope as i32,
            timeout_secs: timeout_secs.min(u64::from(u32::MAX)) as u32,
            targets: Some(pb::PreheatTargets {
                ips: targets.ips.clone(),
                count: targets.count.unwrap_or(0),
                percentage: targets.percentage.unwrap_or(0),
                concurrent_peer_count: targets.concurrent_peer_count.unwrap_or(0),
                concurrent_task_count: targets.concurrent_task_count.unwrap_or(0),
            }),
        };
        let mut last_error = String::new();
        for s in &members {
            let addr = schedulers::address(s);
            progress.lock().await.line(format!(
                "cluster {name}: asking scheduler {addr} ({scope:?})"
            ));
            let res = async {
                let mut client =
                    schedulers::connect(&self.dialer, s, Duration::from_secs(timeout_secs + 10))
                        .await?;
                let mut events = client
                    .preheat_with_progress(request.clone())
                    .await
                    .map_err(|e| format!("scheduler {addr}: {}", e.message()))?
                    .into_inner();
                loop {
                    let event = events
                        .message()
                        .await
                        .map_err(|e| format!("scheduler {addr}: {}", e.message()))?
                        .ok_or_else(|| {
                            format!("scheduler {addr} ended the preheat without results")
                        })?;
                    if !event.progress.is_empty() {
                        let mut p = progress.lock().await;
                        for e in &event.progress {
                            p.advance(cluster_id, e);
                        }
                    }
                    if let Some(done) = event.done {
                        return Ok(done);
                    }
                }
            }
            .await;
            let resp = match res {
                Ok(r) => r,
                Err(e) => {
                    progress.lock().await.line(&e);
                    last_error = e;
                    continue;
                }
            };
            return self.outcome(cluster_id, name, tasks, &resp, progress).await;
        }
        fail(last_error)
    }

    /// What the scheduler's answer means for the cluster, logged.
    async fn outcome(
        &self,
        cluster_id: i64,
        name: &str,
        tasks: &[pb::Task],
        resp: &pb::PreheatResponse,
        progress: &tokio::sync::Mutex<Progress>,
    ) -> (bool, ClusterOutcome) {
        let host_task = |r: &pb::PreheatResult| HostTask {
            task_id: r.task_id.clone(),
            url: crate::redact::url(&r.url),
            hostname: r.hostname.clone(),
            ip: r.ip.clone(),
            host_type: String::new(),
            freed_bytes: 0,
            description: if r.ok {
                String::new()
            } else {
                crate::redact::text(&r.description).into_owned()
            },
        };
        let (ok, failed): (Vec<&pb::PreheatResult>, Vec<&pb::PreheatResult>) =
            resp.results.iter().partition(|r| r.ok);
        let every_task = tasks.iter().all(|t| ok.iter().any(|r| r.task_id == t.id));
        let outcome = ClusterOutcome {
            success_tasks: ok.into_iter().map(host_task).collect(),
            failure_tasks: failed.into_iter().map(host_task).collect(),
            ..ClusterOutcome::answered(cluster_id, every_task)
        };
        let mut p = progress.lock().await;
        p.line(format!(
            "cluster {name}: {} host-task(s) done, {} failed",
            outcome.success_tasks.len(),
            outcome.failure_tasks.len()
        ));
        for f in &outcome.failure_tasks {
            let ip = if f.ip.is_empty() { "-" } else { f.ip.as_str() };
            p.line(format!("  {} on {ip}: {}", f.url, f.description));
        }
        (every_task, outcome)
    }
}
