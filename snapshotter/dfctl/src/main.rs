//! `dfctl`: the command line of Dragonfly-rs. `dfctl get URL -O FILE` downloads an ordinary
//! HTTP(S) file through the swarm via the local daemon, with a progress bar; `dfctl image pull`
//! pulls an image into containerd through the swarm; `preheat`, `task get|delete`,
//! `image distribution`, `jobs`, `token` and `clusters` talk to the manager.

mod get;
mod image;
mod manager;
mod task;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Dragonfly-rs command line.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "Dragonfly-rs: download files (get) and pull images (image pull) through the swarm; preheat, jobs, tokens and clusters on the manager"
)]
struct Args {
    /// The daemon's socket.
    #[arg(
        long,
        global = true,
        env = "DFCTL_SOCKET",
        default_value = "/run/dragonfly/snapshotter.sock"
    )]
    socket: PathBuf,
    /// The manager's URL (http://HOST:8080).
    #[arg(long, global = true, env = "DFCTL_MANAGER")]
    manager: Option<String>,
    /// Personal access token for the manager's Open API.
    #[arg(long, global = true, env = "DFCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token (printed once).
    Create {
        /// Its name.
        name: String,
        /// Scope: job, cluster (repeatable).
        #[arg(long = "scope", default_values_t = vec!["job".to_owned()])]
        scopes: Vec<String>,
        /// Days until it expires.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// List your tokens.
    List,
    /// Revoke a token by ID.
    Revoke {
        /// Token ID.
        id: i64,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Pull an image into containerd through the swarm (works with the registry down for an
    /// image preheated before).
    Pull(image::PullArgs),
    /// Which peers of the swarm hold which layers of an image (on the manager).
    Distribution(task::DistributionArgs),
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Images in containerd.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Download a file by URL through the swarm.
    Get(get::GetArgs),
    /// Preheat an image (REGISTRY/REPO:TAG or a manifest URL) or, with --file, a file URL.
    Preheat(PreheatArgs),
    /// Tasks in the swarm: which peers hold one, or remove one from every peer (on the manager).
    Task {
        #[command(subcommand)]
        command: task::TaskCommand,
    },
    /// List recent jobs, or show one.
    Jobs {
        /// Job ID.
        id: Option<i64>,
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<String>,
    },
    /// Personal access tokens (signs in with --user and --password).
    Token(TokenArgs),
    /// List scheduler clusters (token with the cluster scope).
    Clusters,
}

#[derive(clap::Args, Debug)]
struct PreheatArgs {
    /// Image reference, manifest URL, or file URL (with --file).
    target: String,
    /// The target is a file URL.
    #[arg(long)]
    file: bool,
    /// os/arch[/variant] for multi-platform images.
    #[arg(long)]
    platform: Option<String>,
    /// single_seed_peer, all_seed_peers or all_peers.
    #[arg(long, default_value = "single_seed_peer")]
    scope: String,
    /// Registry user.
    #[arg(long)]
    username: Option<String>,
    /// Registry password.
    #[arg(long, env = "DFCTL_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// The registry speaks plain HTTP.
    #[arg(long)]
    plain_http: bool,
    /// Wait for the job to end, showing its progress and results.
    #[arg(long)]
    wait: bool,
    /// No spinner.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// User to sign in as.
    #[arg(long, default_value = "root", global = true)]
    user: String,
    /// Password (or DFCTL_PASSWORD).
    #[arg(long, env = "DFCTL_PASSWORD", hide_env_values = true, global = true)]
    password: Option<String>,
    #[command(subcommand)]
    command: TokenCommand,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let manager = || manager::Manager::new(args.manager.clone(), args.token.clone());
    match args.command {
        Command::Image {
            command: ImageCommand::Pull(pull),
        } => image::pull(daemon(&args.socket).await?, pull).await,
        Command::Image {
            command: ImageCommand::Distribution(d),
        } => task::distribution(&manager()?, d).await,
        Command::Task { command } => task::task(&manager()?, command).await,
        Command::Get(get) => get::get(daemon(&args.socket).await?, get).await,
        Command::Preheat(p) => preheat(&manager()?, p).await,
        Command::Jobs { id: Some(id), .. } => show_job(&manager()?, id).await,
        Command::Jobs { id: None, state } => list_jobs(&manager()?, state.as_deref()).await,
        Command::Clusters => clusters(&manager()?).await,
        Command::Token(t) => token(&manager()?, t).await,
    }
}

/// A channel to the local daemon's socket.
async fn daemon(socket: &Path) -> anyhow::Result<tonic::transport::Channel> {
    containerd_client::connect(socket).await.with_context(|| {
        format!(
            "cannot connect to the daemon at {} (is dragonfly-snapshotter running? --socket)",
            socket.display()
        )
    })
}

async fn preheat(m: &manager::Manager, p: PreheatArgs) -> anyhow::Result<()> {
    let url = if p.file {
        p.target
    } else {
        manager::manifest_url(&p.target, p.plain_http)?
    };
    let mut a = serde_json::json!({"type": if p.file { "file" } else { "image" }, "url": url, "scope": p.scope});
    if let Some(platform) = p.platform {
        a["platform"] = platform.into();
    }
    manager::credentials(&mut a, p.username, p.password)?;
    let job = m.create_job("preheat", a).await?;
    let id = job["id"].as_i64().context("no job id in the answer")?;
    println!(
        "job {id} ({}) {}",
        job["task_id"].as_str().unwrap_or_default(),
        job["state"].as_str().unwrap_or_default()
    );
    if p.wait {
        manager::wait(m, id, p.quiet).await?;
    }
    Ok(())
}

async fn show_job(m: &manager::Manager, id: i64) -> anyhow::Result<()> {
    let job = m.job(id).await?;
    println!(
        "job {id}: {} ({})  {}",
        job["state"].as_str().unwrap_or_default(),
        job["task_id"].as_str().unwrap_or_default(),
        job["args"]["url"].as_str().unwrap_or_default()
    );
    manager::print_results(&job);
    print!("{}", job["log"].as_str().unwrap_or_default());
    Ok(())
}

async fn list_jobs(m: &manager::Manager, state: Option<&str>) -> anyhow::Result<()> {
    let v = m.jobs(state).await?;
    for j in v["jobs"].as_array().into_iter().flatten() {
        let what = j["args"]["url"]
            .as_str()
            .filter(|u| !u.is_empty())
            .or(j["args"]["task_id"].as_str())
            .unwrap_or_default();
        println!(
            "{:>6}  {:<11}  {:<8}  {:<16}  {}  {what}",
            j["id"],
            j["type"].as_str().unwrap_or_default(),
            j["state"].as_str().unwrap_or_default(),
            j["args"]["scope"].as_str().unwrap_or_default(),
            j["created_at"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

async fn clusters(m: &manager::Manager) -> anyhow::Result<()> {
    let v = m.clusters().await?;
    for c in v.as_array().into_iter().flatten() {
        println!(
            "{:>4}  {:<20}  default={}  scopes={}  job_rate_limit={}",
            c["id"],
            c["name"].as_str().unwrap_or_default(),
            c["is_default"],
            c["scopes"],
            c["config"]["job_rate_limit"]
        );
    }
    Ok(())
}

async fn token(m: &manager::Manager, t: TokenArgs) -> anyhow::Result<()> {
    let password = t
        .password
        .context("signing in needs --password (or DFCTL_PASSWORD)")?;
    let session = m.sign_in(&t.user, &password).await?;
    match t.command {
        TokenCommand::Create { name, scopes, days } => {
            let body = serde_json::json!({"name": name, "scopes": scopes, "expires_in_days": days});
            let t = m
                .tokens(&session, reqwest::Method::POST, "", Some(body))
                .await?;
            eprintln!(
                "token {} (id {}), scopes {}, expires {}; shown only now:",
                t["name"].as_str().unwrap_or_default(),
                t["id"],
                t["scopes"],
                t["expired_at"].as_str().unwrap_or_default()
            );
            println!("{}", t["token"].as_str().unwrap_or_default());
        }
        TokenCommand::List => {
            let v = m.tokens(&session, reqwest::Method::GET, "", None).await?;
            for t in v.as_array().into_iter().flatten() {
                println!(
                    "{:>4}  {:<20}  {:<8}  {}  expires {}",
                    t["id"],
                    t["name"].as_str().unwrap_or_default(),
                    t["state"].as_str().unwrap_or_default(),
                    t["scopes"],
                    t["expired_at"].as_str().unwrap_or_default()
                );
            }
        }
        TokenCommand::Revoke { id } => {
            m.tokens(&session, reqwest::Method::DELETE, &format!("/{id}"), None)
                .await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}
