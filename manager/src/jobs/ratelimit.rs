//! Job creation limits: a token bucket per scheduler cluster, refilled at the cluster's
//! `job_rate_limit` per second and holding one second's worth. A job for several clusters
//! needs a token from each; without one the request is answered 429.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets by cluster ID.
#[derive(Default)]
pub struct JobLimiter {
    buckets: Mutex<HashMap<i64, (f64, Instant, u32)>>,
}

impl JobLimiter {
    /// Takes a token from each of `clusters` (`(id, rate per second)`), or none and false.
    pub fn try_take(&self, clusters: &[(i64, u32)]) -> bool {
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let now = Instant::now();
        for (id, rate) in clusters {
            let rate = (*rate).max(1);
            let b = buckets.entry(*id).or_insert((f64::from(rate), now, rate));
            if b.2 != rate {
                *b = (f64::from(rate), now, rate);
            }
            let refill = now.duration_since(b.1).as_secs_f64() * f64::from(rate);
            b.0 = (b.0 + refill).min(f64::from(rate));
            b.1 = now;
        }
        if clusters.iter().any(|(id, _)| buckets[id].0 < 1.0) {
            return false;
        }
        for (id, _) in clusters {
            buckets.get_mut(id).expect("bucket").0 -= 1.0;
        }
        true
    }

    /// Drops a cluster's bucket (its limit changed).
    pub fn forget(&self, id: i64) {
        self.buckets.lock().expect("limiter lock").remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_refused_and_each_cluster_counts() {
        let l = JobLimiter::default();
        for _ in 0..3 {
            assert!(l.try_take(&[(1, 3)]));
        }
        assert!(!l.try_take(&[(1, 3)]), "fourth within the second");
        assert!(l.try_take(&[(2, 3)]), "another cluster has its own bucket");
        assert!(
            !l.try_take(&[(2, 3), (1, 3)]),
            "all clusters must have a token"
        );
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(l.try_take(&[(1, 3)]), "refilled");
    }
}
