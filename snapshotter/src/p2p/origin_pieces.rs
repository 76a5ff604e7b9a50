//! The origin's bytes of a run of pieces, cut at piece boundaries as they arrive. Each whole
//! piece is hashed (off the async workers; pieces that arrived together in one task) and its
//! digest handed to `record` before its bytes go on, so the peer that stores them can report
//! them to the scheduler at once: a seed relays the origin to a waiting reader piece by piece
//! instead of after the whole run.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use dragonfly_storage::{RangeStream, SourceError};
use futures::stream::{self, StreamExt};

/// Where pieces lie in the blob.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) piece_length: u64,
    pub(super) content_length: u64,
}

impl Layout {
    /// The bytes of `pieces`.
    pub(super) fn range(&self, pieces: &Range<u32>) -> Range<u64> {
        u64::from(pieces.start) * self.piece_length
            ..(u64::from(pieces.end) * self.piece_length).min(self.content_length)
    }

    fn piece_len(&self, n: u32) -> u64 {
        (self.content_length - u64::from(n) * self.piece_length).min(self.piece_length)
    }
}

/// Told of each piece before its bytes are handed on: its number, digest and length.
pub(super) type Record = Box<dyn Fn(u32, String, u64) + Send + Sync>;

struct Cut {
    inner: RangeStream,
    layout: Layout,
    /// Bytes that arrived but do not yet make a whole piece.
    buf: BytesMut,
    /// The next piece to hand on, and the end of the run.
    next: u32,
    end: u32,
    record: Record,
}

/// `inner` (the origin's bytes of `pieces`) handed on in whole pieces, each recorded first.
pub(super) fn cut(
    inner: RangeStream,
    pieces: Range<u32>,
    layout: Layout,
    record: Record,
) -> RangeStream {
    let cut = Cut {
        inner,
        layout,
        buf: BytesMut::new(),
        next: pieces.start,
        end: pieces.end,
        record,
    };
    stream::unfold(cut, |mut c| async move {
        if c.next >= c.end {
            return None;
        }
        let item = c.whole_pieces().await;
        if item.is_err() {
            c.next = c.end;
        }
        Some((item, c))
    })
    .boxed()
}

impl Cut {
    /// Waits for at least one whole piece and hands on every whole piece that has arrived.
    async fn whole_pieces(&mut self) -> Result<Bytes, SourceError> {
        loop {
            let (count, len) = self.whole_in_buf();
            if count > 0 {
                return self.hand_on(count, len).await;
            }
            let expected = self.layout.range(&(self.next..self.end));
            match self.inner.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    if (self.buf.len() + chunk.len()) as u64 > expected.end - expected.start {
                        return Err(self.wrong_length(&expected, self.buf.len() + chunk.len()));
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                None => return Err(self.wrong_length(&expected, self.buf.len())),
            }
        }
    }

    /// How many whole pieces the buffer holds from `next` on, and their bytes.
    fn whole_in_buf(&self) -> (u32, usize) {
        let (mut count, mut len) = (0, 0usize);
        while self.next + count < self.end {
            let l = self.layout.piece_len(self.next + count) as usize;
            if len + l > self.buf.len() {
                break;
            }
            len += l;
            count += 1;
        }
        (count, len)
    }

    async fn hand_on(&mut self, count: u32, len: usize) -> Result<Bytes, SourceError> {
        let data = self.buf.split_to(len).freeze();
        let (first, layout) = (self.next, self.layout);
        let to_hash = data.clone();
        let digests = tokio::task::spawn_blocking(move || {
            let mut off = 0usize;
            (first..first + count)
                .map(|n| {
                    let l = layout.piece_len(n) as usize;
                    let d = super::source::sha256(&to_hash[off..off + l]);
                    off += l;
                    (n, d, l as u64)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| SourceError::new(format!("hashing pieces failed: {e}"), true))?;
        for (n, digest, l) in digests {
            (self.record)(n, digest, l);
        }
        self.next += count;
        Ok(data)
    }

    fn wrong_length(&self, expected: &Range<u64>, got: usize) -> SourceError {
        SourceError::new(
            format!(
                "the origin returned {got} bytes where {}..{} ({} bytes) were asked for",
                expected.start,
                expected.end,
                expected.end - expected.start
            ),
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn chunks(parts: Vec<Result<Vec<u8>, SourceError>>) -> RangeStream {
        stream::iter(parts.into_iter().map(|p| p.map(Bytes::from))).boxed()
    }

    /// Pieces recorded so far: (number, length).
    type Seen = Arc<Mutex<Vec<(u32, u64)>>>;

    fn recorder() -> (Record, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let record: Record = Box::new(move |n, digest, len| {
            assert!(digest.starts_with("sha256:"));
            s.lock().unwrap().push((n, len));
        });
        (record, seen)
    }

    const LAYOUT: Layout = Layout {
        piece_length: 4,
        content_length: 18,
    };

    /// Chunks that split pieces are handed on as whole pieces, each recorded before its bytes
    /// go on, the short last piece included.
    #[tokio::test]
    async fn pieces_go_on_whole_and_recorded_as_they_complete() {
        let data: Vec<u8> = (0..18).collect();
        let (record, seen) = recorder();
        let parts = vec![
            Ok(data[8..11].to_vec()),
            Ok(data[11..13].to_vec()),
            Ok(data[13..18].to_vec()),
        ];
        let mut out = cut(chunks(parts), 2..5, LAYOUT, record);
        let first = out.next().await.unwrap().unwrap();
        assert_eq!(&first[..], &data[8..12], "piece 2 once its last byte came");
        assert_eq!(*seen.lock().unwrap(), vec![(2, 4)]);
        let rest = out.next().await.unwrap().unwrap();
        assert_eq!(
            &rest[..],
            &data[12..18],
            "pieces 3 and the short 4 came together"
        );
        assert_eq!(*seen.lock().unwrap(), vec![(2, 4), (3, 4), (4, 2)]);
        assert!(out.next().await.is_none());
    }

    /// Too few or too many bytes, or the origin failing midway, end the stream with an error
    /// after the whole pieces that did arrive; a partial piece is never handed on.
    #[tokio::test]
    async fn short_long_and_broken_answers_are_errors_after_the_whole_pieces() {
        let data: Vec<u8> = (0..18).collect();
        let (record, seen) = recorder();
        let short = chunks(vec![Ok(data[0..6].to_vec())]);
        let mut out = cut(short, 0..2, LAYOUT, record);
        assert_eq!(&out.next().await.unwrap().unwrap()[..], &data[0..4]);
        let e = out.next().await.unwrap().unwrap_err();
        assert!(e.to_string().contains("returned 2 bytes"), "{e}");
        assert!(out.next().await.is_none());
        assert_eq!(*seen.lock().unwrap(), vec![(0, 4)]);

        let (record, _) = recorder();
        let long = chunks(vec![Ok(data[0..9].to_vec())]);
        let e = cut(long, 0..2, LAYOUT, record)
            .next()
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("returned 9 bytes"), "{e}");

        let (record, seen) = recorder();
        let broken = chunks(vec![
            Ok(data[0..3].to_vec()),
            Err(SourceError::new("reset".into(), true)),
        ]);
        let e = cut(broken, 0..2, LAYOUT, record)
            .next()
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.retryable && e.to_string().contains("reset"), "{e}");
        assert!(seen.lock().unwrap().is_empty());
    }
}
