//! Ranged blob reads as streams: the bytes of a range handed on as they arrive, so a store can
//! pass each piece on as soon as it is whole (a seed relaying the registry to a waiting reader).
//! The checks are those of a buffered ranged read: the answer must cover the range (bytes from
//! another offset are refused), the body must be as long as announced, and an answer that holds
//! the whole blob (a 200, or a range that is the whole blob) is read and verified against the
//! digest before any byte of it is handed on.

use std::ops::Range;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use http::StatusCode;

use crate::blob::{checked_content_range, partial_answer, range_answer, range_request};
use crate::digest::Digest;
use crate::error::Error;
use crate::reference::Repository;
use crate::transport::{Answer, Inner};

/// The bytes of a range, in order, as they arrive; an `Err` ends it.
pub type RangeBody = BoxStream<'static, Result<Bytes, Error>>;

impl Inner {
    /// Bytes `range` of a blob as a stream (see the module doc).
    pub(crate) async fn get_blob_range_stream(
        &self,
        repo: &Repository,
        digest: &str,
        range: Range<u64>,
    ) -> Result<RangeBody, Error> {
        let digest = Digest::parse(digest)?;
        let Some(spec) = range_request(repo, &digest, &range)? else {
            return Ok(stream::empty().boxed());
        };
        let (what, digest, range) = (&spec.what, &digest, &range);
        self.run(&spec, |a| async move {
            stream_answer(a, digest, range.clone(), what).await
        })
        .await
    }
}

fn one(bytes: Bytes) -> RangeBody {
    stream::once(async move { Ok(bytes) }).boxed()
}

/// A 206 for part of the blob becomes a stream; anything else is read as a buffered ranged
/// read would (and verified where it is the whole blob).
async fn stream_answer(
    a: Answer,
    digest: &Digest,
    range: Range<u64>,
    what: &str,
) -> Result<RangeBody, Error> {
    if a.resp.status() != StatusCode::PARTIAL_CONTENT {
        return range_answer(a, digest, range, what).await.map(one);
    }
    let (first, last, total) = checked_content_range(&a, &range, what)?;
    let body_len = last - first + 1;
    if first == 0 && total == Some(body_len) {
        return partial_answer(a, digest, range, what).await.map(one);
    }
    Ok(cut_body(
        a,
        range.start - first,
        range.end - range.start,
        body_len,
        what,
    ))
}

/// Where a streamed body is.
struct Cut {
    answer: Answer,
    /// Bytes still to drop before the range (the answer started earlier).
    skip: u64,
    /// Bytes of the range still to hand on.
    want: u64,
    /// Bytes the body still announces.
    body_left: u64,
    body_len: u64,
    what: String,
    failed: bool,
}

/// The `want` bytes after the first `skip` of `answer`'s `body_len`-byte body.
fn cut_body(answer: Answer, skip: u64, want: u64, body_len: u64, what: &str) -> RangeBody {
    let cut = Cut {
        answer,
        skip,
        want,
        body_left: body_len,
        body_len,
        what: what.to_owned(),
        failed: false,
    };
    stream::unfold(cut, |mut c| async move {
        loop {
            if c.want == 0 || c.failed {
                return None;
            }
            match c.next_chunk().await {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => return Some((Ok(bytes), c)),
                Err(e) => {
                    c.failed = true;
                    return Some((Err(e), c));
                }
            }
        }
    })
    .boxed()
}

impl Cut {
    /// The range's part of the body's next chunk (empty when it had none of it).
    async fn next_chunk(&mut self) -> Result<Bytes, Error> {
        let chunk = self
            .answer
            .resp
            .chunk()
            .await
            .map_err(|source| Error::Transport {
                action: "read the body from",
                url: self.answer.log_url.clone(),
                source,
            })?;
        let Some(chunk) = chunk else {
            return Err(self.bad(format!(
                "the body ended after {} of {} bytes; the connection or the stored blob is \
                 truncated",
                self.body_len - self.body_left,
                self.body_len
            )));
        };
        if chunk.len() as u64 > self.body_left {
            return Err(self.bad(format!(
                "the body is longer than the {} bytes announced",
                self.body_len
            )));
        }
        self.body_left -= chunk.len() as u64;
        let dropped = self.skip.min(chunk.len() as u64);
        self.skip -= dropped;
        let mut chunk = chunk.slice(dropped as usize..);
        chunk.truncate(self.want.min(chunk.len() as u64) as usize);
        self.want -= chunk.len() as u64;
        Ok(chunk)
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadResponse {
            registry: self.answer.host.clone(),
            what: self.what.clone(),
            reason,
        }
    }
}
