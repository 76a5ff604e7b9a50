//! Jobs over `/api/v1/jobs` (console session) and `/oapi/v1/jobs` (token with the `job`
//! scope): create (PENDING, answered at once; 429 beyond the clusters' rate limits), list,
//! get. Secrets never appear in answers. A URL whose host resolves to a refused address
//! (see [`crate::jobs::destination`]) is a 400 naming the URL and the address.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::jobs::args::{check, CreateJob};
use crate::jobs::model::JobState;
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

/// `POST /jobs`: checks the request, applies the clusters' rate limits and stores the job.
pub async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<CreateJob>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new = check(
        req,
        std::time::Duration::from_secs(s.config.jobs.timeout_secs),
    )?;
    let clusters = s.db.clusters().await?;
    for id in &new.clusters {
        if !clusters.iter().any(|c| c.id == *id) {
            return Err(ApiError::bad(
                "scheduler_cluster_ids",
                format!("no scheduler cluster {id}"),
            ));
        }
    }
    for u in &new.preheat.urls {
        let parsed = reqwest::Url::parse(u)
            .map_err(|e| ApiError::bad("args.url", format!("{}: {e}", crate::redact::url(u))))?;
        s.destinations
            .check_url(&parsed)
            .await
            .map_err(|e| ApiError::bad("args.url", e.to_string()))?;
    }
    let limits: Vec<(i64, u32)> = clusters
        .iter()
        .filter(|c| new.clusters.is_empty() || new.clusters.contains(&c.id))
        .map(|c| (c.id, c.config.job_rate_limit))
        .collect();
    if !s.limiter.try_take(&limits) {
        s.metrics.jobs.with_label_values(&["rate_limited"]).inc();
        return Err(ApiError::status(
            StatusCode::TOO_MANY_REQUESTS,
            "rate limit exceeded: too many jobs for the cluster(s) this second; retry later or raise config.job_rate_limit",
        ));
    }
    let plan = serde_json::to_value(&new.preheat).expect("plans serialize");
    let secrets = serde_json::to_value(&new.secrets).expect("secrets serialize");
    let job =
        s.db.create_job(&NewJobRow {
            kind: "preheat",
            bio: &new.bio,
            args: &new.shown,
            plan: &plan,
            secrets: &secrets,
            clusters: &new.clusters,
            user_id: Some(caller.user_id),
        })
        .await?;
    s.metrics.jobs.with_label_values(&["created"]).inc();
    tracing::info!(job = job.id, task_id = %job.task_id, url = %crate::redact::url(&new.preheat.urls[0]), kind = ?new.preheat.kind, "preheat job created");
    s.job_created.notify_one();
    Ok((StatusCode::CREATED, Json(shown(&clusters, job))))
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
