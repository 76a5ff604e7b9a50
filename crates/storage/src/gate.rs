//! Admission of source requests by priority: at most N requests run at once, and when one
//! finishes the most urgent waiter goes next (oldest first among equals). A waiter's priority
//! can be raised while it waits, which is how a container read that needs a piece already
//! queued by the background fill pulls that request forward.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// How urgent a read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Filling in the rest of a blob when nothing else is waiting.
    Background = 0,
    /// A whole blob someone waits for as a whole (unpacking a layer, `dfctl get`): read
    /// front to back, in large requests; the swarm serves it from fills, not piece by piece.
    Bulk = 1,
    /// Files a layer's landmark says containers will read first.
    Prefetch = 2,
    /// A container is blocked on this read.
    OnDemand = 3,
}

impl Priority {
    /// The priority stored as `b` (what [`Priority`] `as u8` gives); unknown values are the
    /// most urgent, so a mistake never starves a reader.
    pub(crate) fn from_u8(b: u8) -> Priority {
        match b {
            0 => Priority::Background,
            1 => Priority::Bulk,
            2 => Priority::Prefetch,
            _ => Priority::OnDemand,
        }
    }
}

struct Waiter {
    priority: Arc<AtomicU8>,
    seq: u64,
    tx: oneshot::Sender<Permit>,
}

struct Inner {
    available: usize,
    seq: u64,
    waiters: Vec<Waiter>,
}

/// A counting semaphore that grants by priority.
pub(crate) struct Gate {
    inner: Mutex<Inner>,
}

/// The right to run one request; returned to the gate on drop.
pub(crate) struct Permit {
    gate: Arc<Gate>,
    armed: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.gate.release();
        }
    }
}

impl Gate {
    pub(crate) fn new(permits: usize) -> Arc<Gate> {
        Arc::new(Gate {
            inner: Mutex::new(Inner {
                available: permits,
                seq: 0,
                waiters: Vec::new(),
            }),
        })
    }

    /// Waits for a permit; `priority` is read when permits are handed out, so it may be raised
    /// meanwhile.
    pub(crate) async fn acquire(self: &Arc<Gate>, priority: Arc<AtomicU8>) -> Permit {
        let rx = {
            let mut inner = self.inner.lock().expect("gate lock");
            if inner.available > 0 {
                inner.available -= 1;
                return Permit {
                    gate: self.clone(),
                    armed: true,
                };
            }
            let (tx, rx) = oneshot::channel();
            inner.seq += 1;
            let seq = inner.seq;
            inner.waiters.push(Waiter { priority, seq, tx });
            rx
        };
        // The sender is only dropped after sending (see `release`).
        rx.await.expect("the gate hands every waiter a permit")
    }

    fn release(self: &Arc<Gate>) {
        let mut inner = self.inner.lock().expect("gate lock");
        loop {
            let best = inner
                .waiters
                .iter()
                .enumerate()
                .max_by_key(|(_, w)| (w.priority.load(Ordering::Relaxed), std::cmp::Reverse(w.seq)))
                .map(|(i, _)| i);
            let Some(i) = best else {
                inner.available += 1;
                return;
            };
            let waiter = inner.waiters.swap_remove(i);
            let permit = Permit {
                gate: self.clone(),
                armed: true,
            };
            match waiter.tx.send(permit) {
                Ok(()) => return,
                // The waiter gave up; its permit goes to the next one.
                Err(mut p) => p.armed = false,
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.inner.lock().unwrap().available
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn prio(p: Priority) -> Arc<AtomicU8> {
        Arc::new(AtomicU8::new(p as u8))
    }

    #[tokio::test]
    async fn urgent_waiters_go_first_and_can_be_raised() {
        let gate = Gate::new(1);
        let held = gate.acquire(prio(Priority::OnDemand)).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let raised = prio(Priority::Background);
        for (name, p) in [
            ("bg1", prio(Priority::Background)),
            ("bg2-raised", raised.clone()),
            ("prefetch", prio(Priority::Prefetch)),
            ("ondemand", prio(Priority::OnDemand)),
        ] {
            let (g, o) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = g.acquire(p).await;
                o.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        raised.store(Priority::OnDemand as u8, Ordering::Relaxed);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec!["bg2-raised", "ondemand", "prefetch", "bg1"]
        );
        assert_eq!(gate.available(), 1);
    }

    #[tokio::test]
    async fn abandoned_waiters_do_not_leak_permits() {
        let gate = Gate::new(1);
        let held = gate.acquire(prio(Priority::OnDemand)).await;
        let g = gate.clone();
        let waiter = tokio::spawn(async move {
            let _p = g.acquire(prio(Priority::OnDemand)).await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        assert_eq!(gate.available(), 1);
        let again = tokio::time::timeout(
            Duration::from_secs(1),
            gate.acquire(prio(Priority::Background)),
        )
        .await;
        assert!(again.is_ok());
    }
}
