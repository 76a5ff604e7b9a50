//! Scheduler clusters over `/api/v1/clusters` (console session) and `/oapi/v1/clusters`
//! (token with the `cluster` scope): create, list, get, change, delete.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::error::{ApiError, JsonBody};
use super::AppState;
use crate::store::clusters::{Cluster, ClusterConfig, ClusterFields, Scopes};

/// A cluster as sent by clients.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterBody {
    name: String,
    #[serde(default)]
    bio: String,
    #[serde(default)]
    is_default: bool,
    #[serde(default)]
    scopes: Scopes,
    #[serde(default, alias = "scheduler_cluster_config")]
    config: ClusterConfig,
}

/// Checks a cluster body.
fn fields(b: ClusterBody) -> Result<ClusterFields, ApiError> {
    let name = b.name.trim().to_owned();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::bad("name", "name must have 1 to 100 characters"));
    }
    for c in &b.scopes.cidrs {
        crate::scopes::Cidr::parse(c)
            .map_err(|e| ApiError::bad("scopes.cidrs", format!("{c:?}: {e}")))?;
    }
    for h in &b.scopes.hostnames {
        regex::Regex::new(h).map_err(|e| {
            ApiError::bad(
                "scopes.hostnames",
                format!("{h:?} is not a regular expression: {e}"),
            )
        })?;
    }
    if b.config.job_rate_limit == 0 {
        return Err(ApiError::bad(
            "config.job_rate_limit",
            "job_rate_limit must be at least 1",
        ));
    }
    Ok(ClusterFields {
        name,
        bio: b.bio,
        is_default: b.is_default,
        scopes: b.scopes,
        config: b.config,
    })
}

/// `POST /clusters`
pub async fn create(
    State(s): State<AppState>,
    JsonBody(b): JsonBody<ClusterBody>,
) -> Result<(StatusCode, Json<Cluster>), ApiError> {
    let c = s.db.create_cluster(&fields(b)?).await?;
    tracing::info!(cluster = %c.name, id = c.id, "cluster created");
    Ok((StatusCode::CREATED, Json(c)))
}

/// `GET /clusters`
pub async fn list(State(s): State<AppState>) -> Result<Json<Vec<Cluster>>, ApiError> {
    Ok(Json(s.db.clusters().await?))
}

/// `GET /clusters/{id}`
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Cluster>, ApiError> {
    Ok(Json(s.db.cluster(id).await?))
}

/// `PATCH /clusters/{id}`
pub async fn update(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    JsonBody(b): JsonBody<ClusterBody>,
) -> Result<Json<Cluster>, ApiError> {
    let c = s.db.update_cluster(id, &fields(b)?).await?;
    s.limiter.forget(id);
    Ok(Json(c))
}

/// `DELETE /clusters/{id}`
pub async fn delete(
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    s.db.delete_cluster(id).await?;
    tracing::info!(id, "cluster deleted");
    Ok(StatusCode::NO_CONTENT)
}
