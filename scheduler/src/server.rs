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
    let (acceptor, dialer) = membership(&config).await?;
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

/// Where joined credentials are kept when `security.dir` is not set.
const DEFAULT_CREDENTIALS_DIR: &str = "/var/lib/dragonfly/scheduler/credentials";

/// How this scheduler accepts callers and dials peers and the manager: mutual TLS with the
/// configured credentials (files, or joined with a token and renewed), or plain (said in the
/// log: for loopback use only).
async fn membership(config: &Config) -> anyhow::Result<(Acceptor, Dialer)> {
    let obtained = match &config.security.join {
        Some(join) => {
            let me = joining_member(config, &join.manager).await?;
            let dir = std::path::Path::new(DEFAULT_CREDENTIALS_DIR);
            Some(config.security.join(me, dir).await?)
        }
        None => config
            .security
            .credentials()?
            .map(dragonfly_membership::Obtained::files),
    };
    match obtained {
        Some(o) => {
            let creds = o.credentials;
            anyhow::ensure!(
                creds.identity().role == dragonfly_membership::Role::Scheduler,
                "security: the certificate is a {}'s, not a scheduler's",
                creds.identity().role.as_str()
            );
            if let Some(renewal) = o.renewal {
                tokio::spawn(renewal);
            }
            tracing::info!(identity = %creds.identity(), "cluster members authenticate with mutual TLS");
            Ok((Acceptor::tls(&creds)?, Dialer::tls(&creds)?))
        }
        None => {
            tracing::warn!("no cluster credentials (security: ca, cert, key, or join): anyone who reaches this scheduler may announce hosts, report pieces and start preheats; use it only on loopback or a network only members reach");
            Ok((Acceptor::plain(), Dialer::plain()))
        }
    }
}

/// Who this scheduler joins as: `<ip>-<host name>`, at the address it advertises (or the one
/// that routes to the manager).
async fn joining_member(
    config: &Config,
    manager: &str,
) -> anyhow::Result<dragonfly_membership::join::Member> {
    let ip = match config.manager.advertise_ip {
        Some(ip) => ip,
        None => dragonfly_runtime::registration::local_ip_towards(manager)
            .await
            .with_context(|| format!("cannot tell which local address reaches the manager {manager}; set manager.advertise_ip"))?,
    };
    let hostname = dragonfly_runtime::registration::hostname("scheduler");
    // With the address, as a host ID is: a pod that comes back with another address is a new
    // member (the manager binds an ID to the addresses it joined from).
    let identity = dragonfly_membership::Identity::new(
        dragonfly_membership::Role::Scheduler,
        &format!("{ip}-{hostname}"),
    )?;
    Ok(dragonfly_membership::join::Member {
        identity,
        ips: vec![ip],
        names: Vec::new(),
    })
}
