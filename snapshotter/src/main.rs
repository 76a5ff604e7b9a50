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
    #[command(subcommand)]
    command: Option<Command>,
}

/// Commands besides serving.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Node set-up.
    #[command(subcommand)]
    Setup(Setup),
    /// Unmounts every lazy layer for good and drops the FUSE connections kept for the next
    /// daemon (a stopping daemon leaves its mounts to its successor). Stop the daemon first;
    /// running containers lose their lazy layers.
    UnmountAll,
    /// Runs the fd holder on `socket` (started by the daemon when it is not run by systemd;
    /// keeps lazy mounts' FUSE connections open while the daemon restarts).
    FdHolder {
        /// The holder's socket (`<root>/handoff/holder.sock` is where the daemon looks).
        #[arg(long)]
        socket: PathBuf,
        /// Keep running with nothing held (as a container of its own, e.g. a pod's sidecar);
        /// by default it exits after a while with nothing held.
        #[arg(long)]
        stay: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
enum Setup {
    /// Registers the daemon in containerd's config.toml (idempotent; a backup is kept; the
    /// file is rewritten only when something changes).
    Containerd {
        /// containerd's config file (version 2 or 3); default: `/etc/containerd/config.toml`,
        /// or on k3s and RKE2 their `config.toml.tmpl`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The daemon's socket (default: `address` of the daemon's config).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Also make `dragonfly` the CRI's snapshotter (Kubernetes pods pull through it).
        #[arg(long)]
        default_snapshotter: bool,
        /// Also have the CRI pass layer annotations (not needed: unlabelled layers are found).
        #[arg(long)]
        annotations: bool,
        /// Take the settings away again.
        #[arg(long)]
        undo: bool,
        /// Restart containerd (systemd) when the file changed.
        #[arg(long)]
        restart: bool,
    },
}

/// Restarts the first of `flavor`'s units that is active.
fn restart_containerd(flavor: dragonfly_snapshotter::setup::Flavor) -> anyhow::Result<()> {
    let active = |u: &str| {
        std::process::Command::new("systemctl")
            .args(["is-active", "--quiet", u])
            .status()
            .is_ok_and(|s| s.success())
    };
    let unit = flavor.units().iter().find(|u| active(u)).with_context(|| {
        format!(
            "none of the units {:?} is active; restart containerd yourself",
            flavor.units()
        )
    })?;
    let st = std::process::Command::new("systemctl")
        .args(["restart", unit])
        .status()
        .with_context(|| format!("cannot run systemctl restart {unit}"))?;
    anyhow::ensure!(st.success(), "systemctl restart {unit} failed: {st}");
    println!("{unit} restarted");
    Ok(())
}

fn setup(s: Setup, daemon_socket: PathBuf) -> anyhow::Result<()> {
    use dragonfly_snapshotter::setup::{apply, Applied, Flavor, SetupOptions};
    let Setup::Containerd {
        config,
        socket,
        default_snapshotter,
        annotations,
        undo,
        restart,
    } = s;
    let flavor = Flavor::detect();
    let config = config.unwrap_or_else(|| flavor.config_path());
    let o = SetupOptions {
        socket: socket.unwrap_or(daemon_socket),
        default_snapshotter,
        annotations,
        undo,
    };
    match apply(&config, &o)? {
        Applied::Unchanged => println!("{}: already set up; not touched", config.display()),
        Applied::Changed { backup } => {
            println!(
                "{}: updated (the old file is {})",
                config.display(),
                backup.display()
            );
            if restart {
                anyhow::ensure!(
                    std::path::Path::new("/run/systemd/system").exists(),
                    "no systemd here: restart containerd yourself to apply the change"
                );
                restart_containerd(flavor)?;
            } else {
                println!("restart containerd to apply it (or pass --restart)");
            }
        }
    }
    Ok(())
}

fn unmount_all(config: &Config) -> anyhow::Result<()> {
    let done = dragonfly_snapshotter::handoff::teardown::unmount_all(
        &config.address,
        &config.snapshots_dir(),
        &config.handoff_dir(),
    )?;
    println!(
        "detached {} mounts under {}; the fd holder let go of {} FUSE connections",
        done.detached,
        config.snapshots_dir().display(),
        done.released
    );
    Ok(())
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
    match args.command {
        Some(Command::Setup(s)) => return setup(s, config.address),
        Some(Command::UnmountAll) => return unmount_all(&config),
        Some(Command::FdHolder { socket, stay }) => {
            dragonfly_runtime::log::init(&config.log)?;
            return dragonfly_snapshotter::handoff::holder::serve(&socket, stay)
                .with_context(|| format!("fd holder on {}", socket.display()));
        }
        None => {}
    }
    dragonfly_runtime::log::init(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dragonfly-worker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dragonfly_snapshotter::daemon::run(config))
}
