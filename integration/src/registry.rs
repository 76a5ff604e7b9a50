//! A real `docker-registry` (CNCF distribution 2.8) on a free loopback port, and its access
//! log, which is how tests prove what was (not) downloaded.
//!
//! The registry writes one Apache "combined" line per request to its stderr, e.g.
//! `127.0.0.1 - - [23/Nov/2026:02:40:45 +0000] "GET /v2/r/blobs/sha256:… HTTP/1.1" 206 10 "" "ua"`;
//! [`parse_access_log`] turns those lines into [`Request`]s. A [`Mark`] taken with
//! [`Registry::mark`] lets a test ask for the requests made after it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::procs::{free_port, wait_until, Proc};

/// One request from the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// HTTP method (`GET`, `HEAD`, `PUT`, ...).
    pub method: String,
    /// Request path with its query string.
    pub path: String,
    /// HTTP status.
    pub status: u16,
    /// Body bytes sent (0 for `-`).
    pub bytes: u64,
}

impl Request {
    /// The blob digest if this is a request for `/v2/<repo>/blobs/<digest>`.
    pub fn blob_digest(&self) -> Option<&str> {
        let path = self.path.split('?').next().unwrap_or_default();
        let (_, digest) = path.strip_prefix("/v2/")?.rsplit_once("/blobs/")?;
        digest.starts_with("sha256:").then_some(digest)
    }

    /// True for a successful `GET` of a blob (200 or 206), the requests that move layer bytes.
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && matches!(self.status, 200 | 206) && self.blob_digest().is_some()
    }
}

/// Parses access-log lines (other log lines are skipped) into requests, in order.
pub fn parse_access_log(log: &str) -> Vec<Request> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r#"\] "([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) (\d+|-)"#)
            .expect("valid regex")
    });
    log.lines()
        .filter_map(|l| re.captures(l))
        .map(|c| Request {
            method: c[1].to_owned(),
            path: c[2].to_owned(),
            status: c[3].parse().unwrap_or(0),
            bytes: c[4].parse().unwrap_or(0),
        })
        .collect()
}

/// A point in the access log: the requests made before it are not counted by the `*_since`
/// methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(usize);

/// One successful blob GET.
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

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        parse_access_log(&self.proc.log())
    }

    /// Marks the current end of the access log.
    pub fn mark(&self) -> Mark {
        Mark(self.requests().len())
    }

    /// The requests served after `mark`.
    pub fn requests_since(&self, mark: Mark) -> Vec<Request> {
        self.requests().into_iter().skip(mark.0).collect()
    }

    /// The successful blob GETs served after `mark`.
    pub fn blob_gets_since(&self, mark: Mark) -> Vec<BlobGet> {
        self.requests_since(mark)
            .iter()
            .filter(|r| r.is_blob_get())
            .map(|r| BlobGet {
                digest: r.blob_digest().unwrap_or_default().to_owned(),
                status: r.status,
                bytes: r.bytes,
            })
            .collect()
    }

    /// Blob bytes sent after `mark` (all blobs).
    pub fn blob_bytes_since(&self, mark: Mark) -> u64 {
        self.blob_gets_since(mark).iter().map(|g| g.bytes).sum()
    }

    /// Every successful blob GET served so far, in order.
    pub fn blob_gets(&self) -> Vec<BlobGet> {
        self.blob_gets_since(Mark(0))
    }

    /// Bytes of `digest` sent so far.
    pub fn bytes_sent(&self, digest: &str) -> u64 {
        self.blob_gets()
            .iter()
            .filter(|g| g.digest == digest)
            .map(|g| g.bytes)
            .sum()
    }

    /// The registry's log (access log and its own messages).
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// The registry's pid, while running.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `GET http://ADDR<path>` with an optional inclusive byte range; returns the status and
    /// the body (plain HTTP/1.0, so the body ends when the registry closes the connection).
    pub fn get(&self, path: &str, range: Option<(u64, u64)>) -> Result<(u16, Vec<u8>)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr)
            .with_context(|| format!("connect to the registry at {}", self.addr))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let range = range
            .map(|(a, b)| format!("Range: bytes={a}-{b}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {}\r\n{range}\r\n",
            self.addr
        )?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("registry response has no header end")?;
        let head = String::from_utf8_lossy(&resp[..end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad status line in {head:?}"))?;
        Ok((status, resp[end + 4..].to_vec()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_parse_and_other_lines_are_skipped() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let log = format!(
            "time=\"2026\" level=info msg=\"listening\"\n\
             127.0.0.1 - - [23/Nov/2026:02:40:45 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"skopeo\"\n\
             127.0.0.1 - - [23/Nov/2026:02:40:45 +0000] \"GET /v2/a/b/blobs/{d} HTTP/1.1\" 206 10 \"\" \"ua\"\n\
             127.0.0.1 - - [23/Nov/2026:02:40:45 +0000] \"HEAD /v2/a/blobs/{d} HTTP/1.1\" 200 - \"\" \"ua\"\n\
             127.0.0.1 - - [23/Nov/2026:02:40:45 +0000] \"GET /v2/a/blobs/{d}?ns=x HTTP/1.1\" 404 19 \"\" \"ua\"\n"
        );
        let r = parse_access_log(&log);
        assert_eq!(r.len(), 4, "{r:?}");
        assert_eq!(r[1].method, "GET");
        assert_eq!(r[1].status, 206);
        assert_eq!(r[1].bytes, 10);
        assert_eq!(r[1].blob_digest(), Some(d.as_str()));
        assert!(r[1].is_blob_get());
        assert_eq!(r[2].bytes, 0);
        assert!(!r[2].is_blob_get(), "HEAD moves no bytes");
        assert_eq!(r[3].blob_digest(), Some(d.as_str()));
        assert!(!r[3].is_blob_get(), "a 404 is no blob served");
        assert!(r[0].blob_digest().is_none());
    }
}
