//! Schedulers from the manager: a peer without a static `p2p.schedulers` list asks the manager
//! (`ListSchedulers` with its hostname, address, IDC and location) which schedulers serve it,
//! uses the answer, caches it on disk (so a restart works while the manager is down) and asks
//! again every `p2p.manager_refresh_secs`. An empty or failed answer keeps the list it has.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dragonfly_membership::Role;
use dragonfly_proto::manager as pb;
use dragonfly_proto::manager::manager_client::ManagerClient;
use dragonfly_runtime::grpc::{connect_member, CallError, Timeouts};

use super::SchedulerPool;

async fn ask(manager: &str, pool: &SchedulerPool) -> Result<Vec<String>, CallError> {
    let ch = connect_member(
        "the manager",
        manager,
        Timeouts::CONTROL,
        pool.dialer(),
        &[Role::Manager],
    )
    .await?;
    let host = pool.host();
    let r = ManagerClient::new(ch)
        .list_schedulers(pb::ListSchedulersRequest {
            hostname: host.hostname.clone(),
            ip: host.ip.clone(),
            idc: host.idc.clone(),
            location: host.location.clone(),
        })
        .await
        .map_err(|source| CallError::Status {
            who: "the manager's scheduler list".into(),
            source,
        })?
        .into_inner();
    Ok(r.schedulers
        .into_iter()
        .map(|s| {
            if s.ip.contains(':') {
                format!("[{}]:{}", s.ip, s.port)
            } else {
                format!("{}:{}", s.ip, s.port)
            }
        })
        .collect())
}

fn load(cache: &PathBuf) -> Vec<String> {
    std::fs::read(cache)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(cache: &PathBuf, list: &[String]) {
    let tmp = cache.with_extension("tmp");
    let ok = std::fs::write(&tmp, serde_json::to_vec(list).expect("list serializes"))
        .and_then(|()| std::fs::rename(&tmp, cache));
    if let Err(e) = ok {
        tracing::warn!(path = %cache.display(), error = %e, "cannot cache the scheduler list");
    }
}

/// Keeps `pool`'s schedulers in step with the manager, forever.
pub async fn run(pool: Arc<SchedulerPool>, manager: String, cache: PathBuf, refresh: Duration) {
    let cached = load(&cache);
    if !cached.is_empty() {
        if let Err(e) = pool.set_schedulers(&cached) {
            tracing::warn!(error = %e, "cached scheduler list unusable");
        }
    }
    loop {
        match ask(&manager, &pool).await {
            Ok(list) if !list.is_empty() => match pool.set_schedulers(&list) {
                Ok(changed) => {
                    if changed {
                        save(&cache, &list);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the manager's scheduler list is unusable"),
            },
            Ok(_) => {
                tracing::warn!(manager = %manager, kept = ?pool.schedulers(), "the manager lists no active scheduler for this host; keeping the current list")
            }
            Err(e) => {
                tracing::warn!(error = %e, kept = ?pool.schedulers(), "keeping the current scheduler list")
            }
        }
        // Without any scheduler yet, ask again soon.
        let wait = if pool.schedulers().is_empty() {
            Duration::from_secs(1)
        } else {
            refresh
        };
        tokio::time::sleep(wait).await;
    }
}
