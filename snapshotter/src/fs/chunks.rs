//! Verified chunks for the FUSE layer: the one interface the filesystem uses to get file data.
//!
//! [`ChunkReader`] turns a TOC chunk into its decompressed, digest-verified bytes: from a small
//! in-memory LRU shared by all layers, else by reading the chunk's compressed byte range from
//! the blob (piece store → sources) and decoding it on the blocking pool. Concurrent readers of
//! the same chunk share one decode. Nothing unverified is ever returned.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dragonfly_estargz::{decode_chunk, Chunk, LayerFormat};
use dragonfly_storage::{Blob, Priority};
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::metrics::Metrics;

/// Why a chunk could not be produced. Every variant becomes EIO for the reader.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChunkError {
    /// The compressed bytes could not be fetched from any source.
    #[error("cannot fetch compressed bytes {start}..{end} of blob {blob}: {message}")]
    Fetch {
        /// Blob digest.
        blob: String,
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// What went wrong.
        message: String,
    },
    /// The bytes did not decode or did not match the chunk digest.
    #[error("chunk at {offset} of blob {blob} is invalid: {message}")]
    Invalid {
        /// Blob digest.
        blob: String,
        /// Compressed offset of the chunk.
        offset: u64,
        /// What went wrong.
        message: String,
    },
}

/// Cache key of a decompressed chunk: blob digest + position inside the blob.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct ChunkKey {
    blob: Arc<str>,
    compressed_offset: u64,
    inner_offset: u64,
    len: u64,
}

type Pending = Shared<BoxFuture<'static, Result<Bytes, ChunkError>>>;

/// An LRU of decompressed chunks shared by every lazy layer, with in-flight de-duplication.
pub struct ChunkCache {
    lru: Mutex<lru::LruCache<ChunkKey, Bytes>>,
    pending: Mutex<HashMap<ChunkKey, Pending>>,
}

impl ChunkCache {
    /// A cache holding at most `entries` chunks (at least one).
    pub fn new(entries: usize) -> Arc<ChunkCache> {
        Arc::new(ChunkCache {
            lru: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(entries.max(1)).expect("max(1) is non-zero"),
            )),
            pending: Mutex::new(HashMap::new()),
        })
    }
}

/// Reads verified chunks of one blob.
#[derive(Clone)]
pub struct ChunkReader {
    blob: Blob,
    digest: Arc<str>,
    format: LayerFormat,
    cache: Arc<ChunkCache>,
    metrics: Arc<Metrics>,
    /// Compressed offsets of the chunks read so far, so each counts once in
    /// [`Metrics::chunk_needed_bytes`].
    needed: Arc<Mutex<HashSet<u64>>>,
}

impl ChunkReader {
    /// A reader of `blob`, whose chunks are encoded in `format`.
    pub fn new(
        blob: Blob,
        format: LayerFormat,
        cache: Arc<ChunkCache>,
        metrics: Arc<Metrics>,
    ) -> ChunkReader {
        let digest: Arc<str> = Arc::from(blob.digest());
        ChunkReader {
            blob,
            digest,
            format,
            cache,
            metrics,
            needed: Arc::default(),
        }
    }

    /// The decompressed, verified bytes of `chunk`.
    pub async fn read(&self, chunk: &Chunk) -> Result<Bytes, ChunkError> {
        let key = ChunkKey {
            blob: self.digest.clone(),
            compressed_offset: chunk.compressed_offset,
            inner_offset: chunk.inner_offset,
            len: chunk.len,
        };
        if let Some(b) = self.cache.lru.lock().expect("not poisoned").get(&key) {
            return Ok(b.clone());
        }
        let fut = {
            let mut pending = self.cache.pending.lock().expect("not poisoned");
            pending
                .entry(key.clone())
                .or_insert_with(|| self.clone().fetch_and_decode(chunk.clone()).shared())
                .clone()
        };
        let res = fut.await;
        self.cache
            .pending
            .lock()
            .expect("not poisoned")
            .remove(&key);
        if let Ok(b) = &res {
            self.cache
                .lru
                .lock()
                .expect("not poisoned")
                .put(key, b.clone());
        }
        res
    }

    /// Counts `chunk`'s compressed bytes the first time a read needs it.
    fn note_needed(&self, chunk: &Chunk) {
        let first = self
            .needed
            .lock()
            .expect("not poisoned")
            .insert(chunk.compressed_offset);
        if first {
            let len = chunk.compressed_end.saturating_sub(chunk.compressed_offset);
            self.metrics.chunk_needed_bytes.inc_by(len);
        }
    }

    /// Fetches and decodes a chunk; bytes that fail verification are thrown out of the piece
    /// store and fetched once more (a source may have served a bad range) before giving up.
    fn fetch_and_decode(self, chunk: Chunk) -> BoxFuture<'static, Result<Bytes, ChunkError>> {
        // Counted on the miss path only, so a cache hit takes no extra lock.
        self.note_needed(&chunk);
        async move {
            match self.fetch_and_decode_once(&chunk).await {
                Err(ChunkError::Invalid { .. }) => {
                    let range = chunk.compressed_offset..chunk.compressed_end;
                    if let Err(e) = self.blob.invalidate(range).await {
                        tracing::warn!(blob = %self.digest, error = %e, "cannot discard bad pieces");
                    }
                    self.fetch_and_decode_once(&chunk).await
                }
                other => other,
            }
        }
        .boxed()
    }

    async fn fetch_and_decode_once(&self, chunk: &Chunk) -> Result<Bytes, ChunkError> {
        {
            let range = chunk.compressed_offset..chunk.compressed_end;
            let compressed = self
                .blob
                .read(range.clone(), Priority::OnDemand)
                .await
                .map_err(|e| ChunkError::Fetch {
                    blob: self.digest.to_string(),
                    start: range.start,
                    end: range.end,
                    message: e.to_string(),
                })?;
            let format = self.format;
            let c = chunk.clone();
            let decoded =
                tokio::task::spawn_blocking(move || decode_chunk(format, &compressed, &c))
                    .await
                    .map_err(|e| ChunkError::Invalid {
                        blob: self.digest.to_string(),
                        offset: chunk.compressed_offset,
                        message: format!("decoder task failed: {e}"),
                    })?;
            match decoded {
                Ok(data) => Ok(Bytes::from(data)),
                Err(e) => {
                    self.metrics.chunk_verify_failures.inc();
                    tracing::error!(
                        blob = %self.digest, offset = chunk.compressed_offset, error = %e,
                        "chunk failed verification; refusing to serve it"
                    );
                    Err(ChunkError::Invalid {
                        blob: self.digest.to_string(),
                        offset: chunk.compressed_offset,
                        message: e.to_string(),
                    })
                }
            }
        }
    }
}
