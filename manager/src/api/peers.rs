//! The peers of each cluster for the console: what one active scheduler of the cluster knows
//! of the hosts announced to it (address, type, IDC and location, when last heard from, how
//! many tasks and bytes it holds). A cluster that cannot be asked is named in `errors`.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::Json;
use dragonfly_proto::scheduler as pb;
use serde_json::{json, Value};

use super::error::ApiError;
use super::hosts::ByCluster;
use super::AppState;
use crate::jobs::schedulers;
use crate::jobs::task_runner::host_type_name;
use crate::store::clusters::Cluster;

/// The hosts `cluster`'s schedulers know (asked in turn until one answers).
async fn hosts_of(s: &AppState, cluster: &Cluster) -> Result<pb::ListHostsResponse, String> {
    let mut last_error = String::new();
    for m in schedulers::active(&s.db, cluster).await? {
        let answer = async {
            schedulers::connect(&s.dialer, &m, Duration::from_secs(10))
                .await?
                .list_hosts(pb::ListHostsRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|e| format!("scheduler {}: {}", schedulers::address(&m), e.message()))
        };
        match answer.await {
            Ok(r) => return Ok(r),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// `GET /api/v1/peers?scheduler_cluster_id=`: `{"peers": [...], "errors": [...]}`.
pub async fn list(
    State(s): State<AppState>,
    Query(q): Query<ByCluster>,
) -> Result<Json<Value>, ApiError> {
    let ids: Vec<i64> = q.scheduler_cluster_id.into_iter().collect();
    let clusters: Vec<Cluster> =
        s.db.clusters()
            .await?
            .into_iter()
            .filter(|c| ids.is_empty() || ids.contains(&c.id))
            .collect();
    let (mut peers, mut errors) = (Vec::new(), Vec::new());
    for c in &clusters {
        match hosts_of(&s, c).await {
            Ok(r) => {
                // A scheduler older than HostStatus sends none: those fields stay null.
                for (i, h) in r.hosts.iter().enumerate() {
                    let st = r.statuses.get(i);
                    peers.push(json!({
                        "scheduler_cluster_id": c.id,
                        "host_id": h.id, "hostname": h.hostname, "ip": h.ip, "port": h.upload_port,
                        "host_type": host_type_name(h.r#type), "idc": h.idc, "location": h.location,
                        "state": "active",
                        "seconds_since_seen": st.map(|x| x.seconds_since_seen),
                        "tasks": st.map(|x| x.tasks),
                        "present_bytes": st.map(|x| x.present_bytes),
                    }));
                }
            }
            Err(e) => errors.push(json!({"scheduler_cluster_id": c.id, "error": e})),
        }
    }
    Ok(Json(json!({"peers": peers, "errors": errors})))
}
