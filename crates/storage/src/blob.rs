//! One blob in the store and the fetching of its missing pieces.
//!
//! A read first makes its pieces present: pieces already being fetched are waited for (and
//! their request's priority raised to the reader's), the others are grouped into runs of
//! adjacent pieces, each fetched by one source request in its own task (so a reader that gives
//! up never leaves a half-done piece behind). A run's bytes are taken as they arrive: each
//! time whole pieces are in, they are written, marked present in memory and in this boot's
//! bitmap (unsynced), and the readers waiting for them told, while the rest of the run is still
//! arriving (a source that fails midway is asked again for the rest). Then, off the readers'
//! path, the data file is synced and the bitmap saved as it was before the sync. So the
//! synced bitmap never names a piece that is not durable (after a crash of the machine a piece
//! is fetched again, never trusted), and a daemon killed and restarted within the boot finds
//! every piece it had (their bytes are in the page cache).

use std::collections::HashMap;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::bitmap::Bitmap;
use crate::error::StoreError;
use crate::files::{BlobFiles, Meta};
use crate::gate::Priority;
use crate::source::{RangeSource, RangeStream, SourceError};
use crate::store::is_sha256;
use crate::store::Shared;

/// Why a run failed, as handed to everyone waiting on it.
#[derive(Debug, Clone)]
struct RunFailure {
    message: String,
    retryable: bool,
}

impl From<SourceError> for RunFailure {
    fn from(e: SourceError) -> RunFailure {
        RunFailure {
            message: e.message,
            retryable: e.retryable,
        }
    }
}

impl RunFailure {
    /// The source answered `got` bytes for `range`.
    fn wrong_length(got: u64, range: &Range<u64>) -> RunFailure {
        RunFailure {
            message: format!(
                "the source returned {got} bytes for a {}-byte range (bytes {}..{})",
                range.end - range.start,
                range.start,
                range.end
            ),
            retryable: true,
        }
    }
}

/// A source's chunks as the store takes them: each time, the next chunk together with every
/// further chunk that has already arrived, so pieces that came together are stored together
/// in one write.
struct Arrivals {
    chunks: futures::stream::Fuse<RangeStream>,
    /// A failure met while joining, handed out after the bytes before it.
    failed: Option<SourceError>,
}

impl Arrivals {
    fn new(chunks: RangeStream) -> Arrivals {
        Arrivals {
            chunks: chunks.fuse(),
            failed: None,
        }
    }

    async fn next(&mut self) -> Option<Result<Bytes, SourceError>> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let first = match self.chunks.next().await? {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        let mut joined: Option<BytesMut> = None;
        while let Some(Some(more)) = self.chunks.next().now_or_never() {
            match more {
                Ok(b) => joined
                    .get_or_insert_with(|| BytesMut::from(&first[..]))
                    .extend_from_slice(&b),
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            }
        }
        Some(Ok(joined.map_or(first, BytesMut::freeze)))
    }
}

/// How often a run asks its source again for the rest after a failure midway (each time only
/// after more pieces arrived).
const MAX_RESUMES: u32 = 3;

/// How far a run has got. Its pieces are stored in order, from the first, as their bytes
/// arrive; a reader waits only for the pieces it needs.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// How many of the run's pieces (from its first) are stored.
    stored: u32,
    /// Set when the run has ended.
    outcome: Option<Result<(), RunFailure>>,
}

/// One source request for a run of adjacent pieces.
struct Run {
    pieces: Range<u32>,
    priority: Arc<AtomicU8>,
    progress: watch::Sender<Progress>,
}

impl Run {
    /// Waits until the run's pieces before `need_end` are stored, or it ended without them.
    async fn wait_until(&self, need_end: u32) -> Result<(), RunFailure> {
        let need = need_end
            .min(self.pieces.end)
            .saturating_sub(self.pieces.start);
        let mut rx = self.progress.subscribe();
        let seen = rx
            .wait_for(|p| p.stored >= need || p.outcome.is_some())
            .await
            .map(|p| p.clone());
        match seen {
            Ok(p) if p.stored >= need => Ok(()),
            Ok(p) => p.outcome.expect("checked is_some"),
            Err(_) => Err(RunFailure {
                message: "the fetch task ended without a result".into(),
                retryable: true,
            }),
        }
    }
}

struct State {
    have: Bitmap,
    inflight: HashMap<u32, Arc<Run>>,
    /// Bumped whenever pieces are thrown away, so a read can tell its bytes may be stale.
    generation: u64,
}

pub(crate) struct BlobInner {
    pub(crate) digest: String,
    pub(crate) size: u64,
    pub(crate) piece_length: u32,
    files: BlobFiles,
    meta: Mutex<Meta>,
    state: Mutex<State>,
    /// Where missing pieces come from; `None` until the first open gives it one (a blob loaded
    /// from disk has none).
    source: Mutex<Option<Arc<dyn RangeSource>>>,
    shared: Arc<Shared>,
    pins: AtomicUsize,
    /// Of the pins, those of mounted layers (reads can come at any time).
    mounts: AtomicUsize,
    last_used: AtomicU64,
    removed: AtomicBool,
    /// The pieces the synced bitmap on disk names; held while saving it, so saves are
    /// serialized and the last one written is the newest.
    durable: Mutex<Bitmap>,
    /// Held while saving this boot's bitmap, for the same reason.
    boot_save: Mutex<()>,
    /// Serializes whole-blob verification.
    verify: tokio::sync::Mutex<()>,
    /// What the blob hashed to when it last failed verification.
    last_mismatch: Mutex<Option<String>>,
}

/// A handle on one blob; cheap to clone.
#[derive(Clone)]
pub struct Blob {
    inner: Arc<BlobInner>,
}

/// Keeps a blob from being evicted while held.
pub struct PinGuard {
    inner: Arc<BlobInner>,
    mount: bool,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if self.mount {
            self.inner.mounts.fetch_sub(1, Ordering::AcqRel);
        }
        self.inner.pins.fetch_sub(1, Ordering::AcqRel);
        self.inner.shared.evict.notify_one();
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("digest", &self.inner.digest)
            .field("size", &self.inner.size)
            .finish()
    }
}

impl BlobInner {
    /// `len` bytes at `start` of the data file, read off the async workers.
    async fn read_data(self: &Arc<Self>, start: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let inner = self.clone();
        tokio::task::spawn_blocking(move || inner.files.read(start, len))
            .await
            .map_err(|e| StoreError::Io {
                what: "read task failed",
                path: self.dir().to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?
    }

    /// A blob holding `have`, of which `durable` is synced.
    pub(crate) fn new(
        files: BlobFiles,
        meta: Meta,
        have: Bitmap,
        durable: Bitmap,
        source: Option<Arc<dyn RangeSource>>,
        shared: Arc<Shared>,
    ) -> Arc<BlobInner> {
        Arc::new(BlobInner {
            digest: meta.digest.clone(),
            size: meta.size,
            piece_length: meta.piece_length,
            files,
            meta: Mutex::new(meta),
            durable: Mutex::new(durable),
            boot_save: Mutex::new(()),
            state: Mutex::new(State {
                have,
                inflight: HashMap::new(),
                generation: 0,
            }),
            source: Mutex::new(source),
            last_used: AtomicU64::new(shared.tick()),
            shared,
            pins: AtomicUsize::new(0),
            mounts: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            verify: tokio::sync::Mutex::new(()),
            last_mismatch: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("blob state lock")
    }

    /// Gives the blob `make()` as its source unless it has one; returns whether it did.
    pub(crate) fn attach_source(&self, make: impl FnOnce() -> Arc<dyn RangeSource>) -> bool {
        let mut source = self.source.lock().expect("source lock");
        if source.is_some() {
            return false;
        }
        *source = Some(make());
        true
    }

    pub(crate) fn has_source(&self) -> bool {
        self.source.lock().expect("source lock").is_some()
    }

    /// The source, or an error saying the blob has none yet.
    fn current_source(&self) -> Result<Arc<dyn RangeSource>, SourceError> {
        self.source
            .lock()
            .expect("source lock")
            .clone()
            .ok_or_else(|| {
                SourceError::new(
                    format!(
                        "no source is known for blob {} yet; open it with a source first",
                        self.digest
                    ),
                    false,
                )
            })
    }

    /// Tells the source the blob left the store.
    pub(crate) fn release_source(&self) {
        if let Some(s) = self.source.lock().expect("source lock").take() {
            s.released();
        }
    }

    pub(crate) fn pins(&self) -> usize {
        self.pins.load(Ordering::Acquire)
    }

    pub(crate) fn mounts(&self) -> usize {
        self.mounts.load(Ordering::Acquire)
    }

    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    pub(crate) fn is_busy(&self) -> bool {
        !self.lock().inflight.is_empty()
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    pub(crate) fn dir(&self) -> &std::path::Path {
        self.files.dir()
    }

    /// Bytes of the pieces present.
    pub(crate) fn present_bytes(&self) -> u64 {
        let st = self.lock();
        self.bytes_of(&st.have)
    }

    fn bytes_of(&self, have: &Bitmap) -> u64 {
        let full = u64::from(have.present()) * u64::from(self.piece_length);
        // The last piece may be short.
        let n = have.pieces();
        if n > 0 && have.has(n - 1) {
            full - (u64::from(n) * u64::from(self.piece_length) - self.size)
        } else {
            full
        }
    }

    fn piece_range(&self, pieces: &Range<u32>) -> Range<u64> {
        let pl = u64::from(self.piece_length);
        u64::from(pieces.start) * pl..(u64::from(pieces.end) * pl).min(self.size)
    }

    fn pieces_of(&self, range: &Range<u64>) -> Range<u32> {
        let pl = u64::from(self.piece_length);
        (range.start / pl) as u32..range.end.div_ceil(pl) as u32
    }

    fn check_range(&self, range: &Range<u64>) -> Result<(), StoreError> {
        if range.start > range.end || range.end > self.size {
            return Err(StoreError::OutOfRange {
                digest: self.digest.clone(),
                start: range.start,
                end: range.end,
                size: self.size,
            });
        }
        if self.removed.load(Ordering::Acquire) {
            return Err(StoreError::Removed(self.digest.clone()));
        }
        Ok(())
    }

    fn failure(&self, pieces: &Range<u32>, f: RunFailure) -> StoreError {
        let r = self.piece_range(pieces);
        StoreError::Fetch {
            digest: self.digest.clone(),
            start: r.start,
            end: r.end,
            message: f.message,
            retryable: f.retryable,
        }
    }

    /// Makes the pieces of `range` present.
    async fn ensure(
        self: &Arc<Self>,
        range: Range<u64>,
        priority: Priority,
    ) -> Result<(), StoreError> {
        self.ensure_within(range.clone(), range, priority).await
    }

    /// Makes the pieces of `need` present, fetching every missing piece of `claim` (which
    /// holds `need`) with them, in the same runs; returns as soon as those of `need` are in,
    /// while the rest of `claim` goes on arriving.
    async fn ensure_within(
        self: &Arc<Self>,
        claim: Range<u64>,
        need: Range<u64>,
        priority: Priority,
    ) -> Result<(), StoreError> {
        self.check_range(&claim)?;
        self.check_range(&need)?;
        self.last_used.store(self.shared.tick(), Ordering::Relaxed);
        if need.is_empty() {
            return Ok(());
        }
        let (claim, need) = (self.pieces_of(&claim), self.pieces_of(&need));
        loop {
            if priority == Priority::Background && !self.lock().have.has_all(need.clone()) {
                // Wait for a quiet moment before claiming pieces: a container read must never
                // find its piece claimed by a background request that is still waiting.
                self.shared.background_pause().await;
            }
            let Some(waits) = self.claim(claim.clone(), need.clone(), priority) else {
                return Ok(());
            };
            for run in waits {
                if let Err(f) = run.wait_until(need.end).await {
                    return Err(self.failure(&run.pieces, f));
                }
            }
        }
    }

    /// Starts runs for the missing pieces of `claim` not already in flight and returns the
    /// runs holding missing pieces of `need`; `None` once `need` is present.
    fn claim(
        self: &Arc<Self>,
        claim: Range<u32>,
        need: Range<u32>,
        priority: Priority,
    ) -> Option<Vec<Arc<Run>>> {
        let per_fetch = self.shared.config.pieces_per_fetch(self.piece_length);
        let mut st = self.lock();
        if st.have.has_all(need.clone()) {
            return None;
        }
        let mut runs: Vec<Arc<Run>> = Vec::new();
        let mut new_runs: Vec<Range<u32>> = Vec::new();
        let mut current: Option<Range<u32>> = None;
        for p in st.have.missing(claim.clone()).collect::<Vec<u32>>() {
            if let Some(run) = st.inflight.get(&p) {
                run.priority.fetch_max(priority as u8, Ordering::Relaxed);
                if !runs.iter().any(|w| Arc::ptr_eq(w, run)) {
                    runs.push(run.clone());
                }
                new_runs.extend(current.take());
                continue;
            }
            current = match current.take() {
                Some(r) if r.end == p && r.end - r.start < per_fetch => Some(r.start..p + 1),
                Some(r) => {
                    new_runs.push(r);
                    Some(p..p + 1)
                }
                None => Some(p..p + 1),
            };
        }
        new_runs.extend(current.take());
        for pieces in new_runs {
            let (progress, _) = watch::channel(Progress::default());
            let run = Arc::new(Run {
                pieces: pieces.clone(),
                priority: Arc::new(AtomicU8::new(priority as u8)),
                progress,
            });
            for p in pieces {
                st.inflight.insert(p, run.clone());
            }
            tokio::spawn(self.clone().run_task(run.clone()));
            runs.push(run);
        }
        runs.retain(|r| r.pieces.start < need.end && need.start < r.pieces.end);
        Some(runs)
    }

    /// Fetches one run and tells its waiters, whatever happens.
    async fn run_task(self: Arc<Self>, run: Arc<Run>) {
        let res = AssertUnwindSafe(self.fetch_run(&run)).catch_unwind().await;
        let res = match res {
            Ok(r) => r,
            Err(_) => Err(RunFailure {
                message: "the fetch task panicked (a bug; see the daemon log)".into(),
                retryable: true,
            }),
        };
        {
            let mut st = self.lock();
            for p in run.pieces.clone() {
                if st.inflight.get(&p).is_some_and(|r| Arc::ptr_eq(r, &run)) {
                    st.inflight.remove(&p);
                }
            }
        }
        if let Err(f) = &res {
            tracing::warn!(blob = %self.digest, pieces = ?run.pieces, error = %f.message, "piece fetch failed");
        }
        let stored = run.progress.borrow().stored > 0;
        run.progress.send_modify(|p| p.outcome = Some(res));
        if stored {
            self.flush_in_background().await;
        }
        self.shared.evict.notify_one();
    }

    /// Fetches a run from the source, storing its pieces as their bytes arrive. A retryable
    /// failure after some pieces arrived asks again for the rest (so a connection lost midway
    /// costs only what was not yet stored).
    async fn fetch_run(self: &Arc<Self>, run: &Run) -> Result<(), RunFailure> {
        let urgent = run.priority.load(Ordering::Relaxed) != Priority::Background as u8;
        if urgent {
            self.shared.urgent_fetch_started();
        }
        let started = Instant::now();
        let _permit = self.shared.gate.acquire(run.priority.clone()).await;
        let admitted = Instant::now();
        let source = self.current_source().map_err(RunFailure::from)?;
        let mut next = run.pieces.start;
        let mut resumes = 0;
        let arrived = loop {
            let from = next;
            match self.stream_pieces(run, &source, &mut next).await {
                Ok(arrived) => break arrived,
                Err(f) if f.retryable && next > from && resumes < MAX_RESUMES => {
                    resumes += 1;
                    tracing::debug!(blob = %self.digest, pieces = ?(next..run.pieces.end), error = %f.message, "source failed midway; asking again for the rest");
                }
                Err(f) => return Err(f),
            }
        };
        if urgent {
            self.shared
                .stats
                .urgent
                .add(started, admitted, arrived, Instant::now());
        }
        Ok(())
    }

    /// One source request for the run's pieces from `*next` on; each whole piece (or several,
    /// as much as has arrived) is stored at once and `*next` moved past it. Returns when the
    /// last bytes arrived (before they were stored).
    async fn stream_pieces(
        self: &Arc<Self>,
        run: &Run,
        source: &Arc<dyn RangeSource>,
        next: &mut u32,
    ) -> Result<Instant, RunFailure> {
        let range = self.piece_range(&(*next..run.pieces.end));
        self.shared
            .stats
            .source_requests
            .fetch_add(1, Ordering::Relaxed);
        let priority = Priority::from_u8(run.priority.load(Ordering::Relaxed));
        let mut chunks = Arrivals::new(
            source
                .fetch_stream(range.clone(), priority)
                .await
                .map_err(RunFailure::from)?,
        );
        let mut buf = BytesMut::new();
        let mut offset = range.start;
        let mut arrived = Instant::now();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(RunFailure::from)?;
            arrived = Instant::now();
            if offset + (buf.len() + chunk.len()) as u64 > range.end {
                return Err(RunFailure::wrong_length(
                    offset - range.start + (buf.len() + chunk.len()) as u64,
                    &range,
                ));
            }
            let end = self.whole_pieces_end(offset + (buf.len() + chunk.len()) as u64, range.end);
            if end <= offset {
                buf.extend_from_slice(&chunk);
            } else {
                let data = if buf.is_empty() {
                    // Whole pieces at the chunk's start are written without a copy.
                    let cut = (end - offset) as usize;
                    buf.extend_from_slice(&chunk[cut..]);
                    chunk.slice(..cut)
                } else {
                    buf.extend_from_slice(&chunk);
                    buf.split_to((end - offset) as usize).freeze()
                };
                self.store_arrived(run, source, offset, data).await?;
                offset = end;
                *next = self.pieces_of(&(0..end)).end;
                if offset == range.end {
                    // All asked for is in; what the stream may still say does not matter.
                    break;
                }
            }
        }
        if offset != range.end || !buf.is_empty() {
            return Err(RunFailure::wrong_length(
                offset - range.start + buf.len() as u64,
                &range,
            ));
        }
        Ok(arrived)
    }

    /// The end of the whole pieces among bytes that arrived up to `upto` (the run's last piece
    /// is whole at `run_end`).
    fn whole_pieces_end(&self, upto: u64, run_end: u64) -> u64 {
        if upto == run_end {
            return upto;
        }
        let pl = u64::from(self.piece_length);
        upto / pl * pl
    }

    /// Stores whole pieces that arrived for `run` at `offset`, tells the run's waiters, counts
    /// them and tells the source they are readable.
    async fn store_arrived(
        self: &Arc<Self>,
        run: &Run,
        source: &Arc<dyn RangeSource>,
        offset: u64,
        data: Bytes,
    ) -> Result<(), RunFailure> {
        let len = data.len() as u64;
        let range = offset..offset + len;
        let pieces = self.pieces_of(&range);
        let this = self.clone();
        let complete =
            tokio::task::spawn_blocking(move || this.store_run(offset, &data, pieces.clone()))
                .await
                .map_err(|e| RunFailure {
                    message: format!("the disk write task failed: {e}"),
                    retryable: false,
                })?
                .map_err(|e| RunFailure {
                    message: e.to_string(),
                    retryable: false,
                })?;
        let stored = self.pieces_of(&range).end - run.pieces.start;
        run.progress.send_modify(|p| p.stored = stored);
        let stats = &self.shared.stats;
        stats.fetched_bytes.fetch_add(len, Ordering::Relaxed);
        // Raised while in flight counts too: someone waited for these bytes.
        if run.priority.load(Ordering::Relaxed) != Priority::Background as u8 {
            stats.fetched_urgent_bytes.fetch_add(len, Ordering::Relaxed);
        }
        source.stored(range);
        if complete {
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.verify().await {
                    tracing::error!(blob = %this.digest, error = %e, "blob failed verification");
                }
            });
        }
        Ok(())
    }

    /// Writes a run's bytes and marks its pieces present, in memory and in this boot's bitmap
    /// (durable after the next [`BlobInner::flush`]). Returns whether the blob is now complete.
    fn store_run(&self, offset: u64, data: &[u8], pieces: Range<u32>) -> Result<bool, StoreError> {
        self.files.write_at(offset, data)?;
        let _saving = self.boot_save.lock().expect("boot save lock");
        let (bitmap, added, complete) = {
            let mut st = self.lock();
            let before = self.bytes_of(&st.have);
            for p in pieces {
                st.have.set(p);
                // Stored: a reader finds it present, never waits on its run.
                st.inflight.remove(&p);
            }
            (
                st.have.clone(),
                self.bytes_of(&st.have) - before,
                st.have.is_complete(),
            )
        };
        self.shared
            .bytes_on_disk
            .fetch_add(added, Ordering::Relaxed);
        let meta = self.meta.lock().expect("meta lock").clone();
        self.files.save_boot_bitmap(&bitmap, &meta)?;
        Ok(complete)
    }

    /// [`BlobInner::flush`] on a blocking thread; a failure is logged (its pieces were thrown
    /// away and are fetched again when next read).
    async fn flush_in_background(self: &Arc<Self>) {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(blob = %self.digest, error = %e, "cannot make fetched pieces durable; they were dropped and will be fetched again")
            }
            Err(e) => tracing::error!(blob = %self.digest, error = %e, "the flush task failed"),
        }
    }

    /// Makes every piece marked present so far durable: syncs the data file, then saves the
    /// bitmap as it was before the sync. Flushes queue on the lock, so one sync covers every
    /// run stored while the previous one ran. If the sync fails, the pieces not yet durable are
    /// thrown away rather than left to be trusted after a restart.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let mut durable = self.durable.lock().expect("durable lock");
        if self.removed.load(Ordering::Acquire) {
            return Ok(());
        }
        let snapshot = self.lock().have.clone();
        if snapshot == *durable {
            return Ok(());
        }
        if let Err(e) = self.files.sync() {
            self.forget_all_but(&durable)?;
            return Err(e);
        }
        let meta = self.meta.lock().expect("meta lock").clone();
        self.files.save_bitmap(&snapshot, &meta)?;
        *durable = snapshot;
        // Written again after `bitmap`, so a load never takes `bitmap` for the newer one (a
        // `bitmap` newer than `boot-bitmap` means another build wrote it).
        let _saving = self.boot_save.lock().expect("boot save lock");
        let current = self.lock().have.clone();
        self.files.save_boot_bitmap(&current, &meta)
    }

    /// Throws away every present piece that `keep` does not name.
    fn forget_all_but(&self, keep: &Bitmap) -> Result<(), StoreError> {
        let _saving = self.boot_save.lock().expect("boot save lock");
        let (bitmap, removed) = {
            let mut st = self.lock();
            let before = self.bytes_of(&st.have);
            for p in 0..st.have.pieces() {
                if !keep.has(p) {
                    st.have.unset(p);
                }
            }
            st.generation += 1;
            (st.have.clone(), before - self.bytes_of(&st.have))
        };
        self.shared
            .bytes_on_disk
            .fetch_sub(removed, Ordering::Relaxed);
        let meta = self.meta.lock().expect("meta lock").clone();
        self.files.save_boot_bitmap(&bitmap, &meta)
    }

    /// Throws away the pieces covering `range` (those not being fetched right now).
    /// The bitmap saved is the durable one less these pieces: pieces present but not yet
    /// durable are saved by the flush that follows their run.
    fn discard(&self, pieces: Range<u32>) -> Result<(), StoreError> {
        let mut durable = self.durable.lock().expect("durable lock");
        let _saving = self.boot_save.lock().expect("boot save lock");
        let (bitmap, removed) = {
            let mut st = self.lock();
            let before = self.bytes_of(&st.have);
            for p in pieces.start..pieces.end.min(st.have.pieces()) {
                st.have.unset(p);
                durable.unset(p);
            }
            st.generation += 1;
            (st.have.clone(), before - self.bytes_of(&st.have))
        };
        self.shared
            .bytes_on_disk
            .fetch_sub(removed, Ordering::Relaxed);
        let mut meta = self.meta.lock().expect("meta lock");
        meta.verified = false;
        self.files.save_meta(&meta)?;
        // In this order: a `bitmap` newer than `boot-bitmap` makes a load ignore the latter.
        self.files.save_bitmap(&durable, &meta)?;
        self.files.save_boot_bitmap(&bitmap, &meta)
    }

    /// What the complete blob must hash to: its name when content-addressed, else the content
    /// digest a request gave; `None`: complete is as good as it gets (every piece came from
    /// the origin or matched the digest its origin-facing peer recorded).
    fn expected_digest(&self) -> Option<String> {
        if self.digest.starts_with("sha256:") {
            return Some(self.digest.clone());
        }
        self.meta.lock().expect("meta lock").content_digest.clone()
    }

    /// Hashes a complete blob once; on a mismatch every piece is thrown away (and a file's
    /// content digest forgotten: it may be the request that was wrong).
    async fn verify(self: &Arc<Self>) -> Result<(), StoreError> {
        let _one = self.verify.lock().await;
        if self.meta.lock().expect("meta lock").verified {
            return Ok(());
        }
        if !self.lock().have.is_complete() {
            return Ok(());
        }
        let expected = self.expected_digest();
        let this = self.clone();
        let join = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            // "Verified" is saved only beside a bitmap that names every piece.
            this.flush()?;
            let Some(expected) = expected else {
                let mut meta = this.meta.lock().expect("meta lock");
                meta.verified = true;
                return this.files.save_meta(&meta);
            };
            let actual = this.files.hash()?;
            if actual == expected {
                *this.last_mismatch.lock().expect("mismatch lock") = None;
                let mut meta = this.meta.lock().expect("meta lock");
                meta.verified = true;
                return this.files.save_meta(&meta);
            }
            this.shared
                .stats
                .digest_failures
                .fetch_add(1, Ordering::Relaxed);
            *this.last_mismatch.lock().expect("mismatch lock") = Some(actual.clone());
            this.meta.lock().expect("meta lock").content_digest = None;
            // Only the bitmap is cleared: refetched pieces overwrite the bytes in place, and
            // truncating the file here could wipe a piece fetched meanwhile.
            this.discard(0..u32::MAX)?;
            Err(StoreError::DigestMismatch {
                digest: expected,
                actual,
            })
        });
        join.await.map_err(|e| StoreError::Io {
            what: "verification task failed",
            path: self.dir().to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
    }
}

impl Blob {
    pub(crate) fn from_inner(inner: Arc<BlobInner>) -> Blob {
        Blob { inner }
    }

    /// The blob's digest (`sha256:...`), which is also its task ID.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    /// The length of its pieces.
    pub fn piece_length(&self) -> u32 {
        self.inner.piece_length
    }

    /// Bytes of the pieces present.
    pub fn fetched_bytes(&self) -> u64 {
        self.inner.present_bytes()
    }

    /// Whether every piece is present.
    pub fn is_complete(&self) -> bool {
        self.inner.lock().have.is_complete()
    }

    /// Pins what this file (a blob that is not content-addressed) must hash to, as a request
    /// that knows it says; the next verification checks it. A content-addressed blob only
    /// checks that `digest` is its name.
    pub fn expect_digest(&self, digest: &str) -> Result<(), StoreError> {
        if !is_sha256(digest) {
            return Err(StoreError::InvalidDigest(digest.to_owned()));
        }
        let conflict = |recorded: &str| StoreError::DigestConflict {
            blob: self.inner.digest.clone(),
            recorded: recorded.to_owned(),
            requested: digest.to_owned(),
        };
        if self.inner.digest.starts_with("sha256:") {
            return match self.inner.digest == digest {
                true => Ok(()),
                false => Err(conflict(&self.inner.digest)),
            };
        }
        let mut meta = self.inner.meta.lock().expect("meta lock");
        match meta.content_digest.as_deref() {
            Some(d) if d == digest => Ok(()),
            Some(d) => Err(conflict(d)),
            None => {
                meta.content_digest = Some(digest.to_owned());
                meta.verified = false;
                self.inner.files.save_meta(&meta)
            }
        }
    }

    /// Whether the complete blob was hashed and matched its digest.
    pub fn is_verified(&self) -> bool {
        self.inner.meta.lock().expect("meta lock").verified
    }

    /// Whether every piece of `range` is present.
    pub fn has_range(&self, range: Range<u64>) -> bool {
        if range.end > self.inner.size || range.start > range.end {
            return false;
        }
        range.is_empty() || self.inner.lock().have.has_all(self.inner.pieces_of(&range))
    }

    /// What the complete blob must hash to, when known: its name for a blob, the digest a
    /// request gave for a file.
    pub fn content_digest(&self) -> Option<String> {
        self.inner.expected_digest()
    }

    /// Whether the blob has a source whose origin is not known (one attached to a blob loaded
    /// from disk before any request named its origin): the next request that opens the blob
    /// should hand its origin over with [`Blob::refresh_origin`].
    pub fn origin_unknown(&self) -> bool {
        let source = self.inner.source.lock().expect("source lock");
        source.as_ref().is_some_and(|s| !s.origin_known())
    }

    /// An explicit refresh of where the blob's missing pieces come from (new credentials, a
    /// freshly signed URL): a source in front of an origin (the swarm) takes `origin` behind
    /// it and keeps everything else; a blob with no such source takes `origin` itself.
    pub fn refresh_origin(&self, origin: Arc<dyn RangeSource>) {
        let mut source = self.inner.source.lock().expect("source lock");
        let swapped = source
            .as_ref()
            .is_some_and(|s| s.swap_origin(origin.clone()));
        if !swapped {
            *source = Some(origin);
        }
    }

    /// Keeps the blob from being evicted until the guard is dropped.
    pub fn pin(&self) -> PinGuard {
        self.inner.pins.fetch_add(1, Ordering::AcqRel);
        PinGuard {
            inner: self.inner.clone(),
            mount: false,
        }
    }

    /// Like [`Blob::pin`], for a mounted layer that reads the blob on demand: the store
    /// refuses to delete it on request ([`crate::PieceStore::delete_on_request`]) and says why.
    pub fn pin_mounted(&self) -> PinGuard {
        self.inner.mounts.fetch_add(1, Ordering::AcqRel);
        let mut guard = self.pin();
        guard.mount = true;
        guard
    }

    /// Makes the bytes of `range` present, fetching what is missing.
    pub async fn ensure(&self, range: Range<u64>, priority: Priority) -> Result<(), StoreError> {
        self.inner.ensure(range, priority).await
    }

    /// Makes the bytes of `need` present, fetching every missing piece of `claim` (widened to
    /// hold `need`) in the same requests; returns once `need` is in, while the rest of
    /// `claim` goes on arriving. What a seed does for a reader that asked for a run: each
    /// piece is handed on as soon as it arrived, not when the whole run did.
    pub async fn ensure_within(
        &self,
        claim: Range<u64>,
        need: Range<u64>,
        priority: Priority,
    ) -> Result<(), StoreError> {
        let claim = claim.start.min(need.start)..claim.end.max(need.end);
        self.inner.ensure_within(claim, need, priority).await
    }

    /// The bytes of `range`, fetched first if missing.
    pub async fn read(&self, range: Range<u64>, priority: Priority) -> Result<Bytes, StoreError> {
        let len = range.end.saturating_sub(range.start);
        loop {
            // Taken before making the range present: pieces thrown away at any point after
            // this (a failed verification) make the read below start over.
            let generation = self.inner.lock().generation;
            let was_present = self.has_range(range.clone());
            self.inner.ensure(range.clone(), priority).await?;
            if range.is_empty() {
                return Ok(Bytes::new());
            }
            let data = self.inner.read_data(range.start, len as usize).await?;
            // Pieces thrown away meanwhile (a failed verification) may have been holes.
            if self.inner.lock().generation != generation {
                continue;
            }
            if was_present {
                self.inner
                    .shared
                    .stats
                    .hit_bytes
                    .fetch_add(len, Ordering::Relaxed);
            }
            return Ok(Bytes::from(data));
        }
    }

    /// The blob cut into the requests a whole-blob download makes, in order, each made present
    /// as the stream is polled: `whole_blob_requests` of them in flight at once, together at
    /// most `max_fetch_bytes` (one `background_fetch_bytes` request for
    /// background work), results yielded in order so a caller can consume the blob front to
    /// back while the rest arrives. Pieces already present cost nothing.
    pub fn fetch_in_order(
        &self,
        priority: Priority,
    ) -> impl futures::Stream<Item = Result<Range<u64>, StoreError>> + Send + 'static {
        let config = &self.inner.shared.config;
        // At most max_fetch_bytes in flight, split into whole_blob_requests requests: smaller
        // requests also mean pieces reach the swarm (and a consumer) sooner.
        let (max, window) = if priority == Priority::Background {
            (config.background_fetch_bytes, 1)
        } else {
            let window = config.whole_blob_requests.max(1);
            (config.max_fetch_bytes / window as u64, window)
        };
        let pl = u64::from(self.inner.piece_length);
        let step = (max / pl).max(1) * pl;
        let size = self.inner.size;
        let inner = self.inner.clone();
        futures::stream::iter((0..size.div_ceil(step)).map(move |i| {
            let range = i * step..((i + 1) * step).min(size);
            let inner = inner.clone();
            async move { inner.ensure(range.clone(), priority).await.map(|()| range) }
        }))
        .buffered(window)
    }

    /// Fetches every missing piece (see [`Blob::fetch_in_order`]; background requests are
    /// `background_fetch_bytes` long and wait for a quiet moment), then verifies the blob's
    /// digest.
    pub async fn fetch_all(&self, priority: Priority) -> Result<(), StoreError> {
        let mut chunks = std::pin::pin!(self.fetch_in_order(priority));
        while let Some(chunk) = chunks.next().await {
            chunk?;
        }
        self.inner.verify().await?;
        if self.is_verified() {
            return Ok(());
        }
        if let Some(actual) = self
            .inner
            .last_mismatch
            .lock()
            .expect("mismatch lock")
            .clone()
        {
            // Verification (started when the last piece arrived) failed.
            return Err(StoreError::DigestMismatch {
                digest: self.inner.digest.clone(),
                actual,
            });
        }
        // Pieces were discarded meanwhile; the caller may try again.
        Err(StoreError::Fetch {
            digest: self.inner.digest.clone(),
            start: 0,
            end: self.inner.size,
            message: "pieces were discarded while fetching".into(),
            retryable: true,
        })
    }

    /// The bytes of `range` if every piece of it is present; `None` otherwise. Never fetches
    /// (this is what uploads to other peers use).
    pub async fn read_local(&self, range: Range<u64>) -> Result<Option<Bytes>, StoreError> {
        self.inner.check_range(&range)?;
        let generation = self.inner.lock().generation;
        if !self.has_range(range.clone()) {
            return Ok(None);
        }
        let len = (range.end - range.start) as usize;
        let data = self.inner.read_data(range.start, len).await?;
        if self.inner.lock().generation != generation {
            return Ok(None);
        }
        Ok(Some(Bytes::from(data)))
    }

    /// Throws away the pieces covering `range`, e.g. after their bytes failed a chunk
    /// digest, so the next read fetches them again.
    pub async fn invalidate(&self, range: Range<u64>) -> Result<(), StoreError> {
        self.inner.check_range(&range)?;
        if range.is_empty() {
            return Ok(());
        }
        let inner = self.inner.clone();
        let pieces = inner.pieces_of(&range);
        tokio::task::spawn_blocking(move || inner.discard(pieces))
            .await
            .map_err(|e| StoreError::Io {
                what: "invalidate task failed",
                path: self.inner.dir().to_owned(),
                source: std::io::Error::other(e.to_string()),
            })?
    }
}

#[cfg(test)]
#[path = "blob_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "blob_stream_tests.rs"]
mod stream_tests;
