//! `dragonfly-scheduler`: tells peers which parents to fetch which pieces from.

use std::path::PathBuf;

use clap::Parser;
use dragonfly_scheduler::config::Config;

/// The Dragonfly-rs scheduler.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// YAML configuration (see config/scheduler.yaml); runs with defaults without one.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// gRPC listen address (overrides the config).
    #[arg(long)]
    address: Option<std::net::SocketAddr>,
    /// Log filter (overrides the config).
    #[arg(long)]
    log_level: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(a) = args.address {
        config.address = a;
    }
    if let Some(l) = args.log_level {
        config.log.level = l;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .map_err(|e| anyhow::anyhow!("invalid log.level {:?}: {e}", config.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    dragonfly_scheduler::server::run(config, async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("stopping");
    })
    .await
}
