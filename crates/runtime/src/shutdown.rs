//! Stopping: every binary stops on SIGTERM (systemd, Kubernetes) and SIGINT (Ctrl-C).

use tokio::signal::unix::{signal, SignalKind};

/// Completes at the first SIGTERM or SIGINT, and logs which.
pub async fn signal_received() {
    let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("can install a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = int.recv() => tracing::info!("SIGINT received, stopping"),
    }
}
