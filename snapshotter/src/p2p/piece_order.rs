//! The bytes of a range of pieces, in order, as parents deliver them: each piece is handed on
//! as soon as it and every piece before it are in, and the pieces no parent delivered go to
//! the origin, each run of them in one request. Parents deliver out of order and a run from a
//! seed arrives piece by piece; a reader waiting for the first pieces does not wait for the
//! last.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;
use dragonfly_storage::RangeStream;
use futures::stream::{self, StreamExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where piece `n`'s bytes will come from: sent once a parent delivered it, dropped unsent
/// when no parent will (then it goes to the origin).
pub(super) type Slot = oneshot::Receiver<Bytes>;

/// The task that fills the slots; stopped when the bytes are no longer wanted.
pub(super) struct Driver(pub(super) JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Order<F> {
    slots: VecDeque<(u32, Slot)>,
    origin: F,
    /// A piece that arrived just after a gap, handed on once the gap's bytes are.
    held: Option<Bytes>,
    /// The origin's bytes of the current gap.
    gap: Option<RangeStream>,
    _driver: Driver,
}

/// The pieces of `slots` (numbered, in order) as one stream; `origin(run)` streams a run no
/// parent delivered.
pub(super) fn in_order<F>(slots: Vec<(u32, Slot)>, origin: F, driver: Driver) -> RangeStream
where
    F: FnMut(Range<u32>) -> RangeStream + Send + 'static,
{
    let order = Order {
        slots: slots.into(),
        origin,
        held: None,
        gap: None,
        _driver: driver,
    };
    stream::unfold(order, |mut o| async move {
        loop {
            if let Some(gap) = &mut o.gap {
                match gap.next().await {
                    Some(item) => return Some((item, o)),
                    None => o.gap = None,
                }
            }
            if let Some(piece) = o.held.take() {
                return Some((Ok(piece), o));
            }
            let (n, slot) = o.slots.pop_front()?;
            match slot.await {
                Ok(piece) => return Some((Ok(piece), o)),
                Err(_) => {
                    let end = o.gap_end(n).await;
                    o.gap = Some((o.origin)(n..end));
                }
            }
        }
    })
    .boxed()
}

impl<F> Order<F> {
    /// The end of the gap that starts at piece `start`: the missing pieces after it are
    /// taken with it, and the first delivered one is held back until the gap is handed on.
    async fn gap_end(&mut self, start: u32) -> u32 {
        let mut end = start + 1;
        while let Some((n, slot)) = self.slots.pop_front() {
            match slot.await {
                Ok(piece) => {
                    self.held = Some(piece);
                    break;
                }
                Err(_) => end = n + 1,
            }
        }
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn piece(n: u32) -> Bytes {
        Bytes::from(vec![n as u8; 4])
    }

    type Senders = Vec<Option<oneshot::Sender<Bytes>>>;

    /// Slots for pieces `0..count`, their senders, and a driver that does nothing.
    fn slots(count: u32) -> (Vec<(u32, Slot)>, Senders, Driver) {
        let (senders, slots) = (0..count)
            .map(|n| {
                let (tx, rx) = oneshot::channel();
                (Some(tx), (n, rx))
            })
            .unzip();
        (slots, senders, Driver(tokio::spawn(async {})))
    }

    fn origin(asked: Arc<Mutex<Vec<Range<u32>>>>) -> impl FnMut(Range<u32>) -> RangeStream {
        move |run: Range<u32>| {
            asked.lock().unwrap().push(run.clone());
            stream::iter(run.map(|n| Ok(piece(n)))).boxed()
        }
    }

    #[tokio::test]
    async fn pieces_come_out_in_order_and_each_gap_is_one_origin_request() {
        let (slots, mut senders, driver) = slots(7);
        // Delivered out of order; 1, 2, 4 and 6 never are.
        for n in [5, 3, 0] {
            senders[n].take().unwrap().send(piece(n as u32)).unwrap();
        }
        drop(senders);
        let asked = Arc::new(Mutex::new(Vec::new()));
        let out: Vec<Bytes> = in_order(slots, origin(asked.clone()), driver)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(out, (0..7).map(piece).collect::<Vec<_>>());
        assert_eq!(*asked.lock().unwrap(), vec![1..3, 4..5, 6..7]);
    }

    #[tokio::test]
    async fn the_first_piece_goes_on_before_the_rest_are_delivered() {
        let (slots, mut senders, driver) = slots(3);
        let asked = Arc::new(Mutex::new(Vec::new()));
        let mut out = in_order(slots, origin(asked.clone()), driver);
        senders[0].take().unwrap().send(piece(0)).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), out.next())
            .await
            .expect("piece 0 must not wait for pieces 1 and 2");
        assert_eq!(first.unwrap().unwrap(), piece(0));
        senders[2].take().unwrap().send(piece(2)).unwrap();
        drop(senders);
        let rest: Vec<Bytes> = out.map(Result::unwrap).collect().await;
        assert_eq!(rest, vec![piece(1), piece(2)]);
        assert_eq!(*asked.lock().unwrap(), vec![1..2]);
    }

    #[tokio::test]
    async fn dropping_the_bytes_stops_the_driver() {
        let (slots, _senders, _) = slots(2);
        let (alive_tx, alive_rx) = oneshot::channel::<()>();
        let driver = Driver(tokio::spawn(async move {
            let _alive = alive_tx;
            std::future::pending::<()>().await;
        }));
        let out = in_order(slots, origin(Arc::default()), driver);
        drop(out);
        // The driver's task was aborted, so what it held is dropped.
        assert!(alive_rx.await.is_err());
    }
}
