//! Daemon configuration: one YAML file, every key optional with a documented default.
//!
//! `config/snapshotter.yaml` in the repository is the annotated example; keep the two in step.
//! The daemon starts with no file at all (`Config::default()`), which suits local use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use dragonfly_runtime::log::{LogConfig, LogFormat};

pub use dragonfly_registry::RegistryConfig;
pub use dragonfly_storage::StoreConfig;

/// The default root: where containerd's CRI plugin looks for the `dragonfly` snapshotter's
/// filesystem (`<containerd root>/io.containerd.snapshotter.v1.<name>`), so ImageFsInfo —
/// kubelet's image-disk accounting and image garbage collection — reads the disk the daemon
/// really fills.
pub const DEFAULT_ROOT: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.dragonfly";

/// Top-level daemon configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Root directory of the daemon's state: `metadata.redb`, `snapshots/`, `cache/`.
    pub root: PathBuf,
    /// Unix socket containerd connects to (`[proxy_plugins.dragonfly] address`); mode 0660.
    pub address: PathBuf,
    /// Group that may use the socket besides root (e.g. one for `dfctl` users); none: root only.
    pub address_group: Option<String>,
    /// Logging.
    pub log: LogConfig,
    /// Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
    /// Registry access: plain-HTTP hosts, mirrors, credentials, timeouts and retries.
    pub registry: RegistryConfig,
    /// The piece store (blob cache) under `<root>/cache`.
    pub cache: StoreConfig,
    /// Lazy layers: prefetch and background fetch.
    pub prefetch: PrefetchConfig,
    /// FUSE mount settings of lazy layers.
    pub fuse: FuseConfig,
    /// Snapshot behaviour.
    pub snapshot: SnapshotConfig,
    /// Bounds on what one ordinary layer may unpack to (a tar bomb stops there).
    pub unpack: UnpackLimits,
    /// Piece exchange with other peers through the scheduler.
    pub p2p: P2pConfig,
    /// Cluster credentials (mutual TLS with schedulers, peers and the manager); none: plain,
    /// for loopback use only.
    pub security: dragonfly_membership::TlsFiles,
    /// containerd, asked which image a layer belongs to when a Prepare has no labels.
    pub containerd: ContainerdConfig,
}

/// `containerd:` where to find the image of a layer whose Prepare carries only its chain ID
/// (the CRI's default `disable_snapshot_annotations = true`, `ctr image pull`, nerdctl).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerdConfig {
    /// containerd's socket; null: never asked (such layers are unpacked by containerd).
    pub address: Option<PathBuf>,
    /// Longest a Prepare waits for the answer before leaving the layer to containerd.
    pub lookup_timeout_ms: u64,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            address: Some(PathBuf::from("/run/containerd/containerd.sock")),
            lookup_timeout_ms: 2000,
        }
    }
}

/// Peer-to-peer: which schedulers to use and how this host serves pieces to others.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// Scheduler gRPC addresses (host:port). Empty: no P2P, every byte comes from registries.
    pub schedulers: Vec<String>,
    /// Where the peer service (pieces for other peers) listens.
    pub listen: SocketAddr,
    /// IP other peers reach this host on; default: the local address used to reach the first
    /// scheduler.
    pub advertise_ip: Option<std::net::IpAddr>,
    /// Host ID announced to schedulers; default `<ip>-<hostname>`.
    pub host_id: Option<String>,
    /// Data centre of this host (parents in the same IDC are preferred).
    pub idc: String,
    /// `|`-separated location, e.g. `eu|de|fra|rack7`.
    pub location: String,
    /// Concurrent piece uploads served to other peers.
    pub upload_slots: u32,
    /// Connections open at once on the peer port; more are closed as they arrive.
    pub max_connections: std::num::NonZeroUsize,
    /// Upload bandwidth to other peers in bytes per second; 0 is unlimited.
    pub upload_rate_bytes_per_sec: u64,
    /// Parents fetched from at once for one request.
    pub parallel_parents: usize,
    /// Run as a seed peer: announce as one, and fetch tasks from their origin when the
    /// scheduler triggers it (also `--seed-peer`).
    pub seed_peer: bool,
    /// The manager (`host:port` of its gRPC): seed peers register with it; peers without
    /// `schedulers` ask it which schedulers serve them. Empty = no manager.
    pub manager: String,
    /// How often the scheduler list is asked of the manager again.
    pub manager_refresh_secs: u64,
    /// The manager's scheduler cluster this seed peer serves; 0 = the default cluster.
    pub scheduler_cluster_id: u64,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            schedulers: Vec::new(),
            listen: "0.0.0.0:4000".parse().expect("valid"),
            advertise_ip: None,
            host_id: None,
            idc: String::new(),
            location: String::new(),
            upload_slots: 32,
            max_connections: std::num::NonZeroUsize::new(1024).expect("not zero"),
            upload_rate_bytes_per_sec: 0,
            parallel_parents: 4,
            seed_peer: false,
            manager: String::new(),
            manager_refresh_secs: 60,
            scheduler_cluster_id: 0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from(DEFAULT_ROOT),
            address: PathBuf::from("/run/dragonfly/snapshotter.sock"),
            address_group: None,
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            registry: RegistryConfig::default(),
            cache: StoreConfig::default(),
            prefetch: PrefetchConfig::default(),
            fuse: FuseConfig::default(),
            snapshot: SnapshotConfig::default(),
            unpack: UnpackLimits::default(),
            p2p: P2pConfig::default(),
            security: Default::default(),
            containerd: ContainerdConfig::default(),
        }
    }
}

/// Bounds on what one layer may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnpackLimits {
    /// Bytes of file data.
    pub max_bytes: u64,
    /// Entries (files, directories, links, devices, whiteouts).
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> UnpackLimits {
        UnpackLimits {
            max_bytes: 256 << 30,
            max_entries: 10_000_000,
        }
    }
}

/// Prometheus endpoint settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP server serving `/metrics`; `null` disables it.
    pub address: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            address: Some(SocketAddr::from(([127, 0, 0, 1], 9250))),
        }
    }
}

/// Prefetch and background-fetch settings of lazy layers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefetchConfig {
    /// Fetch the files before the layer's `.prefetch.landmark` when the layer is mounted.
    pub landmark: bool,
    /// Longest time a container start waits for the landmark prefetch, in seconds.
    pub wait_timeout_secs: u64,
    /// Fetch the rest of every lazy layer's blob in the background at low priority.
    pub background: bool,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            landmark: true,
            wait_timeout_secs: 10,
            background: true,
        }
    }
}

/// FUSE settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FuseConfig {
    /// Attribute and entry cache timeout handed to the kernel, in seconds. Layers are
    /// immutable, so a long timeout is safe.
    pub attr_timeout_secs: u64,
    /// Threads answering FUSE requests that need no network (lookups, attributes, cached reads).
    pub threads: usize,
    /// Decompressed chunks kept in memory, shared by all lazy layers.
    pub chunk_cache_entries: usize,
    /// Who keeps lazy mounts' FUSE connections open while the daemon restarts, so running
    /// containers only pause: `auto` (systemd's fd store when `$NOTIFY_SOCKET` is set, else
    /// the fd holder), `systemd`, `holder`, or `off` (a restart breaks running containers'
    /// lazy layers).
    pub handoff: HandoffMode,
    /// How long a stopping daemon lets FUSE requests it is answering finish before exiting.
    pub handoff_grace_ms: u64,
}

impl Default for FuseConfig {
    fn default() -> Self {
        FuseConfig {
            attr_timeout_secs: 3600,
            threads: 2,
            chunk_cache_entries: 64,
            handoff: HandoffMode::Auto,
            handoff_grace_ms: 2000,
        }
    }
}

/// [`FuseConfig::handoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandoffMode {
    /// systemd's fd store under systemd, else the fd holder.
    Auto,
    /// systemd's fd store (`$NOTIFY_SOCKET` must be set).
    Systemd,
    /// The fd holder process.
    Holder,
    /// Nothing is kept.
    Off,
}

/// Snapshot behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Serve eStargz / zstd:chunked layers lazily (otherwise containerd unpacks every layer).
    pub lazy: bool,
    /// Accept a lazy layer whose TOC digest is not given by a label (no verification of the TOC).
    /// Off by default: an unverified TOC means unverified chunk digests.
    pub allow_unverified_toc: bool,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            lazy: true,
            allow_unverified_toc: false,
        }
    }
}

/// Failure to read the configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or has unknown keys.
    #[error("invalid config file {path}: {source} (see config/snapshotter.yaml for every key and its default)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The YAML error.
        source: serde_yaml_ng::Error,
    },
}

impl Config {
    /// Reads a YAML file; missing keys take their defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses YAML text; an empty document is the default configuration.
    pub fn parse(text: &str) -> Result<Config, serde_yaml_ng::Error> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml_ng::from_str(text)
    }

    /// `<root>/metadata.redb`
    pub fn metadata_path(&self) -> PathBuf {
        self.root.join("metadata.redb")
    }

    /// `<root>/snapshots`
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `<root>/cache`
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Where records of held FUSE connections and the fd holder's socket live.
    pub fn handoff_dir(&self) -> PathBuf {
        self.root.join("handoff")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert!(c.prefetch.background);
    }

    #[test]
    fn partial_document_keeps_other_defaults() {
        let c = Config::parse("root: /tmp/x\nprefetch:\n  background: false\n").unwrap();
        assert_eq!(c.root, PathBuf::from("/tmp/x"));
        assert!(!c.prefetch.background);
        assert!(c.prefetch.landmark);
        assert_eq!(c.snapshots_dir(), PathBuf::from("/tmp/x/snapshots"));
    }

    #[test]
    fn unknown_key_is_rejected_with_a_hint() {
        let err = Config::parse("roots: /tmp/x\n").unwrap_err();
        assert!(err.to_string().contains("roots"), "{err}");
    }

    #[test]
    fn the_documented_example_is_the_default() {
        let text = include_str!("../../config/snapshotter.yaml");
        let c = Config::parse(text).expect("config/snapshotter.yaml parses");
        let d = Config::default();
        assert_eq!(
            format!("{c:?}"),
            format!("{d:?}"),
            "the example must show the defaults"
        );
    }

    #[test]
    fn metrics_can_be_disabled() {
        let c = Config::parse("metrics:\n  address: null\n").unwrap();
        assert!(c.metrics.address.is_none());
    }
}
