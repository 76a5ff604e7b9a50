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
    dragonfly_runtime::log::init(&config.log)?;
    dragonfly_scheduler::server::run(config, dragonfly_runtime::shutdown::signal_received()).await
}
