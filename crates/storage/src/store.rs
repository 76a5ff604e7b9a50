//! The store: the directory of blobs, their lookup, usage accounting and LRU eviction.
//!
//! Layout: `<dir>/{sha256,task}/<hex>/{data,bitmap,meta.json}`. Opening the store loads every blob
//! found (partial ones resume where they stopped); a directory that is not a usable blob is
//! removed with a warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tokio::sync::Notify;

use crate::bitmap::{piece_count, Bitmap};
use crate::blob::{Blob, BlobInner};
use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::files::{BlobFiles, Meta};
use crate::gate::Gate;
use crate::source::RangeSource;

/// What [`PieceStore::delete_on_request`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The store does not have the blob.
    NotHeld,
    /// Deleted; its present bytes are freed.
    Deleted {
        /// Bytes it held.
        freed: u64,
    },
    /// Kept: this many mounted layers read it.
    Mounted(usize),
    /// Kept: a download or an unpack holds it.
    InUse,
}

/// Counters since the store was opened.
#[derive(Default)]
pub(crate) struct Counters {
    pub hit_bytes: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub fetched_urgent_bytes: AtomicU64,
    pub source_requests: AtomicU64,
    pub digest_failures: AtomicU64,
    pub urgent: UrgentTimes,
}

/// Where the time of fetches someone waited for went, summed in microseconds.
#[derive(Default)]
pub(crate) struct UrgentTimes {
    pub runs: AtomicU64,
    pub gate_micros: AtomicU64,
    pub source_micros: AtomicU64,
    pub store_micros: AtomicU64,
}

impl UrgentTimes {
    /// Adds one run: asked for a slot at `started`, got it at `admitted`, had the bytes at
    /// `arrived`, had them on disk at `stored`.
    pub(crate) fn add(
        &self,
        started: Instant,
        admitted: Instant,
        arrived: Instant,
        stored: Instant,
    ) {
        let micros = |a: Instant, b: Instant| b.duration_since(a).as_micros() as u64;
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.gate_micros
            .fetch_add(micros(started, admitted), Ordering::Relaxed);
        self.source_micros
            .fetch_add(micros(admitted, arrived), Ordering::Relaxed);
        self.store_micros
            .fetch_add(micros(arrived, stored), Ordering::Relaxed);
    }
}

/// What blobs share: the request gate, the settings, counters and the eviction trigger.
pub(crate) struct Shared {
    pub gate: Arc<Gate>,
    pub config: StoreConfig,
    pub stats: Counters,
    pub bytes_on_disk: AtomicU64,
    pub evict: Notify,
    clock: AtomicU64,
    /// When the last fetch someone waits for (anything but background) started.
    last_urgent: Mutex<Option<std::time::Instant>>,
}

impl Shared {
    /// A monotonically increasing use stamp for LRU order.
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Notes that a fetch someone waits for is starting.
    pub(crate) fn urgent_fetch_started(&self) {
        *self.last_urgent.lock().expect("urgent lock") = Some(std::time::Instant::now());
    }

    /// Waits until no urgent fetch has started for the configured pause.
    pub(crate) async fn background_pause(&self) {
        let pause = std::time::Duration::from_millis(self.config.background_pause_ms);
        loop {
            let last = *self.last_urgent.lock().expect("urgent lock");
            match last.map(|t| t.elapsed()) {
                Some(since) if since < pause => tokio::time::sleep(pause - since).await,
                _ => return,
            }
        }
    }
}

/// Counters of the store since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes read that were already present.
    pub hit_bytes: u64,
    /// Bytes fetched from sources.
    pub fetched_bytes: u64,
    /// Of those, bytes fetched for a reader that waited (on-demand, prefetch, bulk), not for a
    /// background fill.
    pub fetched_urgent_bytes: u64,
    /// Requests made to sources.
    pub source_requests: u64,
    /// Fetches someone waited for (not background), and the microseconds they spent, summed:
    /// waiting for a request slot, in the source, writing the pieces (the sync comes after).
    pub urgent_runs: u64,
    /// See [`StoreStats::urgent_runs`].
    pub urgent_gate_micros: u64,
    /// See [`StoreStats::urgent_runs`].
    pub urgent_source_micros: u64,
    /// See [`StoreStats::urgent_runs`].
    pub urgent_store_micros: u64,
    /// Complete blobs that did not match their digest.
    pub digest_failures: u64,
}

/// What the store holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUsage {
    /// Bytes of pieces present.
    pub bytes_on_disk: u64,
    /// Blobs known.
    pub blobs: usize,
    /// Blobs pinned (not evictable).
    pub pinned: usize,
}

struct StoreInner {
    dir: PathBuf,
    shared: Arc<Shared>,
    blobs: Mutex<HashMap<String, Arc<BlobInner>>>,
    /// Held by an eviction pass: two at once (the background task and a caller) would each
    /// see usage still over capacity while the other's victim is being removed, and evict
    /// more than needed.
    evicting: Mutex<()>,
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        // Wakes the eviction task so it notices the store is gone.
        self.shared.evict.notify_one();
    }
}

/// The piece store; cheap to clone.
#[derive(Clone)]
pub struct PieceStore {
    inner: Arc<StoreInner>,
}

/// Blob names: `sha256:<hex>` for content-addressed blobs (verified against the name when
/// complete) and `task:<hex>` for tasks that are not (files fetched by URL; their pieces are
/// verified by whoever fetches them, and against a content digest when a request gives one).
const KINDS: [&str; 2] = ["sha256", "task"];

/// `kind` and hex of a blob name `<kind>:<64 lowercase hex>`, if it is one.
fn name_parts(digest: &str) -> Option<(&str, &str)> {
    digest.split_once(':').filter(|(k, h)| {
        KINDS.contains(k)
            && h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `digest` is `sha256:<64 lowercase hex>`.
pub(crate) fn is_sha256(digest: &str) -> bool {
    name_parts(digest).is_some_and(|(k, _)| k == "sha256")
}

fn blob_dir(root: &Path, digest: &str) -> Result<PathBuf, StoreError> {
    let (kind, hex) =
        name_parts(digest).ok_or_else(|| StoreError::InvalidDigest(digest.to_owned()))?;
    Ok(root.join(kind).join(hex))
}

impl PieceStore {
    /// Opens (or creates) the store in `dir`, loading the blobs already there.
    pub async fn open(dir: &Path, config: StoreConfig) -> Result<PieceStore, StoreError> {
        config.validate()?;
        let shared = Arc::new(Shared {
            gate: Gate::new(config.max_concurrent_fetches),
            config,
            stats: Counters::default(),
            bytes_on_disk: AtomicU64::new(0),
            evict: Notify::new(),
            clock: AtomicU64::new(1),
            last_urgent: Mutex::new(None),
        });
        let root = dir.to_owned();
        let loaded = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || load_all(&root, &shared))
                .await
                .map_err(|e| StoreError::Io {
                    what: "store loading task failed",
                    path: dir.to_owned(),
                    source: std::io::Error::other(e.to_string()),
                })??
        };
        let store = PieceStore {
            inner: Arc::new(StoreInner {
                dir: dir.to_owned(),
                shared,
                blobs: Mutex::new(loaded),
                evicting: Mutex::new(()),
            }),
        };
        tokio::spawn(evict_loop(Arc::downgrade(&store.inner)));
        store.inner.shared.evict.notify_one();
        Ok(store)
    }

    /// The blob `digest` of `size` bytes, fetched from `source` when pieces are missing. An
    /// existing blob keeps its pieces, and its source if it has one (replace it only with
    /// [`Blob::refresh_origin`]).
    pub fn blob(
        &self,
        digest: &str,
        size: u64,
        source: Arc<dyn RangeSource>,
    ) -> Result<Blob, StoreError> {
        self.blob_with_piece_length(digest, size, source, self.inner.shared.config.piece_length)
    }

    /// Like [`PieceStore::blob`], cutting a new blob into `piece_length` pieces (a power of
    /// two from 16 KiB to 64 MiB; e.g. the length the swarm already uses for the task). An
    /// existing blob keeps the length it has.
    pub fn blob_with_piece_length(
        &self,
        digest: &str,
        size: u64,
        source: Arc<dyn RangeSource>,
        piece_length: u32,
    ) -> Result<Blob, StoreError> {
        self.open_blob(digest, size, piece_length, || source)
    }

    /// The blob `digest`: an existing one (which keeps its pieces, piece length and source),
    /// else a new one cut into `piece_length` pieces. `make` builds the source only for a blob
    /// that has none yet (new, or loaded from disk).
    pub fn open_blob(
        &self,
        digest: &str,
        size: u64,
        piece_length: u32,
        make: impl FnOnce() -> Arc<dyn RangeSource>,
    ) -> Result<Blob, StoreError> {
        if !piece_length.is_power_of_two() || !(16 << 10..=64 << 20).contains(&piece_length) {
            return Err(StoreError::Config(format!(
                "piece length {piece_length} of {digest} is not a power of two from 16 KiB to 64 MiB"
            )));
        }
        let dir = blob_dir(&self.inner.dir, digest)?;
        let mut blobs = self.inner.blobs.lock().expect("store lock");
        if let Some(inner) = blobs.get(digest) {
            if inner.size != size {
                return Err(StoreError::SizeMismatch {
                    digest: digest.to_owned(),
                    stored: inner.size,
                    asked: size,
                });
            }
            inner.attach_source(make);
            return Ok(Blob::from_inner(inner.clone()));
        }
        let meta = Meta {
            digest: digest.to_owned(),
            size,
            piece_length,
            verified: false,
            content_digest: None,
        };
        let files = BlobFiles::create(&dir, &meta)?;
        let have = Bitmap::empty(piece_count(size, meta.piece_length));
        let inner = BlobInner::new(
            files,
            meta,
            have.clone(),
            have,
            Some(make()),
            self.inner.shared.clone(),
        );
        blobs.insert(digest.to_owned(), inner.clone());
        Ok(Blob::from_inner(inner))
    }

    /// Makes every piece stored so far durable, in every blob (each run's own sync follows it
    /// by moments; this waits for them all, e.g. before the daemon exits).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let blobs: Vec<Arc<BlobInner>> = self
            .inner
            .blobs
            .lock()
            .expect("store lock")
            .values()
            .cloned()
            .collect();
        let dir = self.inner.dir.clone();
        // Every blob is tried; the first failure is the answer.
        let flush_all = move || {
            let mut first = Ok(());
            for b in &blobs {
                let r = b.flush();
                if first.is_ok() {
                    first = r;
                }
            }
            first
        };
        tokio::task::spawn_blocking(flush_all)
            .await
            .map_err(|e| StoreError::Io {
                what: "flush task failed",
                path: dir,
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// The blob `digest` if the store knows it (whatever pieces it has).
    pub fn get(&self, digest: &str) -> Option<Blob> {
        let blobs = self.inner.blobs.lock().expect("store lock");
        blobs.get(digest).map(|b| Blob::from_inner(b.clone()))
    }

    /// The blobs that hold pieces but have no source yet: those loaded from disk that no
    /// request has opened since (what this peer can offer the swarm after a restart).
    pub fn without_source(&self) -> Vec<Blob> {
        let blobs = self.inner.blobs.lock().expect("store lock");
        blobs
            .values()
            .filter(|b| !b.has_source() && b.present_bytes() > 0)
            .map(|b| Blob::from_inner(b.clone()))
            .collect()
    }

    /// The piece length `digest` has (if stored) or will get.
    pub fn piece_length_of(&self, digest: &str) -> u32 {
        self.piece_length_for(digest, false)
    }

    /// Like [`PieceStore::piece_length_of`], for a blob that will be read `lazy`ly (in small
    /// ranges): a new one gets `cache.lazy_piece_length`.
    pub fn piece_length_for(&self, digest: &str, lazy: bool) -> u32 {
        let blobs = self.inner.blobs.lock().expect("store lock");
        let config = &self.inner.shared.config;
        let new = if lazy {
            config.lazy_piece_length
        } else {
            config.piece_length
        };
        blobs.get(digest).map_or(new, |b| b.piece_length)
    }

    /// A reader is about to fetch (this peer was triggered by a container blocked on chunks):
    /// background fills hold off for the pause, as if its fetch had already started, so a
    /// fill started by the same trigger never takes the bandwidth first.
    pub fn demand_expected(&self) {
        self.inner.shared.urgent_fetch_started();
    }

    /// Counters since the store was opened.
    pub fn stats(&self) -> StoreStats {
        let s = &self.inner.shared.stats;
        StoreStats {
            hit_bytes: s.hit_bytes.load(Ordering::Relaxed),
            fetched_bytes: s.fetched_bytes.load(Ordering::Relaxed),
            fetched_urgent_bytes: s.fetched_urgent_bytes.load(Ordering::Relaxed),
            source_requests: s.source_requests.load(Ordering::Relaxed),
            urgent_runs: s.urgent.runs.load(Ordering::Relaxed),
            urgent_gate_micros: s.urgent.gate_micros.load(Ordering::Relaxed),
            urgent_source_micros: s.urgent.source_micros.load(Ordering::Relaxed),
            urgent_store_micros: s.urgent.store_micros.load(Ordering::Relaxed),
            digest_failures: s.digest_failures.load(Ordering::Relaxed),
        }
    }

    /// What the store holds now.
    pub fn usage(&self) -> StoreUsage {
        let blobs = self.inner.blobs.lock().expect("store lock");
        StoreUsage {
            bytes_on_disk: self.inner.shared.bytes_on_disk.load(Ordering::Relaxed),
            blobs: blobs.len(),
            pinned: blobs.values().filter(|b| b.pins() > 0).count(),
        }
    }

    /// Removes `digest` for an operator (a delete_task job) unless something uses it: a
    /// mounted layer, a download or an unpack holding it.
    pub fn delete_on_request(&self, digest: &str) -> Result<Deletion, StoreError> {
        let victim = {
            let mut blobs = self.inner.blobs.lock().expect("store lock");
            let Some(b) = blobs.get(digest) else {
                return Ok(Deletion::NotHeld);
            };
            if b.mounts() > 0 {
                return Ok(Deletion::Mounted(b.mounts()));
            }
            if Arc::strong_count(b) > 1 || b.pins() > 0 || b.is_busy() {
                return Ok(Deletion::InUse);
            }
            Self::take(&mut blobs, digest, self.inner.shared.tick()).expect("looked up above")
        };
        let freed = victim.0.present_bytes();
        self.delete(&victim.0, &victim.1)?;
        Ok(Deletion::Deleted { freed })
    }

    /// Takes `digest` out of the map and moves its directory aside, under the store lock: a
    /// blob opened again right after gets a fresh directory that the removal cannot touch.
    /// The directory to remove (the original one if it could not be moved).
    fn take(
        blobs: &mut HashMap<String, Arc<BlobInner>>,
        digest: &str,
        stamp: u64,
    ) -> Option<(Arc<BlobInner>, PathBuf)> {
        let blob = blobs.remove(digest)?;
        blob.mark_removed();
        let dir = blob.dir().to_owned();
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        // Not a digest's name: a leftover is removed when the store next opens.
        let aside = dir.with_file_name(format!("{}.deleting-{stamp}", name.unwrap_or_default()));
        match std::fs::rename(&dir, &aside) {
            Ok(()) => Some((blob, aside)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot move a removed blob aside; removing it in place");
                Some((blob, dir))
            }
        }
    }

    /// Removes a blob [`PieceStore::take`] took, outside the store lock.
    fn delete(&self, blob: &BlobInner, dir: &Path) -> Result<(), StoreError> {
        blob.release_source();
        self.inner
            .shared
            .bytes_on_disk
            .fetch_sub(blob.present_bytes(), Ordering::Relaxed);
        std::fs::remove_dir_all(dir).map_err(StoreError::io("cannot remove blob", dir))
    }

    /// Evicts least-recently-used blobs nobody holds until usage is within capacity, one pass
    /// at a time. Returns the bytes freed.
    pub fn evict_to_capacity(&self) -> u64 {
        let _one = self.inner.evicting.lock().expect("eviction lock");
        let capacity = self.inner.shared.config.capacity_bytes;
        let mut freed = 0;
        while self.inner.shared.bytes_on_disk.load(Ordering::Relaxed) > capacity {
            let victim = {
                let mut blobs = self.inner.blobs.lock().expect("store lock");
                let oldest = blobs
                    .iter()
                    .filter(|(_, b)| Arc::strong_count(b) == 1 && b.pins() == 0 && !b.is_busy())
                    .min_by_key(|(_, b)| b.last_used())
                    .map(|(d, _)| d.clone());
                oldest.and_then(|d| Self::take(&mut blobs, &d, self.inner.shared.tick()))
            };
            let Some((victim, dir)) = victim else {
                tracing::warn!(
                    capacity,
                    used = self.inner.shared.bytes_on_disk.load(Ordering::Relaxed),
                    "piece store is over capacity but every blob is in use"
                );
                break;
            };
            let bytes = victim.present_bytes();
            match self.delete(&victim, &dir) {
                Ok(()) => {
                    freed += bytes;
                    tracing::info!(blob = %victim.digest, bytes, "evicted from the piece store");
                }
                Err(e) => tracing::error!(blob = %victim.digest, error = %e, "eviction failed"),
            }
        }
        freed
    }
}

async fn evict_loop(store: Weak<StoreInner>) {
    loop {
        let Some(shared) = store.upgrade().map(|s| s.shared.clone()) else {
            return;
        };
        shared.evict.notified().await;
        drop(shared);
        let Some(inner) = store.upgrade() else { return };
        let store = PieceStore { inner };
        let _ = tokio::task::spawn_blocking(move || store.evict_to_capacity()).await;
    }
}

fn load_all(
    root: &Path,
    shared: &Arc<Shared>,
) -> Result<HashMap<String, Arc<BlobInner>>, StoreError> {
    let mut blobs = HashMap::new();
    for kind in KINDS {
        load_kind(root, kind, shared, &mut blobs)?;
    }
    Ok(blobs)
}

fn load_kind(
    root: &Path,
    kind: &str,
    shared: &Arc<Shared>,
    blobs: &mut HashMap<String, Arc<BlobInner>>,
) -> Result<(), StoreError> {
    let dir = root.join(kind);
    std::fs::create_dir_all(&dir).map_err(StoreError::io(
        "cannot create the piece store directory",
        &dir,
    ))?;
    let entries =
        std::fs::read_dir(&dir).map_err(StoreError::io("cannot list the piece store", &dir))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("cannot list the piece store", &dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let digest = format!("{kind}:{name}");
        let loaded = blob_dir(root, &digest)
            .map_err(|e| e.to_string())
            .and_then(|_| BlobFiles::load(&path))
            .and_then(|(files, meta, pieces)| {
                if meta.digest != digest {
                    Err(format!("meta.json names {}", meta.digest))
                } else {
                    Ok((files, meta, pieces))
                }
            });
        match loaded {
            Ok((files, meta, pieces)) => {
                let inner = BlobInner::new(
                    files,
                    meta,
                    pieces.have,
                    pieces.durable,
                    None,
                    shared.clone(),
                );
                // Pieces a killed daemon stored but had not synced yet: synced now.
                if let Err(e) = inner.flush() {
                    tracing::warn!(blob = %digest, error = %e, "cannot sync pieces found at start; they will be fetched again");
                }
                shared
                    .bytes_on_disk
                    .fetch_add(inner.present_bytes(), Ordering::Relaxed);
                blobs.insert(digest, inner);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing an unusable piece store entry");
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
    }
    Ok(())
}
