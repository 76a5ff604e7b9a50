//! Starting a seed peer on a task: the scheduler calls the seed's `Peer.TriggerDownload`.
//! The origin headers travel with the call and are never logged.

use std::time::Instant;

use dragonfly_membership::client::Dialer;
use dragonfly_membership::Role;
use dragonfly_proto::peer::peer_client::PeerClient;
use dragonfly_proto::peer::TriggerDownloadRequest;
use dragonfly_runtime::grpc::{connect_member, CallError, Timeouts};
use tonic::transport::Channel;

use crate::scheduling::SeedTrigger;
use crate::state::{HostInfo, SeedStatus, State};

/// A connected client of `host`'s peer service (dialled through `dialer`).
pub async fn peer_client(
    host: &HostInfo,
    dialer: &Dialer,
) -> Result<PeerClient<Channel>, CallError> {
    let address = if host.ip.contains(':') {
        format!("[{}]:{}", host.ip, host.upload_port)
    } else {
        format!("{}:{}", host.ip, host.upload_port)
    };
    let ch = connect_member(
        &format!("peer {}", host.id),
        &address,
        Timeouts::CONTROL,
        dialer,
        &[Role::Seed, Role::Peer],
    )
    .await?;
    Ok(PeerClient::new(ch))
}

/// Calls the seed; on failure marks the task's seed as failed so peers go to the origin.
pub async fn trigger(state: &State, dialer: &Dialer, t: SeedTrigger) {
    let task_id = t.task.id.clone();
    let res = async {
        peer_client(&t.host, dialer)
            .await?
            .trigger_download(TriggerDownloadRequest {
                task: Some(t.task),
                background: t.background,
            })
            .await
            .map(|r| r.into_inner().started)
            .map_err(|source| CallError::Status {
                who: format!("seed peer {}", t.host.id),
                source,
            })
    }
    .await;
    match res {
        Ok(started) => {
            tracing::info!(task = %task_id, seed = %t.host.id, started, "seed peer triggered")
        }
        Err(e) => {
            tracing::warn!(task = %task_id, seed = %t.host.id, error = %e, "cannot trigger the seed peer; peers will go to the origin");
            if let Some(task) = state.task(&task_id) {
                task.lock().expect("task lock").seed = SeedStatus::Failed { at: Instant::now() };
            }
        }
    }
}
