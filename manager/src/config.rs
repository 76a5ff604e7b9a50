//! The manager's YAML configuration. Every key has a default, so the manager starts with no
//! file at all (an SQLite database under `data_dir`); `config/manager.yaml` lists them all.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use serde::Deserialize;

pub use dragonfly_runtime::log::LogConfig;

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the default SQLite database lives.
    pub data_dir: PathBuf,
    /// Database.
    pub database: DatabaseConfig,
    /// HTTP: REST, Open API, console, metrics.
    pub http: HttpConfig,
    /// gRPC for schedulers, seed peers and peers.
    pub grpc: GrpcConfig,
    /// Users and tokens.
    pub auth: AuthConfig,
    /// Preheat jobs.
    pub jobs: JobsConfig,
    /// Cluster credentials for gRPC (a manager's certificate from the cluster CA): mutual TLS
    /// with schedulers, seed peers and peers. None: plain gRPC, for loopback use only.
    pub security: dragonfly_membership::TlsFiles,
    /// The cluster CA this manager issues members' certificates from, for join tokens.
    pub ca: CaConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `ca:` the manager as the cluster's certificate authority: members join with a token and
/// get certificates from it (`security.join` on their side).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CaConfig {
    /// Directory of `ca.pem` and `ca-key.pem` (what `certs init` makes; created on first
    /// start, 0700); none: no CA, members bring certificate files.
    pub dir: Option<PathBuf>,
    /// Addresses members dial this manager's gRPC at (named in its own certificate, issued
    /// at each start when `security:` gives none); loopback is always included.
    pub ips: Vec<std::net::IpAddr>,
    /// DNS names members dial it by (a Kubernetes Service name, say).
    pub names: Vec<String>,
    /// Days a joined member's certificate is valid; members renew after two thirds, and a
    /// revoked member keeps a certificate at most this long.
    pub validity_days: u32,
    /// Days a join token is valid (those printed at first start and `join-token create`).
    pub token_validity_days: u32,
    /// Certificates may name addresses other than the one the request came from (members
    /// behind NAT). Off: each address a member asks for must be its source address.
    pub any_ip: bool,
    /// A directory with files `scheduler`, `seed` and `peer`, each holding a join token for
    /// that role (a Kubernetes Secret, say): registered at every start, valid
    /// `token_validity_days` from then.
    pub tokens_dir: Option<PathBuf>,
}

impl Default for CaConfig {
    fn default() -> CaConfig {
        CaConfig {
            dir: None,
            ips: Vec::new(),
            names: Vec::new(),
            validity_days: 7,
            token_validity_days: 365,
            any_ip: false,
            tokens_dir: None,
        }
    }
}

/// `database:`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite:///path/manager.db` or `postgres://user:pass@host/db`; empty = SQLite file
    /// `manager.db` in `data_dir`.
    pub url: String,
}

/// `http:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate and key (PEM files); plain HTTP without.
    pub tls: Option<TlsFiles>,
}

/// `http.tls:` a certificate chain and its private key, PEM files.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `grpc:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Keepalive interval asked of schedulers and seed peers; silent for 3 = inactive.
    pub keepalive_interval_secs: u32,
}

/// `auth:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Password of the `root` user created on first start (also `DRAGONFLY_ROOT_PASSWORD`);
    /// without one a random password is printed once.
    pub root_password: Option<String>,
    /// How long a console session lasts.
    pub session_ttl_hours: u32,
    /// Failed sign-ins allowed per user name within `signin_window_secs`; then that name is
    /// refused (429) until the window ends, even with the right password.
    pub signin_failures_per_user: u32,
    /// Sign-in attempts allowed per source address (IPv6: per /64) within the window.
    pub signin_failures_per_source: u32,
    /// The window of both sign-in limits.
    pub signin_window_secs: u64,
    /// Password hashes or checks (Argon2, about 19 MiB each) run at once.
    pub max_concurrent_hashes: usize,
}

/// `jobs:`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Jobs run at once by this manager.
    pub concurrency: usize,
    /// Default time limit of a job.
    pub timeout_secs: u64,
    /// A RUNNING job whose runner has not reported for this long (its manager died) is run
    /// again.
    pub stale_after_secs: u64,
    /// How long an image's manifest resolution may take.
    pub resolve_timeout_secs: u64,
    /// Runs of one job at most; a job whose manager died this many times ends as FAILURE.
    pub max_attempts: u32,
    /// Networks preheat URLs may point at besides public addresses (CIDRs such as
    /// `10.0.0.0/8`); loopback, link-local, private, CGNAT, multicast and unspecified
    /// addresses are refused otherwise.
    pub allowed_networks: Vec<IpNet>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("/var/lib/dragonfly/manager"),
            database: DatabaseConfig::default(),
            http: HttpConfig::default(),
            grpc: GrpcConfig::default(),
            auth: AuthConfig::default(),
            jobs: JobsConfig::default(),
            security: Default::default(),
            ca: CaConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: "0.0.0.0:8080".parse().expect("valid"),
            tls: None,
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> GrpcConfig {
        GrpcConfig {
            listen: "0.0.0.0:65003".parse().expect("valid"),
            keepalive_interval_secs: 5,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            root_password: None,
            session_ttl_hours: 24,
            signin_failures_per_user: 5,
            signin_failures_per_source: 20,
            signin_window_secs: 300,
            max_concurrent_hashes: 2,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> JobsConfig {
        JobsConfig {
            concurrency: 4,
            timeout_secs: 3600,
            stale_after_secs: 30,
            resolve_timeout_secs: 60,
            max_attempts: 3,
            allowed_networks: Vec::new(),
        }
    }
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid YAML for the config (unknown keys are named).
    #[error("config {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's error.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path` (missing keys take defaults; unknown keys are errors naming the key).
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let shown = || path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown(),
            source,
        })?;
        let c: Config = serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown(),
            source,
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Checks values a YAML type cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.jobs.concurrency == 0 {
            return Err(ConfigError::Invalid(
                "jobs.concurrency must be at least 1".into(),
            ));
        }
        let positive = [
            (
                "auth.signin_failures_per_user",
                self.auth.signin_failures_per_user as u64,
            ),
            (
                "auth.signin_failures_per_source",
                self.auth.signin_failures_per_source as u64,
            ),
            ("auth.signin_window_secs", self.auth.signin_window_secs),
            (
                "auth.max_concurrent_hashes",
                self.auth.max_concurrent_hashes as u64,
            ),
            ("jobs.max_attempts", u64::from(self.jobs.max_attempts)),
            ("ca.validity_days", u64::from(self.ca.validity_days)),
            (
                "ca.token_validity_days",
                u64::from(self.ca.token_validity_days),
            ),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
        }
        if let Some(p) = &self.auth.root_password {
            if p.len() < crate::auth::MIN_PASSWORD {
                return Err(ConfigError::Invalid(format!(
                    "auth.root_password must have at least {} characters",
                    crate::auth::MIN_PASSWORD
                )));
            }
        }
        Ok(())
    }

    /// The database URL to use.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("manager.db").display())
        } else {
            self.database.url.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_defaults_and_bad_keys_are_named() {
        let example =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/manager.yaml");
        assert_eq!(Config::load(&example).unwrap(), Config::default());
        let e = serde_yaml_ng::from_str::<Config>("jobs: {concurency: 2}").unwrap_err();
        assert!(e.to_string().contains("concurency"), "{e}");
        let c = Config {
            jobs: JobsConfig {
                concurrency: 0,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("jobs.concurrency"));
        assert_eq!(
            Config::default().database_url(),
            "sqlite:///var/lib/dragonfly/manager/manager.db"
        );
    }
}
