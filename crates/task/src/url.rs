//! Task URLs: where a peer that no parent can serve fetches a task. The manager writes them
//! into preheat jobs, the scheduler hands them to seed peers, the daemon reads them; this is
//! the one place their form is written down:
//!
//! - `oci://REGISTRY/REPO@DIGEST`: a blob (config or layer), read with range requests;
//! - `oci-manifest://REGISTRY/REPO@DIGEST`: a manifest or index, fetched whole with the
//!   manifest media types accepted;
//! - `http://…`, `https://…`: a file, read with range requests.

use std::fmt;
use std::str::FromStr;

use dragonfly_registry::{Digest, Repository};
use serde::{Deserialize, Serialize};

use crate::error::TaskError;
use crate::id::TaskId;

const OCI_BLOB: &str = "oci://";
const OCI_MANIFEST: &str = "oci-manifest://";

/// An object in a repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciObject {
    /// Where its registry has it.
    pub repo: Repository,
    /// Its digest (the task ID).
    pub digest: Digest,
}

/// Where a task comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskUrl {
    /// A config or layer blob.
    OciBlob(OciObject),
    /// A manifest or index.
    OciManifest(OciObject),
    /// A file by URL.
    Http(url::Url),
}

/// What a task is to the image it belongs to (how progress is shown and results are named).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskRole {
    /// An image index or manifest.
    Manifest,
    /// An image config.
    Config,
    /// A layer.
    Layer,
    /// A file by URL.
    File,
}

impl OciObject {
    /// Object `digest` of `repo`; only sha256 digests name tasks.
    pub fn new(repo: Repository, digest: &str) -> Result<OciObject, TaskError> {
        match TaskId::oci(digest)? {
            TaskId::Oci(digest) => Ok(OciObject { repo, digest }),
            TaskId::File(_) => unreachable!("TaskId::oci names OCI objects"),
        }
    }
}

impl TaskRole {
    /// The lowercase name (`manifest`, `config`, `layer`, `file`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskRole::Manifest => "manifest",
            TaskRole::Config => "config",
            TaskRole::Layer => "layer",
            TaskRole::File => "file",
        }
    }
}

impl TaskUrl {
    /// A blob of `repo`.
    pub fn oci_blob(repo: Repository, digest: Digest) -> TaskUrl {
        TaskUrl::OciBlob(OciObject { repo, digest })
    }

    /// A manifest or index of `repo`.
    pub fn oci_manifest(repo: Repository, digest: Digest) -> TaskUrl {
        TaskUrl::OciManifest(OciObject { repo, digest })
    }

    /// The task ID of an OCI object (its digest); `None` for a file, whose ID also depends on
    /// its tag, application and filtered parameters ([`TaskId::file`]).
    pub fn oci_id(&self) -> Option<TaskId> {
        match self {
            TaskUrl::OciBlob(o) | TaskUrl::OciManifest(o) => Some(TaskId::Oci(o.digest.clone())),
            TaskUrl::Http(_) => None,
        }
    }

    fn parse_oci(url: &str, rest: &str, scheme: &'static str) -> Result<OciObject, TaskError> {
        let bad = || TaskError::BadOciUrl {
            url: url.to_owned(),
            scheme,
        };
        let (path, digest) = rest.rsplit_once('@').ok_or_else(bad)?;
        let (registry, repository) = path.split_once('/').ok_or_else(bad)?;
        if registry.is_empty() || repository.is_empty() || !digest.starts_with("sha256:") {
            return Err(bad());
        }
        let digest = Digest::parse(digest).map_err(|source| TaskError::BadDigest {
            what: format!("task URL {url:?}"),
            source: Box::new(source),
        })?;
        Ok(OciObject {
            repo: Repository {
                registry: registry.to_owned(),
                repository: repository.to_owned(),
            },
            digest,
        })
    }
}

impl fmt::Display for TaskUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, o) = match self {
            TaskUrl::OciBlob(o) => (OCI_BLOB, o),
            TaskUrl::OciManifest(o) => (OCI_MANIFEST, o),
            TaskUrl::Http(u) => return u.fmt(f),
        };
        write!(
            f,
            "{scheme}{}/{}@{}",
            o.repo.registry, o.repo.repository, o.digest
        )
    }
}

impl FromStr for TaskUrl {
    type Err = TaskError;

    fn from_str(url: &str) -> Result<TaskUrl, TaskError> {
        if let Some(rest) = url.strip_prefix(OCI_BLOB) {
            return TaskUrl::parse_oci(url, rest, OCI_BLOB).map(TaskUrl::OciBlob);
        }
        if let Some(rest) = url.strip_prefix(OCI_MANIFEST) {
            return TaskUrl::parse_oci(url, rest, OCI_MANIFEST).map(TaskUrl::OciManifest);
        }
        let parsed = url::Url::parse(url).map_err(|source| TaskError::BadUrl {
            url: url.to_owned(),
            source,
        });
        match parsed {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(TaskUrl::Http(u)),
            Ok(_) => Err(TaskError::UnknownScheme {
                url: url.to_owned(),
            }),
            Err(e) if url.contains("://") => Err(e),
            Err(_) => Err(TaskError::UnknownScheme {
                url: url.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> String {
        format!("sha256:{}", "a".repeat(64))
    }

    #[test]
    fn task_urls_round_trip_and_bad_ones_are_refused() {
        let d = digest();
        for url in [
            format!("oci://127.0.0.1:5000/library/x@{d}"),
            format!("oci-manifest://127.0.0.1:5000/library/x@{d}"),
        ] {
            let u: TaskUrl = url.parse().unwrap();
            let (TaskUrl::OciBlob(o) | TaskUrl::OciManifest(o)) = &u else {
                panic!("{u:?}");
            };
            assert_eq!(
                (o.repo.registry.as_str(), o.repo.repository.as_str()),
                ("127.0.0.1:5000", "library/x")
            );
            assert_eq!(u.oci_id().unwrap().to_string(), d);
            assert_eq!(u.to_string(), url);
        }
        assert!(matches!(
            "https://h/f?x=1".parse::<TaskUrl>().unwrap(),
            TaskUrl::Http(_)
        ));
        for bad in [
            format!("oci://x@{d}"),
            "oci://x/y".to_owned(),
            format!("oci:///y@{d}"),
            "oci://x/y@md5:a".to_owned(),
            "oci://x/y@sha256:ab".to_owned(),
            format!("oci-manifests://x/y@{d}"),
            "ftp://x/y".to_owned(),
            "not a url".to_owned(),
        ] {
            assert!(bad.parse::<TaskUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_are_lowercase_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&TaskRole::Layer).unwrap(),
            "\"layer\""
        );
        assert_eq!(TaskRole::Manifest.as_str(), "manifest");
    }
}
