//! `dragonfly-snapshotter`: the Dragonfly-rs peer daemon (containerd proxy snapshotter).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use dragonfly_snapshotter::config::Config;

/// containerd proxy snapshotter serving eStargz and zstd:chunked layers lazily.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// YAML configuration file (every key optional; see config/snapshotter.yaml).
    #[arg(long, short = 'c', env = "DRAGONFLY_SNAPSHOTTER_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `root` from the config.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Overrides `address` (the unix socket containerd connects to).
    #[arg(long)]
    address: Option<PathBuf>,
    /// Overrides `log.level` (a tracing filter such as `info` or `debug`).
    #[arg(long)]
    log_level: Option<String>,
    /// Run as a seed peer (sets `p2p.seed_peer`): fetch tasks from their origin when the
    /// scheduler triggers it and serve their pieces. Needs `p2p.schedulers`.
    #[arg(long)]
    seed_peer: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(root) = args.root {
        config.root = root;
    }
    if let Some(address) = args.address {
        config.address = address;
    }
    if let Some(level) = args.log_level {
        config.log.level = level;
    }
    if args.seed_peer {
        config.p2p.seed_peer = true;
    }
    dragonfly_runtime::log::init(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dragonfly-worker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dragonfly_snapshotter::daemon::run(config))
}
