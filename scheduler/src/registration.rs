//! Registration with the manager (when `manager.address` is set): `UpdateScheduler`, then
//! keepalives (see `dragonfly_runtime::registration`). Scheduling never depends on the manager.

use dragonfly_proto::manager as pb;

use dragonfly_membership::client::Dialer;

use crate::config::ManagerConfig;

/// Keeps this scheduler (gRPC on `port`) registered, dialling the manager through `dialer`,
/// forever.
pub async fn run(config: ManagerConfig, port: u16, dialer: Dialer) {
    let ip = match config.advertise_ip {
        Some(ip) => ip,
        None => match dragonfly_runtime::registration::local_ip_towards(&config.address).await {
            Some(ip) => ip,
            None => {
                tracing::error!(manager = %config.address, "cannot tell which local address reaches the manager; set manager.advertise_ip");
                return;
            }
        },
    };
    let hostname = dragonfly_runtime::registration::hostname("localhost");
    let who = dragonfly_runtime::registration::Registrant {
        source_type: pb::SourceType::Scheduler,
        ip: ip.to_string(),
        port: u32::from(port),
    };
    let req = pb::UpdateSchedulerRequest {
        hostname,
        ip: ip.to_string(),
        port: u32::from(port),
        idc: config.idc.clone(),
        location: config.location.clone(),
        scheduler_cluster_id: config.scheduler_cluster_id,
    };
    dragonfly_runtime::registration::keep_registered(
        config.address.clone(),
        who,
        dialer,
        |mut c| {
            let req = req.clone();
            async move { c.update_scheduler(req).await.map(|_| ()) }
        },
    )
    .await;
}
