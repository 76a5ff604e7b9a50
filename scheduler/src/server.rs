//! Wiring: the gRPC server, `/metrics`, and the reaper that expires silent hosts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dragonfly_proto::scheduler::scheduler_server::SchedulerServer;

use dragonfly_membership::client::Dialer;
use dragonfly_membership::server::Acceptor;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::service::SchedulerService;
use crate::state::State;

/// Runs the scheduler until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let state = Arc::new(State::with_limits(config.scheduling.limits()));
    let metrics = Metrics::new();
    if let Some(addr) = config.metrics.address {
        let (m, s) = (metrics.clone(), state.clone());
        dragonfly_runtime::metrics::spawn(addr, move || m.render(&s));
    }
    let keepalive = Duration::from_secs(u64::from(config.scheduling.keepalive_interval_secs));
    let task_ttl = Duration::from_secs(config.scheduling.task_ttl_secs);
    let reaper_state = state.clone();
    let reaper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(keepalive);
        loop {
            tick.tick().await;
            reaper_state.expire(keepalive * 3, task_ttl);
        }
    });
    let (acceptor, dialer) = membership(&config)?;
    let service = SchedulerService::new(state, config.scheduling.clone(), metrics, dialer.clone());
    let listener = tokio::net::TcpListener::bind(config.address)
        .await
        .with_context(|| format!("cannot listen on {}", config.address))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "scheduler serving");
    let registration = (!config.manager.address.is_empty()).then(|| {
        tokio::spawn(crate::registration::run(
            config.manager.clone(),
            local.port(),
            dialer,
        ))
    });
    let incoming = dragonfly_membership::server::incoming(listener, acceptor);
    let served = tonic::transport::Server::builder()
        .add_service(SchedulerServer::new(service).max_decoding_message_size(16 << 20))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    reaper.abort();
    if let Some(r) = registration {
        r.abort();
    }
    served.context("gRPC server failed")
}

/// How this scheduler accepts callers and dials peers and the manager: mutual TLS with the
/// configured credentials, or plain (said in the log: for loopback use only).
fn membership(config: &Config) -> anyhow::Result<(Acceptor, Dialer)> {
    match config
        .security
        .credentials()
        .context("cannot load the cluster credentials (security:)")?
    {
        Some(creds) => {
            tracing::info!(identity = %creds.identity(), "cluster members authenticate with mutual TLS");
            Ok((Acceptor::tls(&creds)?, Dialer::tls(&creds)?))
        }
        None => {
            tracing::warn!("no cluster credentials (security: ca, cert, key): anyone who reaches this scheduler may announce hosts, report pieces and start preheats; use it only on loopback or a network only members reach");
            Ok((Acceptor::plain(), Dialer::plain()))
        }
    }
}
