//! Test sources (feature `testing`, and this crate's own tests): an in-memory blob that counts
//! requests and can be slowed, broken or lie, and can answer in chunks held back until a test
//! lets each one go.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{self, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::StoreConfig;
use crate::gate::Priority;
use crate::source::{RangeSource, RangeStream, SourceError};

/// A store configuration for tests: `piece_length` pieces, runs of up to `max_fetch_pieces`,
/// four fetches at once, background fills of two pieces without pauses, room for anything.
pub fn store_config(piece_length: u32, max_fetch_pieces: u64) -> StoreConfig {
    StoreConfig {
        capacity_bytes: 1 << 40,
        piece_length,
        lazy_piece_length: piece_length,
        max_concurrent_fetches: 4,
        max_fetch_bytes: max_fetch_pieces * u64::from(piece_length),
        background_pause_ms: 0,
        background_fetch_bytes: 2 * u64::from(piece_length),
        whole_blob_requests: 1,
    }
}

/// Serves a fixed byte string.
pub struct MemSource {
    /// The blob.
    pub data: Bytes,
    /// Every range asked for, in order.
    pub requests: Mutex<Vec<Range<u64>>>,
    /// Added to every request.
    pub delay: Duration,
    /// Fail every request (retryable).
    pub fail: AtomicBool,
    /// Flip a byte in every response.
    pub corrupt: AtomicBool,
    /// Return one byte too few.
    pub short: AtomicBool,
    /// Return one byte too many.
    pub long: AtomicBool,
    /// Requests being served now.
    pub in_flight: AtomicUsize,
    /// The most requests served at once.
    pub max_in_flight: AtomicUsize,
    /// Streamed answers come in chunks of this many bytes (0: one chunk).
    pub chunk: usize,
    /// When set, each chunk of a streamed answer waits for a permit of it.
    pub chunk_gate: Option<Arc<Semaphore>>,
    /// The next streamed answer fails (retryable) after its first chunk.
    pub fail_midway: AtomicBool,
}

impl MemSource {
    /// A source of `data`.
    pub fn new(data: Vec<u8>) -> Arc<MemSource> {
        Arc::new(MemSource {
            data: Bytes::from(data),
            requests: Mutex::new(Vec::new()),
            delay: Duration::ZERO,
            fail: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
            short: AtomicBool::new(false),
            long: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            chunk: 0,
            chunk_gate: None,
            fail_midway: AtomicBool::new(false),
        })
    }

    /// A source of `data` whose streamed answers come `chunk` bytes at a time, each chunk
    /// held back until `gate` gives a permit for it.
    pub fn chunked(data: Vec<u8>, chunk: usize, gate: Arc<Semaphore>) -> Arc<MemSource> {
        let mut s = Arc::into_inner(MemSource::new(data)).expect("fresh");
        s.chunk = chunk;
        s.chunk_gate = Some(gate);
        Arc::new(s)
    }

    /// A source of `data` that takes `delay` per request.
    pub fn slow(data: Vec<u8>, delay: Duration) -> Arc<MemSource> {
        let mut s = Arc::into_inner(MemSource::new(data)).expect("fresh");
        s.delay = delay;
        Arc::new(s)
    }

    /// `sha256:<hex>` of the data.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.data)))
    }

    /// The ranges asked for so far.
    pub fn requests(&self) -> Vec<Range<u64>> {
        self.requests.lock().unwrap().clone()
    }
}

impl RangeSource for Arc<MemSource> {
    fn fetch(
        &self,
        range: Range<u64>,
        _: Priority,
    ) -> BoxFuture<'static, Result<Bytes, SourceError>> {
        let me = self.clone();
        async move {
            me.requests.lock().unwrap().push(range.clone());
            let now = me.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            me.max_in_flight.fetch_max(now, Ordering::SeqCst);
            if !me.delay.is_zero() {
                tokio::time::sleep(me.delay).await;
            }
            me.in_flight.fetch_sub(1, Ordering::SeqCst);
            if me.fail.load(Ordering::SeqCst) {
                return Err(SourceError::new("injected failure".into(), true));
            }
            let mut out = me
                .data
                .slice(range.start as usize..range.end as usize)
                .to_vec();
            if me.corrupt.load(Ordering::SeqCst) && !out.is_empty() {
                out[0] ^= 0xff;
            }
            if me.short.load(Ordering::SeqCst) {
                out.pop();
            }
            if me.long.load(Ordering::SeqCst) {
                out.push(0);
            }
            Ok(Bytes::from(out))
        }
        .boxed()
    }

    fn fetch_stream(
        &self,
        range: Range<u64>,
        priority: Priority,
    ) -> BoxFuture<'static, Result<RangeStream, SourceError>> {
        let whole = self.fetch(range, priority);
        let me = self.clone();
        async move {
            let data = whole.await?;
            let size = if me.chunk == 0 { data.len() } else { me.chunk };
            let mut chunks: Vec<Result<Bytes, SourceError>> = (0..data.len())
                .step_by(size.max(1))
                .map(|i| Ok(data.slice(i..(i + size).min(data.len()))))
                .collect();
            if me.fail_midway.swap(false, Ordering::SeqCst) {
                chunks.truncate(1);
                chunks.push(Err(SourceError::new(
                    "injected failure midway".into(),
                    true,
                )));
            }
            let gate = me.chunk_gate.clone();
            Ok(stream::iter(chunks)
                .then(move |c| {
                    let gate = gate.clone();
                    async move {
                        if let Some(g) = gate {
                            g.acquire().await.expect("gate open").forget();
                        }
                        c
                    }
                })
                .boxed())
        }
        .boxed()
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
