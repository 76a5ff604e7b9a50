//! `dfctl`: the command line of Dragonfly-rs. `dfctl get URL -O FILE` downloads an ordinary
//! HTTP(S) file through the swarm via the local daemon, with a progress bar; `dfctl image pull`
//! pulls an image into containerd through the swarm; `preheat`, `jobs`, `token` and `clusters`
//! talk to the manager.

mod image;
mod manager;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use dragonfly_proto::dfdaemon::download_client::DownloadClient;
use dragonfly_proto::dfdaemon::DownloadRequest;

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
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Images in containerd.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Download a file by URL through the swarm.
    Get {
        /// http:// or https:// URL.
        url: String,
        /// Where to write the file.
        #[arg(short = 'O', long)]
        output: PathBuf,
        /// Header for the origin, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Tag (part of the task ID).
        #[arg(long, default_value = "")]
        tag: String,
        /// Application (part of the task ID).
        #[arg(long, default_value = "")]
        application: String,
        /// Query parameter to leave out of the task ID (repeatable).
        #[arg(long = "filter")]
        filtered_query_params: Vec<String>,
        /// Expected sha256:<hex> of the file.
        #[arg(long, default_value = "")]
        digest: String,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Preheat an image (REGISTRY/REPO:TAG or a manifest URL) or, with --file, a file URL.
    Preheat {
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
    Token {
        /// User to sign in as.
        #[arg(long, default_value = "root", global = true)]
        user: String,
        /// Password (or DFCTL_PASSWORD).
        #[arg(long, env = "DFCTL_PASSWORD", hide_env_values = true, global = true)]
        password: Option<String>,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List scheduler clusters (token with the cluster scope).
    Clusters,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let manager = || manager::Manager::new(args.manager.clone(), args.token.clone());
    let daemon = || async {
        containerd_client::connect(&args.socket)
            .await
            .with_context(|| {
                format!(
                "cannot connect to the daemon at {} (is dragonfly-snapshotter running? --socket)",
                args.socket.display()
            )
            })
    };
    match args.command {
        Command::Image {
            command: ImageCommand::Pull(pull),
        } => image::pull(daemon().await?, pull).await,
        Command::Preheat {
            target,
            file,
            platform,
            scope,
            username,
            password,
            plain_http,
            wait,
            quiet,
        } => {
            let m = manager()?;
            let url = if file {
                target
            } else {
                manager::manifest_url(&target, plain_http)?
            };
            let mut a = serde_json::json!({"type": if file { "file" } else { "image" }, "url": url, "scope": scope});
            if let Some(p) = platform {
                a["platform"] = p.into();
            }
            if let Some(u) = username {
                a["username"] = u.into();
                a["password"] = password
                    .context("--username needs --password (or DFCTL_REGISTRY_PASSWORD)")?
                    .into();
            }
            let job = m.preheat(a).await?;
            let id = job["id"].as_i64().context("no job id in the answer")?;
            println!(
                "job {id} ({}) {}",
                job["task_id"].as_str().unwrap_or_default(),
                job["state"].as_str().unwrap_or_default()
            );
            if wait {
                manager::wait(&m, id, quiet).await?;
            }
            Ok(())
        }
        Command::Jobs { id: Some(id), .. } => {
            let job = manager()?.job(id).await?;
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
        Command::Jobs { id: None, state } => {
            let v = manager()?.jobs(state.as_deref()).await?;
            for j in v["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{:>6}  {:<8}  {:<16}  {}  {}",
                    j["id"],
                    j["state"].as_str().unwrap_or_default(),
                    j["args"]["scope"].as_str().unwrap_or_default(),
                    j["created_at"].as_str().unwrap_or_default(),
                    j["args"]["url"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Clusters => {
            let v = manager()?.clusters().await?;
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
        Command::Token {
            user,
            password,
            command,
        } => {
            let m = manager()?;
            let password = password.context("signing in needs --password (or DFCTL_PASSWORD)")?;
            let session = m.sign_in(&user, &password).await?;
            match command {
                TokenCommand::Create { name, scopes, days } => {
                    let t = m
                        .tokens(&session, reqwest::Method::POST, "", Some(serde_json::json!({"name": name, "scopes": scopes, "expires_in_days": days})))
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
        Command::Get {
            url,
            output,
            headers,
            tag,
            application,
            filtered_query_params,
            digest,
            quiet,
        } => {
            let mut hs = std::collections::HashMap::new();
            for h in headers {
                let (k, v) = h
                    .split_once(':')
                    .with_context(|| format!("header {h:?} is not `Name: value`"))?;
                hs.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            let output = if output.is_absolute() {
                output
            } else {
                std::env::current_dir()?.join(output)
            };
            let mut client = DownloadClient::new(daemon().await?);
            let mut stream = client
                .download(DownloadRequest {
                    url: url.clone(),
                    headers: hs,
                    tag,
                    application,
                    filtered_query_params,
                    output_path: output.display().to_string(),
                    digest,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))
                .with_context(|| format!("cannot download {url}"))?
                .into_inner();
            let bar = if quiet {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(0)
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            let mut done = false;
            while let Some(p) = stream
                .message()
                .await
                .map_err(|s| anyhow::anyhow!("download of {url} failed: {}", s.message()))?
            {
                bar.set_length(p.content_length);
                bar.set_position(p.completed_bytes);
                done = p.done;
            }
            bar.finish_and_clear();
            if !done {
                bail!("the daemon ended the download of {url} without finishing it; see its log");
            }
            if !quiet {
                eprintln!("{url} -> {}", output.display());
            }
            Ok(())
        }
    }
}
