//! Test sources: an in-memory blob that counts requests and can be slowed, broken or lie.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use sha2::{Digest, Sha256};

use crate::source::{RangeSource, SourceError};

/// Serves a fixed byte string.
pub(crate) struct MemSource {
    pub data: Bytes,
    pub requests: Mutex<Vec<Range<u64>>>,
    pub delay: Duration,
    pub fail: AtomicBool,
    /// Flip a byte in every response.
    pub corrupt: AtomicBool,
    /// Return one byte too few.
    pub short: AtomicBool,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl MemSource {
    pub(crate) fn new(data: Vec<u8>) -> Arc<MemSource> {
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

    pub(crate) fn slow(data: Vec<u8>, delay: Duration) -> Arc<MemSource> {
        let mut s = Arc::into_inner(MemSource::new(data)).expect("fresh");
        s.delay = delay;
        Arc::new(s)
    }

    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.data)))
    }

    pub(crate) fn requests(&self) -> Vec<Range<u64>> {
        self.requests.lock().unwrap().clone()
    }
}

impl RangeSource for Arc<MemSource> {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, SourceError>> {
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
                return Err(SourceError {
                    message: "injected failure".into(),
                    retryable: true,
                });
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
pub(crate) fn bytes(len: usize, seed: u64) -> Vec<u8> {
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
