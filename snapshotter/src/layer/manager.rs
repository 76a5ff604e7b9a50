//! Lazy layers: from Prepare labels to a mounted, verified FUSE filesystem, plus the layer's
//! prefetch and background fetch.
//!
//! Mounting a layer: blob size (remembered in a label after the first mount, so restarts need
//! no registry) → footer and TOC read through the piece store (so they are cached too) → TOC
//! digest checked against the manifest's `toc.digest` → index built → FUSE mounted. Then the
//! landmark's prioritized files are fetched (containers wait for that, bounded) and the rest of
//! the blob is fetched in the background at low priority, after which the whole blob's digest
//! is checked by the piece store.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dragonfly_estargz::{IndexOptions, LayerIndex, Prefetch};
use dragonfly_storage::{Blob, PinGuard, Priority};
use dragonfly_task::{OciObject, TaskOpener, TaskSpec};
use futures::future::{BoxFuture, FutureExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::labels::{LayerLabels, BLOB_SIZE};
use super::toc::load_index;
use super::unpack::unpack;
use crate::config::{FuseConfig, PrefetchConfig};
use crate::fs::mount::{adopt, mount, MountedLayerFs};
use crate::fs::{ChunkCache, ChunkReader, LayerFs};
use crate::handoff::{Handoff, MountRecord};
use crate::metrics::Metrics;
use crate::snapshot::remote::{RemoteLayers, LABEL_REMOTE, UNPACKED_VALUE};
use crate::snapshot::SnapshotError;

use super::error::LayerError;

/// Settings of the layer manager.
#[derive(Debug, Clone)]
pub struct LayerSettings {
    /// Prefetch and background fetch.
    pub prefetch: PrefetchConfig,
    /// FUSE.
    pub fuse: FuseConfig,
    /// Mount layers whose TOC digest is unknown.
    pub allow_unverified_toc: bool,
    /// Overlay's opaque-directory xattr name.
    pub opaque_xattr: String,
    /// Bounds on an unpacked ordinary layer.
    pub unpack: super::unpack::UnpackLimits,
}

struct Mounted {
    fs: Option<MountedLayerFs>,
    /// Whether its connection is held across restarts.
    held: bool,
    prefetched: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
    _pin: PinGuard,
}

/// Mounts and tracks lazy layers; the [`RemoteLayers`] of the snapshotter.
pub struct LayerManager {
    tasks: Arc<dyn TaskOpener>,
    chunk_cache: Arc<ChunkCache>,
    metrics: Arc<Metrics>,
    settings: LayerSettings,
    runtime: tokio::runtime::Handle,
    layers: Mutex<HashMap<u64, Mounted>>,
    discovery: Option<super::discover::Discovery>,
    handoff: Option<Arc<Handoff>>,
}

/// A live connection a previous process left, with its record.
pub struct Held {
    /// The `/dev/fuse` description.
    pub fd: std::os::fd::OwnedFd,
    /// What the previous process wrote about it.
    pub record: MountRecord,
}

impl LayerManager {
    /// A manager opening layer blobs with `tasks` (the swarm), finding unlabelled layers
    /// through `discovery` (containerd's content store) when given.
    pub fn new(
        tasks: Arc<dyn TaskOpener>,
        metrics: Arc<Metrics>,
        settings: LayerSettings,
        discovery: Option<super::discover::Discovery>,
        handoff: Option<Arc<Handoff>>,
    ) -> Arc<LayerManager> {
        Arc::new(LayerManager {
            chunk_cache: ChunkCache::new(settings.fuse.chunk_cache_entries),
            tasks,
            metrics,
            settings,
            runtime: tokio::runtime::Handle::current(),
            layers: Mutex::new(HashMap::new()),
            discovery,
            handoff,
        })
    }

    async fn open_blob(&self, l: &LayerLabels) -> Result<Blob, LayerError> {
        let object = OciObject::new(l.image.repo(), &l.digest)
            .map_err(|e| LayerError::BadLabel(format!("layer {}: {e}", l.digest)))?;
        let mut spec = TaskSpec::blob(object, l.blob_size);
        // A layer with a TOC digest is (nearly always) read lazily, in chunks.
        spec.lazy = l.toc_digest.is_some() || l.skip_verify;
        self.tasks
            .open(spec)
            .await
            .map_err(|source| LayerError::Open {
                digest: l.digest.clone(),
                source: Box::new(source),
            })
    }

    /// The layer's index, or `None` for an ordinary layer (no TOC footer).
    async fn build_index(
        &self,
        l: &LayerLabels,
        blob: &Blob,
    ) -> Result<Option<(Arc<LayerIndex>, dragonfly_estargz::LayerFormat)>, LayerError> {
        let opts = IndexOptions {
            opaque_xattr: self.settings.opaque_xattr.clone(),
            ..IndexOptions::default()
        };
        let loaded = load_index(blob, l.toc_digest.clone(), opts).await?;
        Ok(loaded.map(|(index, format)| (Arc::new(index), format)))
    }

    async fn mount_layer(
        &self,
        id: u64,
        mountpoint: &Path,
        labels: &BTreeMap<String, String>,
        held: Option<Held>,
    ) -> Result<BTreeMap<String, String>, LayerError> {
        let l = LayerLabels::parse(labels)?;
        let blob = self.open_blob(&l).await?;
        let verifiable =
            l.toc_digest.is_some() || l.skip_verify || self.settings.allow_unverified_toc;
        // A layer whose TOC cannot be verified, or an ordinary layer: download it through the
        // piece store (so P2P) and unpack it ourselves.
        let built = if verifiable {
            self.build_index(&l, &blob).await?
        } else {
            None
        };
        let Some((index, format)) = built else {
            return self.unpack_layer(&l, blob, mountpoint).await;
        };
        let pin = blob.pin_mounted();
        let reader = ChunkReader::new(
            blob.clone(),
            format,
            self.chunk_cache.clone(),
            self.metrics.clone(),
        );
        let fs = LayerFs::new(
            index.clone(),
            reader,
            self.runtime.clone(),
            Duration::from_secs(self.settings.fuse.attr_timeout_secs),
            self.metrics.clone(),
        );
        let (mounted, kept) = match held {
            Some(h) => {
                self.adopt_or_remount(id, mountpoint, &index, &l, fs, h)
                    .await?
            }
            None => self.mount_fresh(id, mountpoint, &index, &l, fs).await?,
        };
        let (tx, rx) = watch::channel(false);
        let tasks = vec![self.spawn_fetchers(&l.digest, blob.clone(), &index, tx)];
        self.layers.lock().expect("not poisoned").insert(
            id,
            Mounted {
                fs: Some(mounted),
                held: kept,
                prefetched: rx,
                tasks,
                _pin: pin,
            },
        );
        self.metrics.lazy_layers.inc();
        let mut extra = BTreeMap::new();
        extra.insert(BLOB_SIZE.to_owned(), blob.size().to_string());
        Ok(extra)
    }

    /// Mounts `fs` and hands its connection to the keeper; returns whether it is kept.
    async fn mount_fresh(
        &self,
        id: u64,
        mountpoint: &Path,
        index: &LayerIndex,
        l: &LayerLabels,
        fs: LayerFs,
    ) -> Result<(MountedLayerFs, bool), LayerError> {
        let (mp, threads) = (mountpoint.to_owned(), self.settings.fuse.threads);
        let mounted = blocking("mount", move || mount(fs, &mp, threads))
            .await?
            .map_err(mount_error(mountpoint))?;
        let Some(handoff) = self.handoff.clone().filter(|h| h.enabled()) else {
            return Ok((mounted, false));
        };
        let record = MountRecord {
            format: crate::handoff::RECORD_FORMAT,
            snapshot: id,
            mountpoint: mountpoint.to_owned(),
            device: String::new(),
            negotiated: mounted.negotiated(),
            layout: crate::fs::layerfs::layout_digest(index),
            layer: l.digest.clone(),
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        blocking("keep FUSE fd", move || {
            let kept = keep(&handoff, record, &mounted);
            (mounted, kept)
        })
        .await
    }

    /// Adopts the live connection `held` if it is the one this layer's mount needs; else
    /// releases it, detaches the dead or foreign mount and mounts afresh.
    async fn adopt_or_remount(
        &self,
        id: u64,
        mountpoint: &Path,
        index: &LayerIndex,
        l: &LayerLabels,
        fs: LayerFs,
        held: Held,
    ) -> Result<(MountedLayerFs, bool), LayerError> {
        if let Err(reason) = adoptable(&held, id, mountpoint, index) {
            self.metrics
                .fuse_adoption_failures
                .with_label_values(&[reason])
                .inc();
            tracing::warn!(snapshot = id, layer = %l.digest, reason, "cannot adopt the held FUSE connection; remounting (containers using the old mount lose it)");
            drop(held);
            self.let_go(MountRecord::name_for(id), mountpoint.to_owned())
                .await;
            return self.mount_fresh(id, mountpoint, index, l, fs).await;
        }
        let (mp, threads) = (mountpoint.to_owned(), self.settings.fuse.threads);
        let negotiated = held.record.negotiated;
        let adopted = blocking("adopt", move || {
            adopt(held.fd, fs, &mp, threads, negotiated)
        })
        .await?
        .map_err(mount_error(mountpoint))?;
        self.metrics.fuse_adopted.inc();
        tracing::info!(snapshot = id, layer = %l.digest, mountpoint = %mountpoint.display(), resend = negotiated.can_resend(), "adopted the live FUSE connection; running containers keep their layer");
        Ok((adopted, true))
    }

    /// Lets a held connection go: the keeper closes its copy, the record goes, and the mount
    /// is detached (its readers get an error instead of waiting for nobody).
    async fn let_go(&self, name: String, mountpoint: std::path::PathBuf) {
        let handoff = self.handoff.clone();
        let _ = blocking("release FUSE connection", move || {
            if let Some(h) = handoff {
                h.release(&name);
            }
            let _ = crate::snapshot::mountinfo::detach_all_under(&mountpoint);
        })
        .await;
    }

    /// Unpacks the blob into `mountpoint` while it downloads (front to back), then checks the
    /// whole blob against its digest; the snapshot is then an ordinary directory. On any
    /// failure — including a digest mismatch found after unpacking — the directory is emptied,
    /// so nothing unverified is ever committed and containerd's own download starts clean.
    async fn unpack_layer(
        &self,
        l: &LayerLabels,
        blob: Blob,
        mountpoint: &Path,
    ) -> Result<BTreeMap<String, String>, LayerError> {
        let started = Instant::now();
        let _pin = blob.pin();
        let reader = blob.read_in_order(Priority::Bulk);
        let (mp, opaque) = (mountpoint.to_owned(), self.settings.opaque_xattr.clone());
        let limits = self.settings.unpack;
        let unpacked = tokio::task::spawn_blocking(move || unpack(reader, &mp, &opaque, &limits))
            .await
            .map_err(|source| LayerError::Task {
                what: "unpack",
                source,
            });
        // Whatever the unpacker left unread is fetched here; then the digest is checked.
        let verified = blob.fetch_all(Priority::Bulk).await;
        let clear = || {
            let mp = mountpoint.to_owned();
            async move {
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = std::fs::remove_dir_all(&mp);
                    std::fs::create_dir_all(&mp)
                })
                .await;
            }
        };
        if let Err(e) = verified {
            clear().await;
            return Err(LayerError::Download {
                digest: l.digest.clone(),
                source: e,
            });
        }
        let entries = match unpacked {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                clear().await;
                return Err(LayerError::Unpack {
                    digest: l.digest.clone(),
                    source: e,
                });
            }
            Err(e) => {
                clear().await;
                return Err(e);
            }
        };
        tracing::info!(layer = %l.digest, entries, bytes = blob.size(), elapsed_ms = started.elapsed().as_millis() as u64, "layer downloaded through the piece store and unpacked");
        let mut extra = BTreeMap::new();
        extra.insert(LABEL_REMOTE.to_owned(), UNPACKED_VALUE.to_owned());
        extra.insert(BLOB_SIZE.to_owned(), blob.size().to_string());
        Ok(extra)
    }

    /// Landmark prefetch, then (if enabled) the rest of the blob in the background.
    fn spawn_fetchers(
        &self,
        digest: &str,
        blob: Blob,
        index: &LayerIndex,
        done: watch::Sender<bool>,
    ) -> JoinHandle<()> {
        let prefetch = match (self.settings.prefetch.landmark, index.prefetch()) {
            (true, Prefetch::Landmark { end }) => Some(end),
            _ => None,
        };
        let background = self.settings.prefetch.background;
        let digest = digest.to_owned();
        tokio::spawn(async move {
            if let Some(end) = prefetch {
                let started = Instant::now();
                match blob
                    .ensure(0..end.min(blob.size()), Priority::Prefetch)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(layer = %digest, bytes = end, elapsed_ms = started.elapsed().as_millis() as u64, "landmark prefetch done")
                    }
                    Err(e) => {
                        tracing::warn!(layer = %digest, error = %e, "landmark prefetch failed; files will be fetched on demand")
                    }
                }
            }
            let _ = done.send(true);
            if background {
                match blob.fetch_all(Priority::Background).await {
                    Ok(_) => {
                        tracing::info!(layer = %digest, "layer fully fetched and its digest verified")
                    }
                    Err(e) => {
                        tracing::warn!(layer = %digest, error = %e, "background fetch stopped")
                    }
                }
            }
        })
    }

    /// Re-mounts the lazy layers of committed snapshots after a restart, adopting the live
    /// connections in `held` (by [`MountRecord::name_for`] the snapshot id) where they match.
    /// Failures are logged; the snapshot then reports itself unavailable when a container
    /// wants it. Held connections no layer claims are released.
    pub async fn restore(
        &self,
        layers: Vec<(String, u64, std::path::PathBuf, BTreeMap<String, String>)>,
        mut held: BTreeMap<String, Held>,
    ) {
        for (name, id, mountpoint, labels) in layers {
            let h = held.remove(&MountRecord::name_for(id));
            if h.is_none() {
                if let Err(e) = std::fs::create_dir_all(&mountpoint) {
                    tracing::error!(snapshot = %name, error = %e, "cannot recreate mountpoint");
                    continue;
                }
            }
            let was_held = h.is_some();
            match self.mount_layer(id, &mountpoint, &labels, h).await {
                Ok(_) => tracing::info!(snapshot = %name, id, "lazy layer restored"),
                Err(e) => {
                    tracing::error!(snapshot = %name, id, error = %e, "cannot re-mount lazy layer");
                    if was_held {
                        // Nobody would answer the kept connection: its readers would wait
                        // forever.
                        self.metrics
                            .fuse_adoption_failures
                            .with_label_values(&["layer"])
                            .inc();
                        self.let_go(MountRecord::name_for(id), mountpoint.clone())
                            .await;
                    }
                }
            }
        }
        for (name, h) in held {
            tracing::warn!(name, mountpoint = %h.record.mountpoint.display(), "held FUSE connection belongs to no committed snapshot; released");
            self.metrics
                .fuse_adoption_failures
                .with_label_values(&["no-snapshot"])
                .inc();
            self.let_go(name, h.record.mountpoint.clone()).await;
        }
    }

    /// Stops serving every lazy layer whose connection is held, without unmounting, so a
    /// successor adopts them; requests being answered get `grace`.
    pub async fn hand_over_all(&self, grace: Duration) {
        let layers: Vec<Mounted> = {
            let mut l = self.layers.lock().expect("not poisoned");
            let ids: Vec<u64> = l
                .iter()
                .filter(|(_, m)| m.held)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| l.remove(&id)).collect()
        };
        let mut waits = Vec::new();
        for mut m in layers {
            for t in &m.tasks {
                t.abort();
            }
            if let Some(fs) = m.fs.take() {
                waits.push(tokio::task::spawn_blocking(move || fs.hand_over(grace)));
            }
        }
        let n = waits.len();
        futures::future::join_all(waits).await;
        if n > 0 {
            tracing::info!(
                layers = n,
                "lazy layers handed over; their mounts stay for the next daemon"
            );
        }
    }
}

/// Runs blocking `f` (a mount syscall, the fd keeper's socket) off the async workers.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LayerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| LayerError::Task { what, source })
}

fn mount_error(mountpoint: &Path) -> impl FnOnce(crate::fs::mount::MountError) -> LayerError {
    let mountpoint = mountpoint.display().to_string();
    move |source| LayerError::Mount { mountpoint, source }
}

/// Completes `record` with the new mount's device and hands a copy of its connection to the
/// keeper; false (logged) when it cannot be kept. Blocking.
fn keep(handoff: &Handoff, mut record: MountRecord, mounted: &MountedLayerFs) -> bool {
    let mp = record.mountpoint.clone();
    record.device = match crate::snapshot::mountinfo::mount_at(&mp) {
        Ok(Some((device, _))) => device,
        _ => {
            tracing::warn!(mountpoint = %mp.display(), "new FUSE mount not in mountinfo; not kept across restarts");
            return false;
        }
    };
    let name = MountRecord::name_for(record.snapshot);
    match handoff.keep(&name, &record, std::os::fd::AsFd::as_fd(mounted.fd())) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(layer = %record.layer, error = %e, "FUSE connection not kept: running containers will lose this layer if the daemon restarts");
            false
        }
    }
}

/// Why `held` cannot be adopted for snapshot `id` at `mountpoint` with `index`, as a metric
/// label; `Ok` when it can.
fn adoptable(
    held: &Held,
    id: u64,
    mountpoint: &Path,
    index: &LayerIndex,
) -> Result<(), &'static str> {
    let r = &held.record;
    if r.format != crate::handoff::RECORD_FORMAT {
        return Err("format");
    }
    if r.snapshot != id || r.mountpoint != mountpoint {
        return Err("mountpoint");
    }
    match crate::snapshot::mountinfo::mount_at(mountpoint) {
        Ok(Some((device, fstype))) if device == r.device && fstype == "fuse.dragonfly" => {}
        _ => return Err("not-mounted"),
    }
    if !crate::handoff::is_live_fuse(&held.fd) {
        return Err("dead");
    }
    match crate::fs::session::negotiate(&r.negotiated.kernel) {
        Ok(reply) if reply == r.negotiated.reply => {}
        _ => return Err("negotiation"),
    }
    if crate::fs::layerfs::layout_digest(index) != r.layout {
        return Err("layout");
    }
    Ok(())
}

impl RemoteLayers for LayerManager {
    fn wants(&self, labels: &BTreeMap<String, String>) -> bool {
        LayerLabels::present(labels)
    }

    fn discover<'a>(
        &'a self,
        namespace: &'a str,
        target: &'a str,
    ) -> BoxFuture<'a, Option<BTreeMap<String, String>>> {
        async move {
            let d = self.discovery.as_ref()?;
            match d.labels_for(namespace, target).await {
                Ok(Some(found)) => {
                    tracing::info!(namespace, chain = target, image = ?found.get(super::labels::CRI_IMAGE_REF), layer = ?found.get(super::labels::CRI_LAYER_DIGEST), "unlabelled layer found in containerd's content store");
                    Some(found)
                }
                Ok(None) => {
                    tracing::info!(namespace, chain = target, "no image in containerd's content store has this layer; containerd unpacks it");
                    None
                }
                Err(e) => {
                    tracing::warn!(namespace, chain = target, error = %e, "cannot look the layer up in containerd; containerd unpacks it");
                    None
                }
            }
        }
        .boxed()
    }

    fn mount<'a>(
        &'a self,
        id: u64,
        mountpoint: &'a Path,
        labels: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, SnapshotError>> {
        async move {
            let started = Instant::now();
            let res = self
                .mount_layer(id, mountpoint, labels, None)
                .await
                .map_err(SnapshotError::from);
            let result = if res.is_ok() { "ok" } else { "error" };
            self.metrics
                .mount_seconds
                .with_label_values(&[result])
                .observe(started.elapsed().as_secs_f64());
            res
        }
        .boxed()
    }

    fn check(&self, id: u64) -> BoxFuture<'_, Result<(), SnapshotError>> {
        async move {
            let rx = {
                let layers = self.layers.lock().expect("not poisoned");
                match layers.get(&id) {
                    Some(m) => m.prefetched.clone(),
                    None => return Err(LayerError::NotMounted(id).into()),
                }
            };
            let wait = Duration::from_secs(self.settings.prefetch.wait_timeout_secs);
            let mut rx = rx;
            let _ = tokio::time::timeout(wait, rx.wait_for(|done| *done)).await;
            Ok(())
        }
        .boxed()
    }

    fn unmount<'a>(
        &'a self,
        id: u64,
        _mountpoint: &'a Path,
    ) -> BoxFuture<'a, Result<(), SnapshotError>> {
        async move {
            let removed = self.layers.lock().expect("not poisoned").remove(&id);
            if let Some(mut m) = removed {
                for t in &m.tasks {
                    t.abort();
                }
                if let (true, Some(h)) = (m.held, self.handoff.clone()) {
                    let name = MountRecord::name_for(id);
                    let _ = tokio::task::spawn_blocking(move || h.release(&name)).await;
                }
                if let Some(fs) = m.fs.take() {
                    tokio::task::spawn_blocking(move || fs.unmount())
                        .await
                        .map_err(|source| LayerError::Task {
                            what: "unmount",
                            source,
                        })?;
                }
                self.metrics.lazy_layers.dec();
            }
            Ok(())
        }
        .boxed()
    }
}
