//! `dragonfly-manager`: clusters, users and tokens, preheat jobs, REST/Open API, console and
//! the gRPC service for schedulers and seed peers.

use std::path::PathBuf;

use clap::Parser;
use dragonfly_manager::config::Config;

/// Command line.
#[derive(Parser)]
#[command(
    version,
    about = "Dragonfly-rs manager: clusters, preheat jobs, Open API, console"
)]
struct Cli {
    /// YAML config (see config/manager.yaml); without it every default applies.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides http.listen.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// Overrides grpc.listen.
    #[arg(long)]
    grpc: Option<std::net::SocketAddr>,
    /// Overrides data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides database.url.
    #[arg(long, env = "DRAGONFLY_DATABASE_URL")]
    database: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(a) = cli.http {
        config.http.listen = a;
    }
    if let Some(a) = cli.grpc {
        config.grpc.listen = a;
    }
    if let Some(d) = cli.data_dir {
        config.data_dir = d;
    }
    if let Some(u) = cli.database {
        config.database.url = u;
    }
    config.validate()?;
    dragonfly_runtime::log::init(&config.log)?;
    dragonfly_manager::server::start(config).await?;
    dragonfly_runtime::shutdown::signal_received().await;
    Ok(())
}
