//! Registration with the manager (when `manager.address` is set): `UpdateScheduler` once,
//! then `KeepAlive` at the interval the manager asks for; when the manager has forgotten us
//! (NOT_FOUND, e.g. its database was reset) or was unreachable, register again. Failures are
//! logged and retried; scheduling never depends on the manager.

use std::net::IpAddr;
use std::time::Duration;

use dragonfly_proto::manager as pb;
use dragonfly_proto::manager::manager_client::ManagerClient;

use crate::config::ManagerConfig;

/// The local address that routes to `target` (`host:port`).
async fn local_ip_towards(target: &str) -> Option<IpAddr> {
    let addr = tokio::net::lookup_host(target).await.ok()?.next()?;
    let sock = tokio::net::UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .await
    .ok()?;
    sock.connect(addr).await.ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

/// Keeps this scheduler (gRPC on `port`) registered, forever.
pub async fn run(config: ManagerConfig, port: u16) {
    let endpoint = format!("http://{}", config.address);
    let ip = match config.advertise_ip {
        Some(ip) => ip,
        None => match local_ip_towards(&config.address).await {
            Some(ip) => ip,
            None => {
                tracing::error!(manager = %config.address, "cannot tell which local address reaches the manager; set manager.advertise_ip");
                return;
            }
        },
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let mut registered = false;
    let mut interval = Duration::from_secs(5);
    loop {
        let step = async {
            let ch = tonic::transport::Endpoint::from_shared(endpoint.clone())
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
                .connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(10))
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut c = ManagerClient::new(ch);
            if !registered {
                let r = c
                    .update_scheduler(pb::UpdateSchedulerRequest {
                        hostname: hostname.clone(),
                        ip: ip.to_string(),
                        port: u32::from(port),
                        idc: config.idc.clone(),
                        location: config.location.clone(),
                        scheduler_cluster_id: config.scheduler_cluster_id,
                    })
                    .await?
                    .into_inner();
                tracing::info!(manager = %config.address, id = r.id, cluster = r.scheduler_cluster_id, "registered with the manager");
            }
            c.keep_alive(pb::KeepAliveRequest {
                source_type: pb::SourceType::Scheduler as i32,
                ip: ip.to_string(),
                port: u32::from(port),
            })
            .await
            .map(|r| r.into_inner().interval_secs)
        }
        .await;
        match step {
            Ok(secs) => {
                registered = true;
                interval = Duration::from_secs(u64::from(secs.max(1)));
            }
            Err(e) => {
                if registered || e.code() != tonic::Code::Unavailable {
                    tracing::warn!(manager = %config.address, error = %e.message(), "manager keepalive failed; registering again");
                }
                registered = false;
            }
        }
        tokio::time::sleep(interval).await;
    }
}
