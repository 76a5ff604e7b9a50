//! Bounded password hashing. An Argon2 hash or check takes about 19 MiB and tens of
//! milliseconds of CPU, so at most `auth.max_concurrent_hashes` run at once, each on the
//! blocking pool (never on an async worker); a request that waits longer than
//! [`MAX_WAIT`] for its turn is answered "busy" instead of queueing without end.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Longest wait for a hashing slot.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// Why a password could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every slot stayed busy for [`MAX_WAIT`].
    #[error("too many passwords are being checked at once; retry in a few seconds")]
    Busy,
    /// The blocking task died.
    #[error("the password check failed ({0}); see the manager's log")]
    Task(#[from] tokio::task::JoinError),
}

/// The hashing slots.
#[derive(Clone)]
pub struct HashPool {
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl HashPool {
    /// `concurrency` hashes at once (at least one).
    pub fn new(concurrency: usize) -> HashPool {
        HashPool {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            wait: MAX_WAIT,
        }
    }

    /// Runs `f` on the blocking pool holding a slot.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .expect("the semaphore is never closed");
        let out = tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            out
        })
        .await?;
        Ok(out)
    }

    /// Whether `password` matches `hash`; `None` checks against a fixed dummy hash (so an
    /// unknown user costs the same time) and is always false.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, HashError> {
        self.run(move || match hash {
            Some(h) => super::verify_password(&password, &h),
            None => {
                static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                let dummy = DUMMY.get_or_init(|| super::hash_password("no such user"));
                let _ = super::verify_password(&password, dummy);
                false
            }
        })
        .await
    }

    /// A new hash of `password`.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.run(move || super::hash_password(&password)).await
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_more_than_the_slots_run_and_waiters_time_out() {
        let pool = HashPool {
            slots: Arc::new(Semaphore::new(2)),
            wait: Duration::from_millis(200),
        };
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        use std::sync::atomic::Ordering::SeqCst;
                        let now = running.fetch_add(1, SeqCst) + 1;
                        most.fetch_max(now, SeqCst);
                        std::thread::sleep(Duration::from_millis(150));
                        running.fetch_sub(1, SeqCst);
                    })
                    .await
                })
            })
            .collect();
        let mut busy = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Err(HashError::Busy)) {
                busy += 1;
            }
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(
            busy >= 1,
            "six 150 ms hashes on two slots cannot all start within 200 ms"
        );
        assert_eq!(pool.available(), 2);
        let h = pool.hash("correct horse".into()).await.unwrap();
        assert!(pool.verify("correct horse".into(), Some(h)).await.unwrap());
        assert!(!pool.verify("correct horse".into(), None).await.unwrap());
    }
}
