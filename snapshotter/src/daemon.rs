//! Wiring: builds every component from the configuration and serves containerd's snapshots
//! API on a unix socket until a stop signal.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use dragonfly_proto::snapshots::snapshots_server::SnapshotsServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::snapshot::service::SnapshotService;
use crate::snapshot::Snapshotter;

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.root)
        .with_context(|| format!("cannot create the root directory {}", config.root.display()))?;
    let metrics = Metrics::new();
    let snapshotter = Arc::new(
        Snapshotter::open(&config.snapshots_dir(), &config.metadata_path(), None)
            .await
            .context("cannot open the snapshotter")?,
    );

    if let Some(addr) = config.metrics.address {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, m).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed; is the address in use? set metrics.address in the config");
            }
        });
    }

    let listener = bind_socket(&config.address)?;
    tracing::info!(address = %config.address.display(), root = %config.root.display(), "serving containerd snapshots API");
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(SnapshotService::new(
            snapshotter.clone(),
            metrics.clone(),
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop_signal())
        .await
        .context("gRPC server failed")?;
    tracing::info!("stopped");
    Ok(())
}

fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot remove stale socket {}", path.display()))
        }
    }
    UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("can install a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = int.recv() => tracing::info!("SIGINT received, stopping"),
    }
}
