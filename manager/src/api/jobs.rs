//! Jobs over `/api/v1/jobs` (console session) and `/oapi/v1/jobs` (token with the `job`
//! scope): create a preheat, get_task or delete_task (PENDING, answered at once; 429 beyond
//! the clusters' rate limits), answer a get_image_distribution at once, list, get. Secrets never appear in answers. A URL whose host resolves to a refused address
//! (see [`crate::jobs::destination`]) is a 400 naming the URL and the address.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::jobs::args::{check, CreateJob, JobKind};
use crate::jobs::distribution::{DistributionError, Lookup};
use crate::jobs::model::JobState;
use crate::jobs::task_args::{check_distribution, check_task};
use crate::store::clusters::Cluster;
use crate::store::jobs::{Job, JobQuery, NewJobRow};

/// `job` as answered, with the names of its clusters (from `clusters`, loaded once per request).
fn shown(clusters: &[Cluster], job: Job) -> Value {
    let mut v = serde_json::to_value(&job).expect("job serializes");
    v["scheduler_clusters"] = clusters
        .iter()
        .filter(|c| {
            job.scheduler_cluster_ids.is_empty() || job.scheduler_cluster_ids.contains(&c.id)
        })
        .map(|c| json!({"id": c.id, "name": c.name}))
        .collect();
    v
}

/// `POST /jobs`: checks the request, applies the clusters' rate limits and stores the job
/// (`201`), or answers a get_image_distribution at once (`200`).
pub async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(mut req): JsonBody<CreateJob>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let kind = JobKind::parse(&req.kind)?;
    let default_timeout = std::time::Duration::from_secs(s.config.jobs.timeout_secs);
    let clusters = s.db.clusters().await?;
    for id in &req.scheduler_cluster_ids {
        if !clusters.iter().any(|c| c.id == *id) {
            return Err(ApiError::bad(
                "scheduler_cluster_ids",
                format!("no scheduler cluster {id}"),
            ));
        }
    }
    let targets = req.scheduler_cluster_ids.clone();
    let stored = match kind {
        JobKind::Preheat => {
            let new = check(req, default_timeout)?;
            for u in &new.preheat.urls {
                check_destination(&s, u).await?;
            }
            StoredJob {
                bio: new.bio,
                shown: new.shown,
                plan: serde_json::to_value(&new.preheat).expect("plans serialize"),
                secrets: serde_json::to_value(&new.secrets).expect("secrets serialize"),
                what: crate::redact::url(&new.preheat.urls[0]),
            }
        }
        JobKind::GetTask | JobKind::DeleteTask => {
            let (query, shown) = check_task(
                req.args.take(),
                kind == JobKind::DeleteTask,
                default_timeout,
            )?;
            StoredJob {
                bio: std::mem::take(&mut req.bio),
                shown,
                plan: serde_json::to_value(&query).expect("plans serialize"),
                secrets: json!({}),
                what: query.task_id,
            }
        }
        JobKind::GetImageDistribution => {
            // Answered while the caller waits: by default as long as resolving an image may take.
            let d = check_distribution(
                req.args.take(),
                std::time::Duration::from_secs(s.config.jobs.resolve_timeout_secs.max(1)),
            )?;
            // Its walk checks the destination (URL, redirects, token realm) as it runs.
            rate_limit(&s, &clusters, &targets)?;
            return distribution(&s, &d, &targets).await;
        }
    };
    rate_limit(&s, &clusters, &targets)?;
    let job =
        s.db.create_job(&NewJobRow {
            kind: kind.as_str(),
            bio: &stored.bio,
            args: &stored.shown,
            plan: &stored.plan,
            secrets: &stored.secrets,
            clusters: &targets,
            user_id: Some(caller.user_id),
        })
        .await?;
    s.metrics.jobs.with_label_values(&["created"]).inc();
    tracing::info!(job = job.id, task_id = %job.task_id, kind = kind.as_str(), what = %stored.what, "job created");
    s.job_created.notify_one();
    Ok((StatusCode::CREATED, Json(shown(&clusters, job))))
}

/// What a stored job is created from.
struct StoredJob {
    bio: String,
    shown: Value,
    plan: Value,
    secrets: Value,
    /// For the log line: the URL or task.
    what: String,
}

/// A 400 naming `args.url` when `u` leads where the destination policy refuses.
async fn check_destination(s: &AppState, u: &str) -> Result<(), ApiError> {
    let parsed = reqwest::Url::parse(u)
        .map_err(|e| ApiError::bad("args.url", format!("{}: {e}", crate::redact::url(u))))?;
    s.destinations
        .check_url(&parsed)
        .await
        .map_err(|e| ApiError::bad("args.url", e.to_string()))
}

/// A 429 when the target clusters' job rate limits are used up this second.
fn rate_limit(s: &AppState, clusters: &[Cluster], targets: &[i64]) -> Result<(), ApiError> {
    let limits: Vec<(i64, u32)> = clusters
        .iter()
        .filter(|c| targets.is_empty() || targets.contains(&c.id))
        .map(|c| (c.id, c.config.job_rate_limit))
        .collect();
    if s.limiter.try_take(&limits) {
        return Ok(());
    }
    s.metrics.jobs.with_label_values(&["rate_limited"]).inc();
    Err(ApiError::status(
        StatusCode::TOO_MANY_REQUESTS,
        "rate limit exceeded: too many jobs for the cluster(s) this second; retry later or raise config.job_rate_limit",
    ))
}

/// get_image_distribution, answered at once.
async fn distribution(
    s: &AppState,
    d: &crate::jobs::task_args::Distribution,
    targets: &[i64],
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let lookup = Lookup {
        db: &s.db,
        dialer: &s.dialer,
        destinations: s.destinations.clone(),
    };
    match lookup.run(d, targets).await {
        Ok(v) => Ok((StatusCode::OK, Json(v))),
        Err(DistributionError::Refused(e)) => Err(ApiError::bad("args.url", e.to_string())),
        Err(e @ DistributionError::Timeout(_)) => {
            Err(ApiError::status(StatusCode::GATEWAY_TIMEOUT, e.to_string()))
        }
        Err(e @ DistributionError::NoCluster(_)) => {
            Err(ApiError::status(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e) => Err(ApiError::status(StatusCode::BAD_GATEWAY, e.to_string())),
    }
}

/// `?state=&type=&page=&per_page=`
#[derive(Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

/// `GET /jobs`: newest first, filtered and paged.
pub async fn list(
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let state = q
        .state
        .as_deref()
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(|e| ApiError::bad("state", e.to_string()))?;
    let query = JobQuery {
        state,
        kind: q.kind,
        page: q.page.unwrap_or(1),
        per_page: q.per_page.unwrap_or(50),
    };
    let (jobs, total) = s.db.jobs(&query).await?;
    let clusters = s.db.clusters().await?;
    let out: Vec<Value> = jobs.into_iter().map(|j| shown(&clusters, j)).collect();
    Ok(Json(
        json!({"jobs": out, "total": total, "page": query.page.max(1), "per_page": query.per_page.clamp(1, 1000)}),
    ))
}

/// `GET /jobs/{id}`
pub async fn get(State(s): State<AppState>, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    let job = s.db.job(id).await?;
    Ok(Json(shown(&s.db.clusters().await?, job)))
}
