//! A blocking `Read` over a blob, front to back, while the blob is still being fetched: an
//! async task makes the blob present in order ([`Blob::fetch_in_order`]) and hands each range's
//! bytes over a small channel, so a consumer on a blocking thread (a tar unpacker) works on the
//! first megabytes while the rest is in flight. The bytes are not yet checked against the
//! blob's digest: consumers must verify the blob when done and discard what they produced if
//! that fails.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::blob::Blob;
use crate::gate::Priority;

/// Ranges buffered between the fetcher and the reader.
const AHEAD: usize = 4;

/// The reader. Dropping it stops the fetcher after its current range.
pub struct BlobReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    /// Bytes not yet handed out; end of stream before this is 0 is an error, never an EOF.
    remaining: u64,
}

impl Blob {
    /// A reader of the whole blob in order, fetching at `priority`. Must be called inside a
    /// tokio runtime; read it from a blocking thread.
    pub fn read_in_order(&self, priority: Priority) -> BlobReader {
        let (tx, rx) = mpsc::channel(AHEAD);
        let blob = self.clone();
        tokio::spawn(async move {
            let mut ranges = std::pin::pin!(blob.fetch_in_order(priority));
            while let Some(range) = ranges.next().await {
                let item = match range {
                    Ok(r) => match blob.read_local(r.clone()).await {
                        Ok(Some(b)) => Ok(b),
                        Ok(None) => Err(io::Error::other(format!(
                            "bytes {}..{} of {} were discarded while reading",
                            r.start,
                            r.end,
                            blob.digest()
                        ))),
                        Err(e) => Err(io::Error::other(e.to_string())),
                    },
                    Err(e) => Err(io::Error::other(e.to_string())),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        BlobReader {
            rx,
            current: Bytes::new(),
            remaining: self.size(),
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while !self.current.has_remaining() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None if self.remaining == 0 => return Ok(0),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the blob's fetcher stopped {} bytes short", self.remaining),
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.remaining());
        self.current.copy_to_slice(&mut buf[..n]);
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }
}
