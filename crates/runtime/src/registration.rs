//! Staying registered with the manager, for schedulers and seed peers: register once, then
//! `KeepAlive` at the interval the manager asks for; when the manager forgets the caller
//! (NOT_FOUND) or cannot be reached, register again. Failures are logged and retried forever;
//! nothing else waits on the manager.

use std::future::Future;
use std::time::Duration;

use dragonfly_proto::manager::manager_client::ManagerClient;
use dragonfly_proto::manager::{KeepAliveRequest, SourceType};

use dragonfly_membership::client::Dialer;
use dragonfly_membership::Role;

use crate::grpc::{endpoint, Timeouts};

/// The local address that routes to `target` (`host:port`): what to advertise when no address
/// is configured.
pub async fn local_ip_towards(target: &str) -> Option<std::net::IpAddr> {
    let addr = tokio::net::lookup_host(target).await.ok()?.next()?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
    sock.connect(addr).await.ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

/// This host's name (`/proc/sys/kernel/hostname`), or `fallback` when it cannot be read.
pub fn hostname(fallback: &str) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback.to_owned())
}

/// Who is registering.
#[derive(Debug, Clone)]
pub struct Registrant {
    /// Scheduler or seed peer.
    pub source_type: SourceType,
    /// Address the manager records.
    pub ip: String,
    /// Port the manager records.
    pub port: u32,
}

/// Keeps `who` registered with the manager at `address` (`host:port`), dialled through
/// `dialer`; `register` performs the type-specific registration call. Runs forever.
pub async fn keep_registered<F, Fut>(address: String, who: Registrant, dialer: Dialer, register: F)
where
    F: Fn(ManagerClient<tonic::transport::Channel>) -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    let mut registered = false;
    let mut interval = Duration::from_secs(5);
    loop {
        let step = async {
            let ch = endpoint(&address, Timeouts::CONTROL)
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            let ch = dialer
                .connect_channel(ch, &[Role::Manager])
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut c = ManagerClient::new(ch);
            if !registered {
                register(c.clone()).await?;
                tracing::info!(manager = %address, kind = ?who.source_type, "registered with the manager");
            }
            c.keep_alive(KeepAliveRequest {
                source_type: who.source_type as i32,
                ip: who.ip.clone(),
                port: who.port,
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
                    tracing::warn!(manager = %address, error = %e.message(), "manager keepalive failed; registering again");
                }
                registered = false;
            }
        }
        tokio::time::sleep(interval).await;
    }
}
