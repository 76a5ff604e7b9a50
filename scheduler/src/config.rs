//! The scheduler's YAML configuration; every key optional (see config/scheduler.yaml).

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub use dragonfly_runtime::log::LogConfig;

/// Configuration of `dragonfly-scheduler`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub address: SocketAddr,
    /// Prometheus `/metrics`; `null` disables it.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Scheduling policy.
    pub scheduling: SchedulingConfig,
    /// Registration with a manager (optional).
    pub manager: ManagerConfig,
    /// Cluster credentials (mutual TLS); none: plain gRPC, for loopback use only.
    pub security: dragonfly_membership::TlsFiles,
}

/// `manager:` — register with a manager so it can send preheat jobs here and tell peers
/// about this scheduler.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// The manager's gRPC address (`host:port`); empty = no manager.
    pub address: String,
    /// Scheduler cluster to join; 0 = the manager's default cluster.
    pub scheduler_cluster_id: u64,
    /// Address peers and the manager reach this scheduler on; empty = the local address that
    /// routes to the manager.
    pub advertise_ip: Option<std::net::IpAddr>,
    /// IDC, for the console.
    pub idc: String,
    /// Location, for the console.
    pub location: String,
}

/// `/metrics` endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listen address, or null.
    pub address: Option<SocketAddr>,
}

/// How parents are chosen and when peers go to the origin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulingConfig {
    /// Parents returned per FindParents when the peer does not ask for a number.
    pub candidate_parent_limit: usize,
    /// Candidates scored per FindParents (a random sample of the peers holding pieces).
    pub filter_parent_limit: usize,
    /// Peers looked at while sampling candidates.
    pub scan_limit: usize,
    /// Hosts must keep alive this often.
    pub keepalive_interval_secs: u32,
    /// A peer told to wait asks again after this long.
    pub retry_after_ms: u32,
    /// A peer waits at most this long for a triggered seed peer to produce pieces before it is
    /// sent to the origin itself.
    pub seed_wait_timeout_ms: u64,
    /// At most this many peers of one task go to the origin at once; others wait.
    pub back_to_source_limit: usize,
    /// Tasks without peers are forgotten after this long.
    pub task_ttl_secs: u64,
    /// Hosts announced at once; more are refused (RESOURCE_EXHAUSTED).
    pub max_hosts: usize,
    /// Tasks known at once; more are refused.
    pub max_tasks: usize,
    /// Peers registered on one task; more are refused.
    pub max_peers_per_task: usize,
}

impl SchedulingConfig {
    /// The bounds on what remote callers can make the scheduler keep.
    pub fn limits(&self) -> crate::state::Limits {
        crate::state::Limits {
            max_hosts: self.max_hosts,
            max_tasks: self.max_tasks,
            max_peers_per_task: self.max_peers_per_task,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            address: "0.0.0.0:8002".parse().expect("valid"),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            scheduling: SchedulingConfig::default(),
            manager: ManagerConfig::default(),
            security: Default::default(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            address: Some("127.0.0.1:8000".parse().expect("valid")),
        }
    }
}

impl Default for SchedulingConfig {
    fn default() -> SchedulingConfig {
        SchedulingConfig {
            candidate_parent_limit: 4,
            filter_parent_limit: 40,
            scan_limit: 400,
            keepalive_interval_secs: 5,
            retry_after_ms: 200,
            seed_wait_timeout_ms: 15_000,
            back_to_source_limit: 200,
            task_ttl_secs: 600,
            max_hosts: crate::state::Limits::default().max_hosts,
            max_tasks: crate::state::Limits::default().max_tasks,
            max_peers_per_task: crate::state::Limits::default().max_peers_per_task,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bad YAML or an unknown key.
    #[error("invalid config file {path}: {message} (see config/scheduler.yaml for every key and its default)")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A value out of range.
    #[error("invalid scheduler configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path`, or the defaults if `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config = match path {
            None => Config::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                if text.trim().is_empty() {
                    Config::default()
                } else {
                    serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Parse {
                        path: p.display().to_string(),
                        message: e.to_string(),
                    })?
                }
            }
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.scheduling;
        if s.candidate_parent_limit == 0 || s.candidate_parent_limit > 20 {
            return Err(ConfigError::Invalid(
                "scheduling.candidate_parent_limit must be 1..=20".into(),
            ));
        }
        if s.filter_parent_limit < s.candidate_parent_limit {
            return Err(ConfigError::Invalid(
                "scheduling.filter_parent_limit must be at least candidate_parent_limit".into(),
            ));
        }
        if s.keepalive_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "scheduling.keepalive_interval_secs must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_defaults() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scheduler.yaml");
        assert_eq!(Config::load(Some(&p)).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.yaml");
        std::fs::write(&p, "scheduling: {parents: 3}\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("parents"), "{e}");
        std::fs::write(&p, "scheduling: {candidate_parent_limit: 0}\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("candidate_parent_limit"), "{e}");
        std::fs::write(&p, "").unwrap();
        assert_eq!(Config::load(Some(&p)).unwrap(), Config::default());
    }
}
