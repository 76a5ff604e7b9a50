//! The snapshotter: containerd's snapshot semantics on top of the metadata store and the
//! filesystem, with an overlayfs layout identical to containerd's own overlay snapshotter.
//!
//! Layout under `<root>/snapshots/<id>/`: `fs` (the layer's files, the overlay upper dir of an
//! active snapshot, or the FUSE mountpoint of a lazy layer) and `work` (overlay work dir).
//! Ordinary layers behave exactly like containerd's overlayfs snapshotter: containerd applies
//! the diff into the mounts we return. Lazy layers are mounted by [`RemoteLayers`] during
//! `Prepare`, committed here under the chain ID containerd asked for, and reported as
//! `ALREADY_EXISTS` so containerd never downloads them.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_client::types::Mount;

use super::error::SnapshotError;
use super::filters::{Fields, Filter};
use super::metastore::{Kind, MetaStore, Record, Usage};
use super::mountinfo;
use super::remote::{
    RemoteLayers, LABEL_NO_FALLBACK, LABEL_REMOTE, LABEL_TARGET_REF, REMOTE_VALUE,
};

/// Information about one snapshot, as containerd's `snapshots.Info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Key (active/view) or name (committed).
    pub name: String,
    /// Parent's name, empty when none.
    pub parent: String,
    /// Kind.
    pub kind: Kind,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, nanoseconds since the epoch.
    pub created_ns: i128,
    /// Last update, nanoseconds since the epoch.
    pub updated_ns: i128,
}

impl Info {
    fn new(name: String, r: Record) -> Info {
        Info {
            name,
            parent: r.parent.unwrap_or_default(),
            kind: r.kind,
            labels: r.labels,
            created_ns: r.created_ns,
            updated_ns: r.updated_ns,
        }
    }
}

/// containerd's snapshot semantics over a directory tree.
pub struct Snapshotter {
    root: PathBuf,
    store: Arc<MetaStore>,
    remote: Option<Arc<dyn RemoteLayers>>,
    overlay_index_off: bool,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, SnapshotError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| SnapshotError::Task {
            what: "snapshot",
            source,
        })?
}

fn is_remote(labels: &BTreeMap<String, String>) -> bool {
    labels.get(LABEL_REMOTE).map(String::as_str) == Some(REMOTE_VALUE)
}

impl Snapshotter {
    /// Opens the snapshotter rooted at `root` (`<root>/snapshots`, metadata at `meta_path`).
    /// Stale mounts left by a previous process under `root` are detached, except those at
    /// `keep` (live lazy mounts about to be adopted).
    pub async fn open(
        root: &Path,
        meta_path: &Path,
        remote: Option<Arc<dyn RemoteLayers>>,
        keep: &[PathBuf],
    ) -> Result<Snapshotter, SnapshotError> {
        std::fs::create_dir_all(root)
            .map_err(|e| SnapshotError::io(format!("cannot create {}", root.display()), e))?;
        let detached = mountinfo::detach_all_under_except(root, keep).map_err(|e| {
            SnapshotError::io("cannot read /proc/self/mountinfo to clear stale mounts", e)
        })?;
        if detached > 0 {
            tracing::info!(detached, "detached stale mounts left by a previous daemon");
        }
        let meta_path = meta_path.to_owned();
        let store = blocking(move || MetaStore::open(&meta_path)).await?;
        Ok(Snapshotter {
            root: root.to_owned(),
            store: Arc::new(store),
            remote,
            overlay_index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
        })
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string())
    }

    fn upper(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    /// Committed lazy snapshots, for re-mounting after a restart: (name, id, labels).
    pub async fn remote_snapshots(
        &self,
    ) -> Result<Vec<(String, u64, BTreeMap<String, String>)>, SnapshotError> {
        let store = self.store.clone();
        let all = blocking(move || store.list()).await?;
        Ok(all
            .into_iter()
            .filter(|(_, r)| r.kind == Kind::Committed && is_remote(&r.labels))
            .map(|(k, r)| (k, r.id, r.labels))
            .collect())
    }

    /// Path where a snapshot's layer files are (the FUSE mountpoint for lazy layers).
    pub fn layer_dir(&self, id: u64) -> PathBuf {
        self.upper(id)
    }

    /// Creates an active snapshot in containerd namespace `namespace`. For a layer we serve
    /// (labelled, or found through [`RemoteLayers::discover`]) this mounts or unpacks it,
    /// commits it under the target chain ID and returns `AlreadyExists`.
    pub async fn prepare(
        &self,
        namespace: &str,
        key: &str,
        parent: &str,
        mut labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let target = labels.get(LABEL_TARGET_REF).cloned();
        if let (Some(remote), Some(target)) = (&self.remote, target) {
            if !remote.wants(&labels) {
                // Only the chain ID (containerd's default CRI config, `ctr image pull`):
                // maybe the image being pulled names the layer.
                if let Some(found) = remote.discover(namespace, &target).await {
                    labels.extend(found);
                }
            }
            if remote.wants(&labels) {
                match self
                    .prepare_remote(remote.as_ref(), key, parent, &target, labels.clone())
                    .await
                {
                    Ok(()) => return Err(SnapshotError::AlreadyExists(target)),
                    Err(e) if labels.contains_key(LABEL_NO_FALLBACK) => {
                        tracing::warn!(key, error = %e, "layer refused; the client asked for no fallback");
                        return Err(e);
                    }
                    Err(e) => tracing::warn!(
                        key, error = %e,
                        "lazy layer unavailable; containerd will download and unpack it"
                    ),
                }
            }
        }
        self.create(key, parent, Kind::Active, labels).await
    }

    /// Creates a read-only view of a committed snapshot.
    pub async fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        self.create(key, parent, Kind::View, labels).await
    }

    async fn create(
        &self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let record = self.create_record(key, parent, kind, labels).await?;
        if let Err(e) = self.make_dirs(record.id, true) {
            self.drop_record(key, record.id).await;
            return Err(e);
        }
        let key_owned = key.to_owned();
        match self.mounts_of(&key_owned, &record).await {
            Ok(m) => Ok(m),
            Err(e) => {
                self.drop_record(key, record.id).await;
                Err(e)
            }
        }
    }

    async fn create_record(
        &self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: BTreeMap<String, String>,
    ) -> Result<Record, SnapshotError> {
        let store = self.store.clone();
        let (key, parent) = (key.to_owned(), parent.to_owned());
        blocking(move || {
            let parent = (!parent.is_empty()).then_some(parent.as_str());
            store.create(&key, parent, kind, labels)
        })
        .await
    }

    fn make_dirs(&self, id: u64, work: bool) -> Result<(), SnapshotError> {
        let upper = self.upper(id);
        std::fs::create_dir_all(&upper)
            .map_err(|e| SnapshotError::io(format!("cannot create {}", upper.display()), e))?;
        if work {
            let w = self.work(id);
            std::fs::create_dir_all(&w)
                .map_err(|e| SnapshotError::io(format!("cannot create {}", w.display()), e))?;
        }
        Ok(())
    }

    /// Removes a record and its directory after a failed create.
    async fn drop_record(&self, key: &str, id: u64) {
        let store = self.store.clone();
        let key = key.to_owned();
        if let Err(e) = blocking(move || store.remove(&key)).await {
            tracing::warn!(error = %e, "cannot roll back snapshot record");
        }
        let _ = std::fs::remove_dir_all(self.dir(id));
    }

    /// Mounts a lazy layer and commits it as `target`; `Ok` means `target` now exists.
    async fn prepare_remote(
        &self,
        remote: &dyn RemoteLayers,
        key: &str,
        parent: &str,
        target: &str,
        mut labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        // A concurrent pull may have committed this layer already.
        if self.stat(target).await.is_ok() {
            return Ok(());
        }
        let record = self
            .create_record(key, parent, Kind::Active, labels.clone())
            .await?;
        let mountpoint = self.upper(record.id);
        if let Err(e) = self.make_dirs(record.id, false) {
            self.drop_record(key, record.id).await;
            return Err(e);
        }
        match remote.mount(record.id, &mountpoint, &labels).await {
            Ok(extra) => labels.extend(extra),
            Err(e) => {
                self.drop_record(key, record.id).await;
                return Err(e);
            }
        }
        labels
            .entry(LABEL_REMOTE.to_owned())
            .or_insert_with(|| REMOTE_VALUE.to_owned());
        let lazy = labels.get(LABEL_REMOTE).map(String::as_str) == Some(REMOTE_VALUE);
        // A lazy mount uses no disk of its own; an unpacked layer is counted like any other.
        let usage = if lazy {
            Usage::default()
        } else {
            let dir = mountpoint.clone();
            blocking(move || disk_usage(&dir)).await?
        };
        let store = self.store.clone();
        let (k, t) = (key.to_owned(), target.to_owned());
        let committed = blocking(move || store.commit(&k, &t, labels, usage)).await;
        match committed {
            Ok(_) => {
                tracing::info!(
                    key,
                    target,
                    id = record.id,
                    "{}",
                    if lazy {
                        "lazy layer mounted and committed"
                    } else {
                        "layer unpacked and committed"
                    }
                );
                Ok(())
            }
            Err(e) => {
                let _ = remote.unmount(record.id, &mountpoint).await;
                self.drop_record(key, record.id).await;
                match e {
                    // Lost a race with a concurrent Prepare of the same layer: it is there.
                    SnapshotError::AlreadyExists(_) => Ok(()),
                    e => Err(e),
                }
            }
        }
    }

    /// Mounts for an active or view snapshot.
    pub async fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let record = self.get(key).await?;
        self.mounts_of(key, &record).await
    }

    async fn mounts_of(&self, key: &str, record: &Record) -> Result<Vec<Mount>, SnapshotError> {
        if record.kind == Kind::Committed {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} is committed; mounts are only available for active and view snapshots"
            )));
        }
        let store = self.store.clone();
        let k = key.to_owned();
        let ancestors = blocking(move || store.ancestors(&k)).await?;
        if let Some(remote) = &self.remote {
            for (_, a) in ancestors.iter().filter(|(_, a)| is_remote(&a.labels)) {
                remote.check(a.id).await?;
            }
        }
        let parent_ids: Vec<u64> = ancestors.iter().map(|(_, r)| r.id).collect();
        Ok(self.compose_mounts(record, &parent_ids))
    }

    fn compose_mounts(&self, record: &Record, parents: &[u64]) -> Vec<Mount> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        if parents.is_empty() {
            let mode = if record.kind == Kind::View {
                "ro"
            } else {
                "rw"
            };
            return vec![Mount {
                r#type: "bind".into(),
                source: path(self.upper(record.id)),
                target: String::new(),
                options: vec![mode.into(), "rbind".into()],
            }];
        }
        if record.kind == Kind::View && parents.len() == 1 {
            return vec![Mount {
                r#type: "bind".into(),
                source: path(self.upper(parents[0])),
                target: String::new(),
                options: vec!["ro".into(), "rbind".into()],
            }];
        }
        let mut options = Vec::new();
        if self.overlay_index_off {
            options.push("index=off".to_string());
        }
        if record.kind == Kind::Active {
            options.push(format!("workdir={}", path(self.work(record.id))));
            options.push(format!("upperdir={}", path(self.upper(record.id))));
        }
        let lowers: Vec<String> = parents.iter().map(|id| path(self.upper(*id))).collect();
        options.push(format!("lowerdir={}", lowers.join(":")));
        vec![Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }]
    }

    /// Commits the active snapshot `key` as `name`.
    pub async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let record = self.get(key).await?;
        let upper = self.upper(record.id);
        let usage = blocking(move || disk_usage(&upper)).await?;
        let store = self.store.clone();
        let (n, k) = (name.to_owned(), key.to_owned());
        blocking(move || store.commit(&k, &n, labels, usage)).await?;
        Ok(())
    }

    /// Removes a snapshot without children, unmounting a lazy layer first.
    pub async fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let store = self.store.clone();
        let k = key.to_owned();
        let record = blocking(move || store.remove(&k)).await?;
        let dir = self.dir(record.id);
        if is_remote(&record.labels) {
            if let Some(remote) = &self.remote {
                if let Err(e) = remote.unmount(record.id, &self.upper(record.id)).await {
                    tracing::warn!(key, error = %e, "cannot unmount lazy layer cleanly");
                }
            }
        }
        blocking(move || remove_snapshot_dir(&dir)).await
    }

    async fn get(&self, key: &str) -> Result<Record, SnapshotError> {
        let store = self.store.clone();
        let k = key.to_owned();
        blocking(move || store.get(&k)).await
    }

    /// Information about one snapshot.
    pub async fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        let record = self.get(key).await?;
        Ok(Info::new(key.to_owned(), record))
    }

    /// Updates labels (the only mutable field); see [`MetaStore::update_labels`].
    pub async fn update(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        paths: Vec<String>,
    ) -> Result<Info, SnapshotError> {
        let store = self.store.clone();
        let n = name.to_owned();
        let r = blocking(move || store.update_labels(&n, labels, &paths)).await?;
        Ok(Info::new(name.to_owned(), r))
    }

    /// Disk usage: measured now for active snapshots, recorded at commit for committed ones.
    pub async fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let record = self.get(key).await?;
        match (record.kind, record.usage) {
            (Kind::Committed, Some(u)) => Ok(u),
            _ if is_remote(&record.labels) => Ok(Usage::default()),
            _ => {
                let upper = self.upper(record.id);
                blocking(move || disk_usage(&upper)).await
            }
        }
    }

    /// Snapshots matching containerd filters.
    pub async fn list(&self, filters: &[String]) -> Result<Vec<Info>, SnapshotError> {
        let filter = Filter::parse(filters)?;
        let store = self.store.clone();
        let all = blocking(move || store.list()).await?;
        Ok(all
            .into_iter()
            .filter(|(name, r)| {
                filter.matches(&Fields {
                    name,
                    parent: r.parent.as_deref().unwrap_or(""),
                    kind: r.kind.as_str(),
                    labels: &r.labels,
                })
            })
            .map(|(name, r)| Info::new(name, r))
            .collect())
    }

    /// Removes directories no snapshot refers to (left by crashes or interrupted removals).
    pub async fn cleanup(&self) -> Result<usize, SnapshotError> {
        // Directories first, records second: a snapshot being prepared meanwhile gets its
        // record before its directory, so a directory seen here whose record is missing from
        // the later listing is truly orphaned. (The other order removed the directory of a
        // snapshot prepared between the two listings.)
        let root = self.root.clone();
        let dirs: Vec<(String, std::path::PathBuf)> = blocking(move || {
            let entries = std::fs::read_dir(&root)
                .map_err(|e| SnapshotError::io(format!("cannot list {}", root.display()), e))?;
            Ok(entries
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect())
        })
        .await?;
        let store = self.store.clone();
        let live: HashSet<String> = blocking(move || store.list())
            .await?
            .into_iter()
            .map(|(_, r)| r.id.to_string())
            .collect();
        blocking(move || {
            let mut removed = 0;
            for (name, path) in dirs {
                if live.contains(&name) {
                    continue;
                }
                remove_snapshot_dir(&path)?;
                removed += 1;
            }
            Ok(removed)
        })
        .await
    }
}

/// Deletes a snapshot directory, detaching anything still mounted inside it first.
fn remove_snapshot_dir(dir: &Path) -> Result<(), SnapshotError> {
    mountinfo::detach_all_under(dir)
        .map_err(|e| SnapshotError::io("cannot read the mount table", e))?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::io(
            format!("cannot remove {}", dir.display()),
            e,
        )),
    }
}

/// Bytes (allocated blocks) and inodes under `dir`, counting each hardlinked inode once.
fn disk_usage(dir: &Path) -> Result<Usage, SnapshotError> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&d) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SnapshotError::io(format!("cannot stat {}", d.display()), e)),
        };
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += (meta.blocks() * 512) as i64;
        }
        if meta.is_dir() {
            let entries = std::fs::read_dir(&d)
                .map_err(|e| SnapshotError::io(format!("cannot list {}", d.display()), e))?;
            for e in entries.flatten() {
                stack.push(e.path());
            }
        }
    }
    Ok(usage)
}
