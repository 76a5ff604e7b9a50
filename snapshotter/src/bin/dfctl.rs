//! `dfctl`: the command line of a Dragonfly-rs node. `dfctl get URL -O FILE` downloads an
//! ordinary HTTP(S) file through the swarm via the local daemon, with a progress bar.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use dragonfly_proto::dfdaemon::download_client::DownloadClient;
use dragonfly_proto::dfdaemon::DownloadRequest;

/// Dragonfly-rs command line.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The daemon's socket.
    #[arg(
        long,
        global = true,
        env = "DFCTL_SOCKET",
        default_value = "/run/dragonfly/snapshotter.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
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
            let channel = containerd_client::connect(&args.socket).await.with_context(|| {
                format!("cannot connect to the daemon at {} (is dragonfly-snapshotter running? --socket)", args.socket.display())
            })?;
            let mut client = DownloadClient::new(channel);
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
