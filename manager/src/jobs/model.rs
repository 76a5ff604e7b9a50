//! The shapes of a job as it is stored and answered: its state, and its result (per cluster,
//! which hosts hold which task — preheated, found or deleted; while a preheat runs, each
//! task's live progress). Dragonfly's field
//! names (`job_states`, `success_tasks`, `failure_tasks`) are kept, so scripts written for
//! Dragonfly read ours.

use std::fmt;
use std::str::FromStr;

use dragonfly_task::TaskRole;
use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobState {
    /// Stored, not claimed by a runner yet (or put back after its manager died).
    Pending,
    /// A runner works on it (and heartbeats).
    Running,
    /// Every task reached its targets.
    Success,
    /// It ended without reaching every target; its log says why.
    Failure,
}

impl JobState {
    /// The stored and answered name (`PENDING`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Running => "RUNNING",
            JobState::Success => "SUCCESS",
            JobState::Failure => "FAILURE",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state {0:?} is not PENDING, RUNNING, SUCCESS or FAILURE")]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<JobState, UnknownState> {
        match s {
            "PENDING" => Ok(JobState::Pending),
            "RUNNING" => Ok(JobState::Running),
            "SUCCESS" => Ok(JobState::Success),
            "FAILURE" => Ok(JobState::Failure),
            other => Err(UnknownState(other.to_owned())),
        }
    }
}

/// A job's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// One entry per target cluster, when the job has reached it.
    #[serde(default)]
    pub job_states: Vec<ClusterOutcome>,
    /// While a preheat runs (and after): per task, how far its target hosts have got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<TaskProgress>,
}

/// What a preheat did in one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterOutcome {
    /// The cluster.
    pub scheduler_cluster_id: i64,
    /// SUCCESS when every task reached a host there.
    pub state: JobState,
    /// Host-task pairs that are done.
    pub success_tasks: Vec<HostTask>,
    /// Host-task pairs that failed, with why.
    pub failure_tasks: Vec<HostTask>,
    /// Why the cluster could not be worked on at all (no scheduler, …); empty otherwise.
    pub error: String,
    /// get_task: the peers of the cluster holding the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<TaskPeer>>,
}

/// A peer holding a task (get_task results), with Dragonfly's fields and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPeer {
    /// The peer (one host's download of the task).
    pub id: String,
    /// Its host's ID.
    pub host_id: String,
    /// Its host.
    pub hostname: String,
    /// Its host's address.
    pub ip: String,
    /// `normal` or `super` (a seed peer), as Dragonfly names them.
    pub host_type: String,
    /// Pieces it holds.
    pub pieces: u32,
    /// Bytes it holds.
    pub present_bytes: u64,
    /// It holds every piece.
    pub finished: bool,
    /// When it registered (RFC 3339).
    pub created_at: String,
    /// Its last piece (RFC 3339).
    pub updated_at: String,
}

impl ClusterOutcome {
    /// A cluster that answered: SUCCESS when `ok`.
    pub fn answered(scheduler_cluster_id: i64, ok: bool) -> ClusterOutcome {
        ClusterOutcome {
            scheduler_cluster_id,
            state: if ok {
                JobState::Success
            } else {
                JobState::Failure
            },
            success_tasks: Vec::new(),
            failure_tasks: Vec::new(),
            error: String::new(),
            peers: None,
        }
    }
}

impl ClusterOutcome {
    /// A cluster that could not be worked on.
    pub fn failed(scheduler_cluster_id: i64, error: String) -> ClusterOutcome {
        ClusterOutcome {
            error,
            ..ClusterOutcome::answered(scheduler_cluster_id, false)
        }
    }
}

/// One task on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostTask {
    /// The task.
    pub task_id: String,
    /// Its origin URL (signed-URL parameters are the user's own).
    pub url: String,
    /// The host.
    pub hostname: String,
    /// The host's address.
    pub ip: String,
    /// delete_task: `normal` or `super`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_type: String,
    /// delete_task: bytes the host freed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub freed_bytes: u64,
    /// Why it failed (failures only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Live progress of one task, summed over its target hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// The task.
    pub task_id: String,
    /// Its origin URL.
    pub url: String,
    /// Manifest, config, layer or file.
    pub role: TaskRole,
    /// Its size, when known.
    pub content_length: u64,
    /// Hosts reporting on it.
    pub hosts: usize,
    /// Bytes they hold.
    pub present_bytes: u64,
    /// Bytes they will hold when done.
    pub total_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_results_keep_dragonflys_names() {
        for s in [
            JobState::Pending,
            JobState::Running,
            JobState::Success,
            JobState::Failure,
        ] {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("DONE".parse::<JobState>().is_err());
        let r = JobResult {
            job_states: vec![ClusterOutcome::failed(3, "no scheduler".into())],
            progress: Vec::new(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["job_states"][0]["state"], "FAILURE");
        assert_eq!(v["job_states"][0]["success_tasks"], serde_json::json!([]));
        assert!(v.get("progress").is_none());
        let empty: JobResult = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, JobResult::default());
    }
}
