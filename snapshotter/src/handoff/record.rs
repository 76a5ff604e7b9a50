//! The record of one held FUSE connection: what a successor process needs to adopt it.
//!
//! One JSON file per lazy mount in `<root>/handoff/`, written (temporary file, fsync,
//! rename) before its `/dev/fuse` fd is handed to the holder, and removed after the fd is
//! taken back. A record without a held fd, or a fd without a record, is stale.

use std::path::{Path, PathBuf};

use crate::fs::session::Negotiated;

/// Format of the record and of everything it implies (node ids, handle and readdir offset
/// meanings). A successor refuses to adopt a record of another format.
pub const RECORD_FORMAT: u32 = 1;

/// What a successor needs to adopt one lazy mount's live connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountRecord {
    /// [`RECORD_FORMAT`] of the writer.
    pub format: u32,
    /// The snapshot's id in the metadata store.
    pub snapshot: u64,
    /// Where the layer is mounted.
    pub mountpoint: PathBuf,
    /// The mount's `major:minor` in mountinfo (the FUSE connection's device).
    pub device: String,
    /// What INIT settled; never renegotiated.
    pub negotiated: Negotiated,
    /// [`crate::fs::layerfs::layout_digest`] of the layer's index.
    pub layout: String,
    /// The layer blob's digest.
    pub layer: String,
    /// Version of the daemon that mounted it.
    pub daemon_version: String,
}

impl MountRecord {
    /// The name the record and its fd are kept under.
    pub fn name_for(snapshot: u64) -> String {
        format!("fuse-{snapshot}")
    }
}

/// Whether `name` can name a kept connection: a plain file name of letters, digits, `-`,
/// `_` and `.`, not starting with a dot (names also come from `LISTEN_FDNAMES`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Why a record cannot be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// File I/O.
    #[error("handoff record {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A name that is not a plain file name.
    #[error("{0:?} cannot name a handoff record")]
    BadName(String),
    /// Not a record we can read.
    #[error("handoff record {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

/// The records directory.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// Records in `dir` (created 0700 if missing).
    pub fn open(dir: &Path) -> Result<Records, RecordError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| RecordError::Io {
                path: dir.to_owned(),
                source,
            })?;
        Ok(Records {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, name: &str) -> Result<PathBuf, RecordError> {
        if !valid_name(name) {
            return Err(RecordError::BadName(name.to_owned()));
        }
        Ok(self.dir.join(format!("{name}.json")))
    }

    /// Writes `record` durably under `name`, replacing any older one.
    pub fn write(&self, name: &str, record: &MountRecord) -> Result<(), RecordError> {
        let path = self.path(name)?;
        let io = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        let body = serde_json::to_vec_pretty(record).expect("a record serializes");
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io)?;
        std::io::Write::write_all(&mut tmp, &body).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The record under `name`, if any.
    pub fn read(&self, name: &str) -> Result<Option<MountRecord>, RecordError> {
        let path = self.path(name)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RecordError::Io { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| RecordError::Parse { path, source })
    }

    /// Removes the record under `name` (nothing if there is none).
    pub fn remove(&self, name: &str) {
        let Ok(path) = self.path(name) else { return };
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove handoff record");
            }
        }
    }

    /// Names of every record.
    pub fn names(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_owned)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::wire::{InitIn, InitOut};

    fn record() -> MountRecord {
        MountRecord {
            format: RECORD_FORMAT,
            snapshot: 7,
            mountpoint: "/x/7/fs".into(),
            device: "0:99".into(),
            negotiated: Negotiated {
                kernel: InitIn {
                    major: 7,
                    minor: 44,
                    max_readahead: 1,
                    flags: 3,
                },
                reply: InitOut {
                    minor: 40,
                    max_readahead: 1,
                    flags: 1,
                    max_background: 64,
                    congestion_threshold: 48,
                    max_write: 4096,
                    time_gran: 1,
                    max_pages: 256,
                },
            },
            layout: "sha256:00".into(),
            layer: "sha256:11".into(),
            daemon_version: "0".into(),
        }
    }

    #[test]
    fn records_round_trip_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(&dir.path().join("handoff")).unwrap();
        let name = MountRecord::name_for(7);
        r.write(&name, &record()).unwrap();
        assert_eq!(r.read(&name).unwrap(), Some(record()));
        assert_eq!(r.names(), vec![name.clone()]);
        r.remove(&name);
        assert_eq!(r.read(&name).unwrap(), None);
        assert!(r.names().is_empty());
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(&dir.path().join("handoff")).unwrap();
        for bad in ["../x", "a/b", "", ".hidden"] {
            assert!(r.read(bad).is_err(), "{bad:?}");
            assert!(r.write(bad, &record()).is_err(), "{bad:?}");
        }
        assert!(valid_name("fuse-12"));
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = Records::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("fuse-1.json"), b"{not json").unwrap();
        let e = r.read("fuse-1").unwrap_err().to_string();
        assert!(e.contains("fuse-1.json"), "{e}");
    }
}
