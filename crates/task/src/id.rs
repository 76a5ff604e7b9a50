//! Task IDs. An OCI object's task ID is its digest (content addressed: every registry host,
//! mirror or URL that serves the same bytes joins one swarm); a file's is `task:` and sha256
//! over its filtered URL, tag and application ([`crate::file_id`]). The piece store, the
//! scheduler and the manager all name tasks by this one string form.

use std::fmt;
use std::str::FromStr;

use dragonfly_registry::{Algorithm, Digest};

use crate::error::TaskError;
use crate::file_id::file_task_hex;

/// What a task is called everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TaskId {
    /// An OCI blob, manifest or index: `sha256:<hex>`.
    Oci(Digest),
    /// A file by URL: `task:<hex>`.
    File(String),
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TaskId {
    /// The ID of an OCI object with `digest` (only sha256: what the piece store keys on).
    pub fn oci(digest: &str) -> Result<TaskId, TaskError> {
        let bad = |source| TaskError::BadDigest {
            what: format!("object {digest:?}"),
            source: Box::new(source),
        };
        let d = Digest::parse(digest).map_err(bad)?;
        if d.algorithm() != Algorithm::Sha256 {
            return Err(TaskError::BadId {
                id: digest.to_owned(),
            });
        }
        Ok(TaskId::Oci(d))
    }

    /// The ID of the file at `url` (signed-URL parameters and `filtered` ones removed), with
    /// `tag` and `application`.
    pub fn file(
        url: &str,
        tag: &str,
        application: &str,
        filtered: &[String],
    ) -> Result<TaskId, TaskError> {
        file_task_hex(url, tag, application, filtered).map(TaskId::File)
    }

    /// The hex part (what `dfctl get` prints as the task ID).
    pub fn hex(&self) -> &str {
        match self {
            TaskId::Oci(d) => d.hex(),
            TaskId::File(h) => h,
        }
    }

    /// Whether the ID is the digest of the content (so the whole task can be verified by it).
    pub fn is_content_addressed(&self) -> bool {
        matches!(self, TaskId::Oci(_))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskId::Oci(d) => d.fmt(f),
            TaskId::File(h) => write!(f, "task:{h}"),
        }
    }
}

impl FromStr for TaskId {
    type Err = TaskError;

    fn from_str(s: &str) -> Result<TaskId, TaskError> {
        let bad = || TaskError::BadId { id: s.to_owned() };
        match s.split_once(':') {
            Some(("sha256", h)) if is_hex64(h) => TaskId::oci(s),
            Some(("task", h)) if is_hex64(h) => Ok(TaskId::File(h.to_owned())),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_nothing_else_parses() {
        let hex = "a".repeat(64);
        for s in [format!("sha256:{hex}"), format!("task:{hex}")] {
            let id: TaskId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
            assert_eq!(id.hex(), hex);
        }
        assert!(TaskId::oci(&format!("sha256:{hex}"))
            .unwrap()
            .is_content_addressed());
        for bad in [
            String::new(),
            hex.clone(),
            format!("sha512:{}", "a".repeat(128)),
            format!("sha256:{}", "A".repeat(64)),
            format!("task:{}", "a".repeat(63)),
            format!("task:../{}", "a".repeat(61)),
            format!("md5:{hex}"),
        ] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_file_id_is_the_filtered_url_hash() {
        let a = TaskId::file("https://h/f?X-Amz-Signature=1", "", "", &[]).unwrap();
        let b = TaskId::file("https://h/f?X-Amz-Signature=2", "", "", &[]).unwrap();
        assert_eq!(a, b);
        assert!(a.to_string().starts_with("task:"));
        assert!(!a.is_content_addressed());
    }
}
