//! A real `docker-registry` (CNCF distribution) on a free loopback port, and its access log,
//! which is how tests prove what was (not) downloaded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::procs::{free_port, wait_until, Proc};

/// One access-log line for a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobGet {
    /// The blob digest.
    pub digest: String,
    /// HTTP status (200 or 206).
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
}

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Storage root.
    pub data: PathBuf,
    proc: Proc,
}

impl Registry {
    /// Starts a registry storing under `dir/registry-data`.
    pub fn start(dir: &Path) -> Result<Registry> {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let data = dir.join("registry-data");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: info, accesslog: {{disabled: false}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: {addr}}}\n",
                data.display()
            ),
        )?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config);
        let proc = Proc::spawn("docker-registry", cmd, &dir.join("registry.log"))?;
        let a = addr.clone();
        wait_until("registry", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&a).is_ok()
        })?;
        Ok(Registry { addr, data, proc })
    }

    /// Every blob GET served so far, in order.
    pub fn blob_gets(&self) -> Vec<BlobGet> {
        let re = regex::Regex::new(
            r#""GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64})(?:\?[^ ]*)? HTTP/[0-9.]+" (\d{3}) (\d+)"#,
        )
        .expect("valid regex");
        re.captures_iter(&self.proc.log())
            .map(|c| BlobGet {
                digest: c[1].to_owned(),
                status: c[2].parse().unwrap_or(0),
                bytes: c[3].parse().unwrap_or(0),
            })
            .collect()
    }

    /// Bytes of `digest` sent so far.
    pub fn bytes_sent(&self, digest: &str) -> u64 {
        self.blob_gets()
            .iter()
            .filter(|g| g.digest == digest)
            .map(|g| g.bytes)
            .sum()
    }

    /// Where the registry keeps the bytes of `digest` (to tamper with them).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.data
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stops the registry (reads that need it then fail).
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
    }
}
