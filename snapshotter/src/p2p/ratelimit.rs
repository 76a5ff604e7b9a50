//! A token bucket for upload bandwidth: `take(n)` waits until `n` bytes may be sent. The
//! bucket holds one second of tokens, so short bursts pass and the average is the rate.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes per second, shared by all uploads of the host.
pub struct RateLimit {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// A limit of `bytes_per_sec` (must be > 0).
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        let rate = bytes_per_sec.max(1) as f64;
        RateLimit {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Waits until `n` bytes may go out.
    pub async fn take(&self, n: u64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `n` bytes of tokens and returns how long to wait before sending them.
    fn reserve(&self, n: u64) -> Duration {
        {
            let mut st = self.state.lock().expect("rate lock");
            let now = Instant::now();
            let refill = now.duration_since(st.1).as_secs_f64() * self.rate;
            st.0 = (st.0 + refill).min(self.rate);
            st.1 = now;
            st.0 -= n as f64;
            if st.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-st.0 / self.rate)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_senders_wait_their_share() {
        let limit = RateLimit::new(1_000_000);
        assert!(limit.reserve(1_000_000).is_zero(), "one second of burst");
        let w = limit.reserve(500_000);
        assert!(
            w >= Duration::from_millis(490) && w <= Duration::from_millis(500),
            "{w:?}"
        );
        let w = limit.reserve(500_000);
        assert!(
            w >= Duration::from_millis(990) && w <= Duration::from_millis(1000),
            "queued behind: {w:?}"
        );
    }
}
