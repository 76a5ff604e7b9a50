//! Jobs over `/api/v1/jobs` (console session) and `/oapi/v1/jobs` (token with the `job`
//! scope): create (PENDING, answered at once; 429 beyond the clusters' rate limits), list,
//! get. Secrets never appear in answers.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{JobToken, Session};
use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::jobs::args::{check, CreateJob};
use crate::jobs::runner::JobPlan;
use crate::store::clusters::Cluster;
use crate::store::jobs::{Job, JobQuery};

/// A job with its clusters' names, as answered.
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

async fn create(
    s: AppState,
    user_id: Option<i64>,
    req: CreateJob,
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
    let plan = JobPlan {
        preheat: new.preheat,
        secrets: new.secrets,
    };
    let job =
        s.db.create_job(
            "preheat",
            &new.bio,
            &new.shown,
            &serde_json::to_value(&plan).expect("plan serializes"),
            &new.clusters,
            user_id,
        )
        .await?;
    s.metrics.jobs.with_label_values(&["created"]).inc();
    tracing::info!(job = job.id, task_id = %job.task_id, url = %plan.preheat.urls[0], kind = ?plan.preheat.kind, "preheat job created");
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

async fn list(s: AppState, q: ListQuery) -> Result<Json<Value>, ApiError> {
    if let Some(st) = &q.state {
        if !["PENDING", "RUNNING", "SUCCESS", "FAILURE"].contains(&st.as_str()) {
            return Err(ApiError::bad(
                "state",
                "state is PENDING, RUNNING, SUCCESS or FAILURE",
            ));
        }
    }
    let query = JobQuery {
        state: q.state,
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

async fn get(s: AppState, id: i64) -> Result<Json<Value>, ApiError> {
    let job = s.db.job(id).await?;
    Ok(Json(shown(&s.db.clusters().await?, job)))
}

/// `POST /api/v1/jobs`
pub async fn create_api(
    State(s): State<AppState>,
    session: Session,
    JsonBody(b): JsonBody<CreateJob>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    create(s, Some(session.user.id), b).await
}
/// `POST /oapi/v1/jobs`
pub async fn create_oapi(
    State(s): State<AppState>,
    t: JobToken,
    JsonBody(b): JsonBody<CreateJob>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    create(s, Some(t.0.user_id), b).await
}
/// `GET /api/v1/jobs`
pub async fn list_api(
    State(s): State<AppState>,
    _: Session,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    list(s, q).await
}
/// `GET /oapi/v1/jobs`
pub async fn list_oapi(
    State(s): State<AppState>,
    _: JobToken,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    list(s, q).await
}
/// `GET /api/v1/jobs/{id}`
pub async fn get_api(
    State(s): State<AppState>,
    _: Session,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    get(s, id).await
}
/// `GET /oapi/v1/jobs/{id}`
pub async fn get_oapi(
    State(s): State<AppState>,
    _: JobToken,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    get(s, id).await
}
