//! Registered schedulers and seed peers, with their state, for the console.

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::store::hosts::{Kind, Member};

/// `?scheduler_cluster_id=` (one cluster).
#[derive(Deserialize)]
pub struct ByCluster {
    /// Only this cluster.
    pub scheduler_cluster_id: Option<i64>,
}

/// `GET /api/v1/schedulers`
pub async fn schedulers(
    State(s): State<AppState>,
    Query(q): Query<ByCluster>,
) -> Result<Json<Vec<Member>>, ApiError> {
    Ok(Json(
        s.db.members(Kind::Scheduler, q.scheduler_cluster_id, false)
            .await?,
    ))
}

/// `GET /api/v1/seed-peers`
pub async fn seed_peers(
    State(s): State<AppState>,
    Query(q): Query<ByCluster>,
) -> Result<Json<Vec<Member>>, ApiError> {
    Ok(Json(
        s.db.members(Kind::SeedPeer, q.scheduler_cluster_id, false)
            .await?,
    ))
}
