//! `dfctl get URL -O FILE`: the local daemon downloads the file through the swarm and writes
//! it; this shows its progress.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use dragonfly_proto::dfdaemon::download_client::DownloadClient;
use dragonfly_proto::dfdaemon::DownloadRequest;

/// `dfctl get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
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
}

/// `Name: value` headers as a map.
fn parse_headers(headers: &[String]) -> anyhow::Result<HashMap<String, String>> {
    headers
        .iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("header {h:?} is not `Name: value`"))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

fn progress_bar(quiet: bool) -> indicatif::ProgressBar {
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
    bar
}

/// Asks the daemon on `channel` for the download and follows it to the end.
pub async fn get(channel: tonic::transport::Channel, a: GetArgs) -> anyhow::Result<()> {
    let output = if a.output.is_absolute() {
        a.output
    } else {
        std::env::current_dir()?.join(a.output)
    };
    let url = a.url;
    let mut stream = DownloadClient::new(channel)
        .download(DownloadRequest {
            url: url.clone(),
            headers: parse_headers(&a.headers)?,
            tag: a.tag,
            application: a.application,
            filtered_query_params: a.filtered_query_params,
            output_path: output.display().to_string(),
            digest: a.digest,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| format!("cannot download {url}"))?
        .into_inner();
    let bar = progress_bar(a.quiet);
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
    if !a.quiet {
        eprintln!("{url} -> {}", output.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_name_colon_value() {
        let h = parse_headers(&["X-Token: a:b".into(), "Accept:*/*".into()]).unwrap();
        assert_eq!(h["X-Token"], "a:b");
        assert_eq!(h["Accept"], "*/*");
        assert!(parse_headers(&["no colon".into()]).is_err());
    }
}
