//! `dfctl task get|delete` and `dfctl image distribution`: the manager's get_task,
//! delete_task and get_image_distribution jobs over the Open API. A task is named by its ID
//! (`sha256:<hex>` for an image layer, `task:<hex>` or the hex `dfctl get` printed for a file)
//! or by the URL, tag, application and filtered query parameters its download used.

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::manager::{self, Manager};

/// Which task.
#[derive(clap::Args, Debug)]
pub struct TaskRef {
    /// The task ID, or with --url the file's URL.
    target: String,
    /// The target is a file URL (named with --tag, --application, --filtered-query-params).
    #[arg(long)]
    url: bool,
    /// The tag the download or preheat used.
    #[arg(long, requires = "url")]
    tag: Option<String>,
    /// The application the download or preheat used.
    #[arg(long, requires = "url")]
    application: Option<String>,
    /// `&`-separated query parameters left out of the task ID.
    #[arg(long, requires = "url")]
    filtered_query_params: Option<String>,
}

impl TaskRef {
    fn args(&self) -> Value {
        if !self.url {
            return json!({"task_id": self.target});
        }
        let mut a = json!({"url": self.target});
        for (k, v) in [
            ("tag", &self.tag),
            ("application", &self.application),
            ("filtered_query_params", &self.filtered_query_params),
        ] {
            if let Some(v) = v {
                a[k] = v.clone().into();
            }
        }
        a
    }
}

/// `dfctl task` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TaskCommand {
    /// Which peers hold a task (a get_task job), one line per peer.
    Get {
        #[command(flatten)]
        task: TaskRef,
    },
    /// Remove a task from every peer that holds it (a delete_task job); fails when a peer
    /// kept it (a running lazy mount reads it) or could not be asked.
    Delete {
        #[command(flatten)]
        task: TaskRef,
        /// Hosts asked at once.
        #[arg(long)]
        concurrent_peer_count: Option<u32>,
    },
}

/// Runs `cmd`: creates the job, waits for it and prints its results.
pub async fn task(m: &Manager, cmd: TaskCommand) -> anyhow::Result<()> {
    let (kind, args) = match cmd {
        TaskCommand::Get { task } => ("get_task", task.args()),
        TaskCommand::Delete {
            task,
            concurrent_peer_count,
        } => {
            let mut a = task.args();
            if let Some(n) = concurrent_peer_count {
                a["concurrent_peer_count"] = n.into();
            }
            ("delete_task", a)
        }
    };
    let job = m.create_job(kind, args).await?;
    let id = job["id"].as_i64().context("no job id in the answer")?;
    eprintln!(
        "job {id}: {kind} {}",
        job["args"]["task_id"].as_str().unwrap_or_default()
    );
    manager::wait(m, id, true).await
}

/// `dfctl image distribution IMAGE`: which peers hold which layers, one line per peer.
#[derive(clap::Args, Debug)]
pub struct DistributionArgs {
    /// Image reference (REGISTRY/REPO:TAG) or manifest URL.
    image: String,
    /// os/arch[/variant] for multi-platform images.
    #[arg(long)]
    platform: Option<String>,
    /// The registry speaks plain HTTP.
    #[arg(long)]
    plain_http: bool,
    /// Registry user.
    #[arg(long)]
    username: Option<String>,
    /// Registry password.
    #[arg(long, env = "DFCTL_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

/// Asks the manager and prints the layers, then a line per peer host.
pub async fn distribution(m: &Manager, d: DistributionArgs) -> anyhow::Result<()> {
    let mut a = json!({"url": manager::manifest_url(&d.image, d.plain_http)?});
    if let Some(p) = d.platform {
        a["platform"] = p.into();
    }
    manager::credentials(&mut a, d.username, d.password)?;
    let v = m.create_job("get_image_distribution", a).await?;
    print!("{}", render_distribution(&v));
    if let Some(errors) = v["errors"].as_array().filter(|e| !e.is_empty()) {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| {
                format!(
                    "cluster {}: {}",
                    e["scheduler_cluster_id"],
                    e["error"].as_str().unwrap_or_default()
                )
            })
            .collect();
        bail!("some clusters could not be asked:\n{}", lines.join("\n"));
    }
    Ok(())
}

/// The answer as text: each layer, then each peer with the layers it holds (`n/N`).
fn render_distribution(v: &Value) -> String {
    let layers = v["image"]["layers"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    for (i, l) in layers.iter().enumerate() {
        out.push_str(&format!(
            "layer {}  {}  {} B\n",
            i + 1,
            l["digest"].as_str().unwrap_or_default(),
            l["size"]
        ));
    }
    for p in v["peers"].as_array().into_iter().flatten() {
        let held: Vec<usize> = p["cached_layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| layers.iter().position(|l| l["digest"] == c["digest"]))
            .map(|i| i + 1)
            .collect();
        out.push_str(&format!(
            "cluster {}  {:<6}  {} ({})  {}/{} layers: {}\n",
            p["scheduler_cluster_id"],
            p["host_type"].as_str().unwrap_or_default(),
            p["hostname"].as_str().unwrap_or_default(),
            p["ip"].as_str().unwrap_or_default(),
            held.len(),
            layers.len(),
            held.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_named_by_id_or_by_url_signature() {
        let by_id = TaskRef {
            target: "sha256:ab".into(),
            url: false,
            tag: None,
            application: None,
            filtered_query_params: None,
        };
        assert_eq!(by_id.args(), json!({"task_id": "sha256:ab"}));
        let by_url = TaskRef {
            target: "http://h/f".into(),
            url: true,
            tag: Some("v1".into()),
            application: None,
            filtered_query_params: Some("x&y".into()),
        };
        assert_eq!(
            by_url.args(),
            json!({"url": "http://h/f", "tag": "v1", "filtered_query_params": "x&y"})
        );
    }

    #[test]
    fn the_distribution_shows_which_peer_holds_which_layer() {
        let v = json!({
            "image": {"layers": [{"digest": "sha256:a", "size": 3}, {"digest": "sha256:b", "size": 4}]},
            "peers": [{"scheduler_cluster_id": 1, "host_type": "super", "hostname": "seed", "ip": "10.0.0.1",
                       "cached_layers": [{"digest": "sha256:b"}]}],
        });
        let text = render_distribution(&v);
        assert!(text.contains("layer 2  sha256:b  4 B"), "{text}");
        assert!(text.contains("seed (10.0.0.1)  1/2 layers: 2"), "{text}");
    }
}
