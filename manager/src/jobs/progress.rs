//! A running job's log and result: log lines (URLs redacted, timestamped), the per-cluster
//! outcomes, and for a preheat the live progress of each task over its target hosts, which
//! the runner's heartbeat writes while the job runs.

use dragonfly_proto::scheduler as pb;
use dragonfly_task::TaskRole;

use super::model::{JobResult, TaskProgress};

/// A job's growing log and result.
pub struct Progress {
    /// What happened, for people.
    pub log: String,
    /// The result so far.
    pub result: JobResult,
    /// Per task, how far its target hosts have got (shown as `result.progress`).
    pub live: Vec<LiveTask>,
}

/// Live progress of one task.
pub struct LiveTask {
    task_id: String,
    url: String,
    /// Manifest, config, layer or file.
    role: TaskRole,
    content_length: u64,
    /// `cluster/host` → (present bytes, content length).
    hosts: std::collections::BTreeMap<String, (u64, u64)>,
}

impl LiveTask {
    fn progress(&self) -> TaskProgress {
        TaskProgress {
            task_id: self.task_id.clone(),
            url: crate::redact::url(&self.url),
            role: self.role,
            content_length: self.content_length,
            hosts: self.hosts.len(),
            present_bytes: self.hosts.values().map(|h| h.0).sum(),
            total_bytes: self
                .hosts
                .values()
                .map(|h| if h.1 == 0 { self.content_length } else { h.1 })
                .sum(),
        }
    }
}

impl Progress {
    /// A job that starts with `log`.
    pub fn new(log: String) -> Progress {
        Progress {
            log,
            result: JobResult::default(),
            live: Vec::new(),
        }
    }

    /// A copy of the log and result, with the live progress folded into the result.
    pub fn snapshot(&self) -> Progress {
        let mut result = self.result.clone();
        if !self.live.is_empty() {
            result.progress = self.live.iter().map(LiveTask::progress).collect();
        }
        Progress {
            log: self.log.clone(),
            result,
            live: Vec::new(),
        }
    }

    /// Records what a preheat target holds now.
    pub fn advance(&mut self, cluster_id: i64, p: &pb::PreheatProgress) {
        if let Some(t) = self.live.iter_mut().find(|t| t.task_id == p.task_id) {
            t.hosts.insert(
                format!("{cluster_id}/{}", p.host_id),
                (p.present_bytes, p.content_length),
            );
        }
    }

    /// Appends a log line; URLs in it lose their query values and user info.
    pub fn line(&mut self, s: impl AsRef<str>) {
        let t = chrono::Utc::now().format("%H:%M:%S");
        let s = crate::redact::text(s.as_ref());
        self.log.push_str(&format!("{t} {s}\n"));
    }
}

/// The live progress entries of `tasks`, each with the role image resolution gave it.
pub fn live_tasks(tasks: &[(pb::Task, TaskRole)]) -> Vec<LiveTask> {
    tasks
        .iter()
        .map(|(t, role)| LiveTask {
            task_id: t.id.clone(),
            url: t.url.clone(),
            role: *role,
            content_length: t.content_length,
            hosts: Default::default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_progress_sums_hosts_and_names_roles() {
        let task = |id: &str, url: &str, role| {
            let t = pb::Task {
                id: id.into(),
                url: url.into(),
                content_length: 10,
                ..Default::default()
            };
            (t, role)
        };
        let mut p = Progress {
            log: String::new(),
            result: JobResult::default(),
            live: live_tasks(&[
                task("m", "oci-manifest://r/a@sha256:1", TaskRole::Manifest),
                task("c", "oci://r/a@sha256:2", TaskRole::Config),
                task("l", "oci://r/a@sha256:3", TaskRole::Layer),
            ]),
        };
        for (host, present) in [("h1", 4), ("h2", 10), ("h1", 6)] {
            p.advance(
                7,
                &pb::PreheatProgress {
                    task_id: "l".into(),
                    host_id: host.into(),
                    present_bytes: present,
                    content_length: 10,
                },
            );
        }
        let shown = serde_json::to_value(p.snapshot().result).unwrap()["progress"].clone();
        let roles: Vec<&str> = shown
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["manifest", "config", "layer"]);
        assert_eq!(shown[2]["present_bytes"], 16);
        assert_eq!(shown[2]["total_bytes"], 20);
        assert_eq!(shown[2]["hosts"], 2);
        assert_eq!(shown[0]["hosts"], 0);
    }
}
