//! `dfctl` against the manager: preheat, task get and delete, image distribution, jobs,
//! tokens, clusters. The manager URL and the
//! personal access token come from flags, else `DFCTL_MANAGER` / `DFCTL_TOKEN`, else the
//! config file (`$XDG_CONFIG_HOME/dfctl/config.yaml`, `~/.config/dfctl/config.yaml` or
//! `/etc/dragonfly/dfctl.yaml`: `manager: URL`, `token: dfp_…`). Every HTTP error is turned into
//! a sentence that says what to do.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::{json, Value};

/// What the config file may hold.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    manager: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

fn file_config() -> anyhow::Result<FileConfig> {
    let mut candidates = Vec::new();
    if let Ok(x) = std::env::var("XDG_CONFIG_HOME") {
        candidates.push(std::path::PathBuf::from(x).join("dfctl/config.yaml"));
    }
    if let Ok(h) = std::env::var("HOME") {
        candidates.push(std::path::PathBuf::from(h).join(".config/dfctl/config.yaml"));
    }
    candidates.push("/etc/dragonfly/dfctl.yaml".into());
    for p in candidates {
        if let Ok(text) = std::fs::read_to_string(&p) {
            return serde_yaml_ng::from_str(&text)
                .with_context(|| format!("config {}", p.display()));
        }
    }
    Ok(FileConfig::default())
}

/// A client of one manager.
pub struct Manager {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Manager {
    /// From flags (already merged with the environment by clap) and the config file.
    pub fn new(url: Option<String>, token: Option<String>) -> anyhow::Result<Manager> {
        let file = file_config()?;
        let base = url.or(file.manager).context(
            "no manager given: use --manager URL, DFCTL_MANAGER, or `manager:` in ~/.config/dfctl/config.yaml",
        )?;
        Ok(Manager {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            token: token.or(file.token),
        })
    }

    fn token(&self) -> anyhow::Result<&str> {
        self.token.as_deref().context(
            "no personal access token: use --token, DFCTL_TOKEN, or `token:` in ~/.config/dfctl/config.yaml (create one with `dfctl token create`)",
        )
    }

    /// One call; `auth` is the bearer token. Errors say what to do.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut r = self.http.request(method, &url).bearer_auth(auth);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.with_context(|| {
            format!(
                "cannot reach the manager at {} (check --manager / DFCTL_MANAGER)",
                self.base
            )
        })?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let message = v["message"].as_str().unwrap_or(text.as_str()).to_owned();
        match status.as_u16() {
            400 => bail!(
                "the manager rejected the request{}: {message}",
                v["field"]
                    .as_str()
                    .map(|f| format!(" (field {f})"))
                    .unwrap_or_default()
            ),
            401 => bail!("not authorized: {message}"),
            403 => bail!("forbidden: {message}"),
            404 => bail!("not found: {message}"),
            429 => bail!(
                "the manager is rate limiting job creation; try again in a second ({message})"
            ),
            s => bail!("the manager answered {s}: {message}"),
        }
    }

    /// Signs in; the session token.
    pub async fn sign_in(&self, user: &str, password: &str) -> anyhow::Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/api/v1/users/signin",
                "",
                Some(json!({"name": user, "password": password})),
            )
            .await?;
        Ok(v["token"]
            .as_str()
            .context("no token in the sign-in answer")?
            .to_owned())
    }

    /// Creates a job of `kind` (preheat, get_task, delete_task); the job. A
    /// get_image_distribution's answer comes back at once instead.
    pub async fn create_job(&self, kind: &str, args: Value) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/oapi/v1/jobs",
            self.token()?,
            Some(json!({"type": kind, "args": args})),
        )
        .await
    }

    /// One job.
    pub async fn job(&self, id: i64) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::GET,
            &format!("/oapi/v1/jobs/{id}"),
            self.token()?,
            None,
        )
        .await
    }

    /// Recent jobs.
    pub async fn jobs(&self, state: Option<&str>) -> anyhow::Result<Value> {
        let q = state.map(|s| format!("&state={s}")).unwrap_or_default();
        self.call(
            reqwest::Method::GET,
            &format!("/oapi/v1/jobs?per_page=50{q}"),
            self.token()?,
            None,
        )
        .await
    }

    /// Clusters.
    pub async fn clusters(&self) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::GET,
            "/oapi/v1/clusters",
            self.token()?,
            None,
        )
        .await
    }

    /// Token management with a session.
    pub async fn tokens(
        &self,
        session: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.call(
            method,
            &format!("/api/v1/personal-access-tokens{path}"),
            session,
            body,
        )
        .await
    }
}

/// Adds registry credentials to job `args` (a user needs a password).
pub fn credentials(
    args: &mut Value,
    username: Option<String>,
    password: Option<String>,
) -> anyhow::Result<()> {
    if let Some(u) = username {
        args["username"] = u.into();
        args["password"] = password
            .context("--username needs --password (or DFCTL_REGISTRY_PASSWORD)")?
            .into();
    }
    Ok(())
}

/// `REGISTRY/REPO[:TAG|@DIGEST]` or a manifest URL → the manifest URL.
pub fn manifest_url(image: &str, plain_http: bool) -> anyhow::Result<String> {
    if image.starts_with("http://") || image.starts_with("https://") {
        return Ok(image.to_owned());
    }
    let (registry, rest) = image
        .split_once('/')
        .filter(|(r, _)| r.contains('.') || r.contains(':') || *r == "localhost")
        .with_context(|| {
            format!(
                "{image:?} does not start with a registry host (e.g. registry.example.com/app:v1)"
            )
        })?;
    let (repo, reference) = if let Some((r, d)) = rest.split_once('@') {
        (r, d.to_owned())
    } else {
        match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t.to_owned()),
            _ => (rest, "latest".to_owned()),
        }
    };
    let scheme = if plain_http { "http" } else { "https" };
    Ok(format!(
        "{scheme}://{registry}/v2/{repo}/manifests/{reference}"
    ))
}

/// One bar per task of the job's live progress (`result.progress`: role, task, bytes present
/// on its target hosts out of the total), created as tasks appear.
struct TaskBars {
    multi: indicatif::MultiProgress,
    bars: Vec<(String, indicatif::ProgressBar)>,
    layers: usize,
}

impl TaskBars {
    fn update(&mut self, job: &Value) {
        for t in job["result"]["progress"].as_array().into_iter().flatten() {
            let id = t["task_id"].as_str().unwrap_or_default();
            let bar = match self.bars.iter().find(|(i, _)| i == id) {
                Some((_, b)) => b.clone(),
                None => {
                    let role = t["role"].as_str().unwrap_or("task");
                    let label = if role == "layer" {
                        self.layers += 1;
                        format!("layer {}", self.layers)
                    } else {
                        role.to_owned()
                    };
                    let hex = id.rsplit(':').next().unwrap_or(id);
                    let b = self.multi.add(indicatif::ProgressBar::new(0));
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix:>10} {msg} {bar:30} {bytes:>10}/{total_bytes:<10}",
                        )
                        .expect("valid template"),
                    );
                    b.set_prefix(label);
                    b.set_message(hex[..hex.len().min(12)].to_owned());
                    self.bars.push((id.to_owned(), b.clone()));
                    b
                }
            };
            bar.set_length(t["total_bytes"].as_u64().unwrap_or(0));
            bar.set_position(t["present_bytes"].as_u64().unwrap_or(0));
        }
    }
}

/// Waits for a job, showing its state and a live bar per task (each layer of an image);
/// prints the per-task results. Fails on FAILURE.
pub async fn wait(m: &Manager, id: i64, quiet: bool) -> anyhow::Result<()> {
    let multi = if quiet {
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        indicatif::MultiProgress::new()
    };
    let status = multi.add(indicatif::ProgressBar::new_spinner());
    status.enable_steady_tick(Duration::from_millis(120));
    let mut bars = TaskBars {
        multi: multi.clone(),
        bars: Vec::new(),
        layers: 0,
    };
    let job = loop {
        let job = m.job(id).await?;
        let state = job["state"].as_str().unwrap_or_default().to_owned();
        let last = job["log"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        status.set_message(format!("job {id}: {state}  {last}"));
        bars.update(&job);
        if state == "SUCCESS" || state == "FAILURE" {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    status.finish_and_clear();
    for (_, b) in &bars.bars {
        b.finish();
    }
    print_results(&job);
    if job["state"] != "SUCCESS" {
        bail!(
            "job {id} failed:\n{}",
            job["log"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// Per-task results of a job, one line each (for get_task, one per peer holding the task).
pub fn print_results(job: &Value) {
    for state in job["result"]["job_states"].as_array().into_iter().flatten() {
        let cluster = &state["scheduler_cluster_id"];
        if let Some(e) = state["error"].as_str().filter(|e| !e.is_empty()) {
            println!("cluster {cluster}  FAIL  {e}");
        }
        for p in state["peers"].as_array().into_iter().flatten() {
            println!(
                "cluster {cluster}  {:<6}  {:<8}  {:>12} B  {} ({})  {}",
                p["host_type"].as_str().unwrap_or_default(),
                if p["finished"] == true {
                    "complete"
                } else {
                    "partial"
                },
                p["present_bytes"],
                p["hostname"].as_str().unwrap_or_default(),
                p["ip"].as_str().unwrap_or_default(),
                p["updated_at"].as_str().unwrap_or_default()
            );
        }
        for t in state["success_tasks"].as_array().into_iter().flatten() {
            println!(
                "cluster {cluster}  ok    {}  on {} ({})",
                t["task_id"].as_str().unwrap_or_default(),
                t["hostname"].as_str().unwrap_or_default(),
                t["ip"].as_str().unwrap_or_default()
            );
        }
        for t in state["failure_tasks"].as_array().into_iter().flatten() {
            println!(
                "cluster {cluster}  FAIL  {}  on {}: {}",
                t["task_id"].as_str().unwrap_or_default(),
                t["ip"].as_str().unwrap_or_default(),
                t["description"].as_str().unwrap_or_default()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_per_task_follows_the_jobs_progress() {
        let mut bars = TaskBars {
            multi: indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::hidden(),
            ),
            bars: Vec::new(),
            layers: 0,
        };
        let job = |present: u64| {
            serde_json::json!({"result": {"progress": [
                {"task_id": "sha256:aa", "role": "config", "present_bytes": 5, "total_bytes": 5},
                {"task_id": "sha256:bb", "role": "layer", "present_bytes": present, "total_bytes": 100},
                {"task_id": "sha256:cc", "role": "layer", "present_bytes": 0, "total_bytes": 0},
            ]}})
        };
        bars.update(&job(10));
        bars.update(&job(60));
        assert_eq!(bars.bars.len(), 3);
        let b = &bars.bars[1].1;
        assert_eq!((b.position(), b.length()), (60, Some(100)));
        assert_eq!(bars.bars[1].1.prefix(), "layer 1");
        assert_eq!(bars.bars[2].1.prefix(), "layer 2");
        assert_eq!(bars.bars[0].1.prefix(), "config");
    }

    #[test]
    fn image_references_become_manifest_urls() {
        assert_eq!(
            manifest_url("r.io/app:v1", false).unwrap(),
            "https://r.io/v2/app/manifests/v1"
        );
        assert_eq!(
            manifest_url("127.0.0.1:5000/a/b", true).unwrap(),
            "http://127.0.0.1:5000/v2/a/b/manifests/latest"
        );
        assert_eq!(
            manifest_url("r.io/app@sha256:ab", false).unwrap(),
            "https://r.io/v2/app/manifests/sha256:ab"
        );
        assert!(manifest_url("app:v1", false).is_err());
    }
}
