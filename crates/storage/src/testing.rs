//! Test sources (feature `testing`, and this crate's own tests): an in-memory blob that counts
//! requests and can be slowed, broken or lie.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use sha2::{Digest, Sha256};

use crate::gate::Priority;
use crate::source::{RangeSource, SourceError};

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
    /// Requests being served now.
    pub in_flight: AtomicUsize,
    /// The most requests served at once.
    pub max_in_flight: AtomicUsize,
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
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
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
            Ok(Bytes::from(out))
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
