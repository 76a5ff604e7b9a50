//! Snapshot metadata in an embedded transactional store (redb).
//!
//! One write transaction per snapshotter call, as containerd's `storage.MetaStore` does: a
//! snapshot's record (id, kind, parent, labels, timestamps, usage) and the parent → child index
//! change together or not at all. The filesystem side (directories, mounts) lives elsewhere
//! and is keyed by the numeric id recorded here. All calls block on disk; call them from
//! `spawn_blocking`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::error::SnapshotError;

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// Key: `<parent>\0<child>`; lets "has children?" be a prefix scan.
const CHILDREN: TableDefinition<&str, ()> = TableDefinition::new("children");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_ID: &str = "next_id";

/// Kind of snapshot, as containerd defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only view of a committed parent.
    View,
    /// Writable, not yet committed.
    Active,
    /// Immutable; can be a parent.
    Committed,
}

impl Kind {
    /// containerd's lower-case name of the kind (used by `kind==` filters).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// Disk usage of a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes used.
    pub size: i64,
    /// Inodes used.
    pub inodes: i64,
}

/// Everything stored about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Numeric id naming the snapshot's directory `snapshots/<id>`.
    pub id: u64,
    /// Kind.
    pub kind: Kind,
    /// Key of the parent (always a committed snapshot), if any.
    pub parent: Option<String>,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, nanoseconds since the epoch.
    pub created_ns: i128,
    /// Last update time, nanoseconds since the epoch.
    pub updated_ns: i128,
    /// Usage recorded at commit time (committed snapshots only).
    pub usage: Option<Usage>,
}

/// The snapshot metadata database.
pub struct MetaStore {
    db: Database,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn child_key(parent: &str, child: &str) -> String {
    format!("{parent}\0{child}")
}

fn db_err(e: impl Into<redb::Error>) -> SnapshotError {
    let e: redb::Error = e.into();
    SnapshotError::store("the database failed", e)
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, SnapshotError> {
    serde_json::from_slice(bytes)
        .map_err(|e| SnapshotError::store(format!("record of snapshot {key:?} is unreadable"), e))
}

fn encode(r: &Record) -> Vec<u8> {
    serde_json::to_vec(r).expect("a snapshot record always serialises")
}

impl MetaStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<MetaStore, SnapshotError> {
        let db = Database::create(path).map_err(|e| {
            SnapshotError::store(
                format!("cannot open metadata database {}", path.display()),
                redb::Error::from(e),
            )
        })?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(SNAPSHOTS).map_err(db_err)?;
            txn.open_table(CHILDREN).map_err(db_err)?;
            txn.open_table(COUNTERS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(MetaStore { db })
    }

    /// Creates an active or view snapshot. The parent, if given, must be committed.
    pub fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: BTreeMap<String, String>,
    ) -> Result<Record, SnapshotError> {
        if key.is_empty() {
            return Err(SnapshotError::InvalidArgument(
                "snapshot key must not be empty".into(),
            ));
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut snaps = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            if snaps.get(key).map_err(db_err)?.is_some() {
                return Err(SnapshotError::AlreadyExists(key.to_owned()));
            }
            if let Some(p) = parent {
                let guard = snaps
                    .get(p)
                    .map_err(db_err)?
                    .ok_or_else(|| SnapshotError::NotFound(format!("parent snapshot {p:?}")))?;
                let pr = decode(p, guard.value())?;
                if pr.kind != Kind::Committed {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "parent {p:?} is not a committed snapshot"
                    )));
                }
            }
            let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
            let id = counters
                .get(NEXT_ID)
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(1);
            counters.insert(NEXT_ID, id + 1).map_err(db_err)?;
            let now = now_ns();
            let record = Record {
                id,
                kind,
                parent: parent.map(str::to_owned),
                labels,
                created_ns: now,
                updated_ns: now,
                usage: None,
            };
            snaps
                .insert(key, encode(&record).as_slice())
                .map_err(db_err)?;
            if let Some(p) = parent {
                let mut children = txn.open_table(CHILDREN).map_err(db_err)?;
                children
                    .insert(child_key(p, key).as_str(), ())
                    .map_err(db_err)?;
            }
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    /// Returns a snapshot's record.
    pub fn get(&self, key: &str) -> Result<Record, SnapshotError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let snaps = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        let guard = snaps
            .get(key)
            .map_err(db_err)?
            .ok_or_else(|| SnapshotError::NotFound(format!("snapshot {key:?}")))?;
        decode(key, guard.value())
    }

    /// The chain of committed ancestors of `key`, nearest first.
    pub fn ancestors(&self, key: &str) -> Result<Vec<(String, Record)>, SnapshotError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let snaps = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut out = Vec::new();
        let guard = snaps
            .get(key)
            .map_err(db_err)?
            .ok_or_else(|| SnapshotError::NotFound(format!("snapshot {key:?}")))?;
        let mut next = decode(key, guard.value())?.parent;
        while let Some(p) = next {
            let guard =
                snaps
                    .get(p.as_str())
                    .map_err(db_err)?
                    .ok_or_else(|| SnapshotError::Store {
                        what: format!("parent {p:?} of a snapshot is missing"),
                        source: None,
                    })?;
            let r = decode(&p, guard.value())?;
            next = r.parent.clone();
            out.push((p, r));
        }
        Ok(out)
    }

    /// Turns the active snapshot `key` into the committed snapshot `name` (same id and dirs).
    pub fn commit(
        &self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        usage: Usage,
    ) -> Result<Record, SnapshotError> {
        if name.is_empty() {
            return Err(SnapshotError::InvalidArgument(
                "committed snapshot name must not be empty".into(),
            ));
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut snaps = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            if snaps.get(name).map_err(db_err)?.is_some() {
                return Err(SnapshotError::AlreadyExists(name.to_owned()));
            }
            let mut record = {
                let guard = snaps
                    .get(key)
                    .map_err(db_err)?
                    .ok_or_else(|| SnapshotError::NotFound(format!("snapshot {key:?}")))?;
                decode(key, guard.value())?
            };
            if record.kind != Kind::Active {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "snapshot {key:?} is not active (it is {}); only active snapshots can be committed",
                    record.kind.as_str()
                )));
            }
            // As containerd's: a committed snapshot is a new record, created (and last
            // updated) when it was committed, not when its active snapshot was prepared.
            let now = now_ns();
            record.kind = Kind::Committed;
            record.labels = labels;
            record.usage = Some(usage);
            record.created_ns = now;
            record.updated_ns = now;
            snaps.remove(key).map_err(db_err)?;
            snaps
                .insert(name, encode(&record).as_slice())
                .map_err(db_err)?;
            if let Some(p) = &record.parent {
                let mut children = txn.open_table(CHILDREN).map_err(db_err)?;
                children
                    .remove(child_key(p, key).as_str())
                    .map_err(db_err)?;
                children
                    .insert(child_key(p, name).as_str(), ())
                    .map_err(db_err)?;
            }
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    /// Removes a snapshot that has no children; returns its record.
    pub fn remove(&self, key: &str) -> Result<Record, SnapshotError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut snaps = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let record = {
                let guard = snaps
                    .get(key)
                    .map_err(db_err)?
                    .ok_or_else(|| SnapshotError::NotFound(format!("snapshot {key:?}")))?;
                decode(key, guard.value())?
            };
            let mut children = txn.open_table(CHILDREN).map_err(db_err)?;
            let prefix = format!("{key}\0");
            let has_child = children
                .range(prefix.as_str()..)
                .map_err(db_err)?
                .next()
                .transpose()
                .map_err(db_err)?
                .is_some_and(|(k, _)| k.value().starts_with(&prefix));
            if has_child {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?}: it has children; remove them first"
                )));
            }
            snaps.remove(key).map_err(db_err)?;
            if let Some(p) = &record.parent {
                children
                    .remove(child_key(p, key).as_str())
                    .map_err(db_err)?;
            }
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    /// Replaces labels. `paths` follows containerd: empty = replace all labels; `labels` =
    /// replace all; `labels.<k>` = set or delete one label. Other fields are immutable.
    pub fn update_labels(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Record, SnapshotError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut snaps = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut record = {
                let guard = snaps
                    .get(key)
                    .map_err(db_err)?
                    .ok_or_else(|| SnapshotError::NotFound(format!("snapshot {key:?}")))?;
                decode(key, guard.value())?
            };
            if paths.is_empty() || paths.iter().any(|p| p == "labels") {
                record.labels = labels;
            } else {
                for path in paths {
                    let Some(label) = path.strip_prefix("labels.") else {
                        return Err(SnapshotError::InvalidArgument(format!(
                            "cannot update field {path:?} of snapshot {key:?}: only labels are mutable"
                        )));
                    };
                    match labels.get(label) {
                        Some(v) => record.labels.insert(label.to_owned(), v.clone()),
                        None => record.labels.remove(label),
                    };
                }
            }
            record.updated_ns = now_ns();
            snaps
                .insert(key, encode(&record).as_slice())
                .map_err(db_err)?;
            record
        };
        txn.commit().map_err(db_err)?;
        Ok(record)
    }

    /// Every snapshot, ordered by key.
    pub fn list(&self) -> Result<Vec<(String, Record)>, SnapshotError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let snaps = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in snaps.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let key = k.value().to_owned();
            let record = decode(&key, v.value())?;
            out.push((key, record));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = MetaStore::open(&dir.path().join("m.redb")).unwrap();
        (dir, s)
    }

    #[test]
    fn create_commit_and_chain() {
        let (_d, s) = store();
        let a = s.create("a", None, Kind::Active, BTreeMap::new()).unwrap();
        s.commit("a", "A", BTreeMap::new(), Usage::default())
            .unwrap();
        assert!(matches!(s.get("a"), Err(SnapshotError::NotFound(_))));
        assert_eq!(s.get("A").unwrap().id, a.id);
        let b = s
            .create("b", Some("A"), Kind::Active, BTreeMap::new())
            .unwrap();
        assert_ne!(a.id, b.id);
        let chain = s.ancestors("b").unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].0, "A");
    }

    #[test]
    fn parent_must_exist_and_be_committed() {
        let (_d, s) = store();
        assert!(matches!(
            s.create("x", Some("nope"), Kind::Active, BTreeMap::new()),
            Err(SnapshotError::NotFound(_))
        ));
        s.create("a", None, Kind::Active, BTreeMap::new()).unwrap();
        assert!(matches!(
            s.create("x", Some("a"), Kind::Active, BTreeMap::new()),
            Err(SnapshotError::InvalidArgument(_))
        ));
    }

    #[test]
    fn removing_a_parent_with_children_fails_and_keeps_both() {
        let (_d, s) = store();
        s.create("a", None, Kind::Active, BTreeMap::new()).unwrap();
        s.commit("a", "A", BTreeMap::new(), Usage::default())
            .unwrap();
        s.create("v", Some("A"), Kind::View, BTreeMap::new())
            .unwrap();
        assert!(matches!(
            s.remove("A"),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        assert!(s.get("A").is_ok());
        s.remove("v").unwrap();
        s.remove("A").unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn children_index_follows_commit_renames() {
        let (_d, s) = store();
        s.create("a", None, Kind::Active, BTreeMap::new()).unwrap();
        s.commit("a", "A", BTreeMap::new(), Usage::default())
            .unwrap();
        s.create("b", Some("A"), Kind::Active, BTreeMap::new())
            .unwrap();
        s.commit("b", "B", BTreeMap::new(), Usage::default())
            .unwrap();
        assert!(s.remove("A").is_err());
        s.remove("B").unwrap();
        s.remove("A").unwrap();
    }

    #[test]
    fn key_prefix_is_not_mistaken_for_a_child() {
        let (_d, s) = store();
        s.create("a", None, Kind::Active, BTreeMap::new()).unwrap();
        s.commit("a", "A", BTreeMap::new(), Usage::default())
            .unwrap();
        s.create("AB", None, Kind::Active, BTreeMap::new()).unwrap();
        s.create("A/b", Some("A"), Kind::View, BTreeMap::new())
            .unwrap();
        s.remove("A/b").unwrap();
        // "AB" and "A/b" start with "A" but are not its children (any more).
        assert!(s.remove("A").is_ok(), "A has no children left");
        assert!(matches!(s.get("A"), Err(SnapshotError::NotFound(_))));
        assert_eq!(s.get("AB").unwrap().parent, None);
    }

    #[test]
    fn label_updates_by_path() {
        let (_d, s) = store();
        let mut l = BTreeMap::new();
        l.insert("x".to_string(), "1".to_string());
        l.insert("y".to_string(), "2".to_string());
        s.create("a", None, Kind::Active, l).unwrap();
        let mut upd = BTreeMap::new();
        upd.insert("x".to_string(), "9".to_string());
        let r = s
            .update_labels("a", upd.clone(), &["labels.x".into(), "labels.y".into()])
            .unwrap();
        assert_eq!(r.labels, upd);
        assert!(s.update_labels("a", upd, &["parent".into()]).is_err());
    }

    #[test]
    fn commit_of_view_or_existing_name_fails() {
        let (_d, s) = store();
        s.create("a", None, Kind::Active, BTreeMap::new()).unwrap();
        s.commit("a", "A", BTreeMap::new(), Usage::default())
            .unwrap();
        s.create("v", Some("A"), Kind::View, BTreeMap::new())
            .unwrap();
        assert!(matches!(
            s.commit("v", "V", BTreeMap::new(), Usage::default()),
            Err(SnapshotError::FailedPrecondition(_))
        ));
        s.create("b", None, Kind::Active, BTreeMap::new()).unwrap();
        assert!(matches!(
            s.commit("b", "A", BTreeMap::new(), Usage::default()),
            Err(SnapshotError::AlreadyExists(_))
        ));
        assert_eq!(s.get("b").unwrap().kind, Kind::Active);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.redb");
        {
            let s = MetaStore::open(&p).unwrap();
            s.create("a", None, Kind::Active, BTreeMap::new()).unwrap();
        }
        let s = MetaStore::open(&p).unwrap();
        assert_eq!(s.get("a").unwrap().kind, Kind::Active);
        let b = s.create("b", None, Kind::Active, BTreeMap::new()).unwrap();
        assert_eq!(b.id, 2);
    }
}
