//! Blob operations: size (HEAD, falling back to a one-byte GET), ranged reads that never
//! return bytes from the wrong offset, and whole-blob streams verified against their digest.

use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::digest::{Digest, Verifier};
use crate::error::Error;
use crate::reference::Repository;
use crate::transport::{Answer, Inner, RequestSpec};

/// Largest whole body accepted when a server ignores `Range` and answers 200: the wanted
/// slice is cut out of it (and the whole blob verified); larger answers are refused.
pub const MAX_WHOLE_BODY_FOR_RANGE: u64 = 8 * 1024 * 1024;
/// Above this size, digests are computed on the blocking pool.
const INLINE_HASH_LIMIT: usize = 1024 * 1024;

fn blob_path(repo: &Repository, digest: &Digest) -> String {
    format!("/v2/{}/blobs/{digest}", repo.repository)
}

fn header_u64(headers: &HeaderMap, name: http::header::HeaderName) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A parsed `Content-Range: bytes first-last/total` (total `None` for `*`), or
/// `bytes */total` (range `None`).
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    range: Option<(u64, u64)>,
    total: Option<u64>,
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let range = match range.trim() {
        "*" => None,
        r => {
            let (a, b) = r.split_once('-')?;
            let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            if a > b || total.is_some_and(|t| b >= t) {
                return None;
            }
            Some((a, b))
        }
    };
    Some(ContentRange { range, total })
}

fn content_range(headers: &HeaderMap) -> Option<Result<ContentRange, String>> {
    let value = headers.get(http::header::CONTENT_RANGE)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(parse_content_range)
            .ok_or_else(|| format!("unparseable Content-Range {value:?}")),
    )
}

/// Hashes `data` (on the blocking pool when large) and compares with `digest`.
async fn verify(digest: &Digest, data: &Bytes, registry: &str, what: &str) -> Result<(), Error> {
    let result = if data.len() > INLINE_HASH_LIMIT {
        let (d, b) = (digest.clone(), data.clone());
        tokio::task::spawn_blocking(move || d.matches(&b))
            .await
            .map_err(|e| Error::Config(format!("digest verification task failed: {e}")))?
    } else {
        digest.matches(data)
    };
    result.map_err(|actual| Error::DigestMismatch {
        registry: registry.to_string(),
        what: what.to_string(),
        expected: digest.to_string(),
        actual,
    })
}

/// Reads exactly `len` bytes of body; fewer or more is an error.
async fn read_exact_body(answer: Answer, len: u64, what: &str) -> Result<Bytes, Error> {
    let Answer {
        mut resp,
        host,
        log_url,
        ..
    } = answer;
    let mut buf = BytesMut::with_capacity(len.min(64 * 1024 * 1024) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|source| Error::Transport {
        action: "read the body from",
        url: log_url.clone(),
        source,
    })? {
        if buf.len() as u64 + chunk.len() as u64 > len {
            return Err(Error::BadResponse {
                registry: host,
                what: what.to_string(),
                reason: format!("the body is longer than the {len} bytes announced"),
            });
        }
        buf.extend_from_slice(&chunk);
    }
    if (buf.len() as u64) < len {
        return Err(Error::BadResponse {
            registry: host,
            what: what.to_string(),
            reason: format!(
                "the body ended after {} of {len} bytes; the connection or the stored blob is \
                 truncated",
                buf.len()
            ),
        });
    }
    Ok(buf.freeze())
}

impl Inner {
    /// Size of a blob in bytes.
    pub(crate) async fn blob_size(&self, repo: &Repository, digest: &str) -> Result<u64, Error> {
        repo.check()?;
        let digest = Digest::parse(digest)?;
        let what = format!("blob {digest} of {repo}");
        let head = RequestSpec {
            method: Method::HEAD,
            repo,
            path: blob_path(repo, &digest),
            headers: HeaderMap::new(),
            what: what.clone(),
            total_timeout: true,
            // Refusals of HEAD that a GET may still get past.
            pass_statuses: &[400, 403, 405, 501],
        };
        let size = self
            .run(&head, |a| async move {
                Ok(if a.resp.status().is_success() {
                    header_u64(a.resp.headers(), http::header::CONTENT_LENGTH)
                } else {
                    None
                })
            })
            .await?;
        if let Some(size) = size {
            return Ok(size);
        }
        tracing::debug!(%what, "HEAD gave no size, asking with GET Range: bytes=0-0");
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RANGE, HeaderValue::from_static("bytes=0-0"));
        let get = RequestSpec {
            method: Method::GET,
            headers,
            pass_statuses: &[416],
            ..head
        };
        let what = &what;
        self.run(&get, |a| async move {
            let status = a.resp.status();
            let cr = content_range(a.resp.headers()).transpose();
            let bad = |reason: String| Error::BadResponse {
                registry: a.host.clone(),
                what: what.clone(),
                reason,
            };
            match status {
                StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => {
                    match cr.map_err(bad)? {
                        Some(ContentRange { total: Some(t), .. }) => Ok(t),
                        _ => Err(bad(format!(
                            "HTTP {status} without a total size in Content-Range"
                        ))),
                    }
                }
                _ => header_u64(a.resp.headers(), http::header::CONTENT_LENGTH).ok_or_else(|| {
                    bad("no Content-Length or Content-Range to learn the size from".into())
                }),
            }
        })
        .await
    }

    /// Bytes `range` of a blob.
    pub(crate) async fn get_blob_range(
        &self,
        repo: &Repository,
        digest: &str,
        range: Range<u64>,
    ) -> Result<Bytes, Error> {
        let digest = Digest::parse(digest)?;
        let Some(spec) = range_request(repo, &digest, &range)? else {
            return Ok(Bytes::new());
        };
        let (what, digest, range) = (&spec.what, &digest, &range);
        self.run(&spec, |a| async move {
            range_answer(a, digest, range.clone(), what).await
        })
        .await
    }

    /// The whole blob as a verified stream.
    pub(crate) async fn get_blob(
        &self,
        repo: &Repository,
        digest: &str,
    ) -> Result<BlobStream, Error> {
        repo.check()?;
        let digest = Digest::parse(digest)?;
        let what = format!("blob {digest} of {repo}");
        let spec = RequestSpec {
            method: Method::GET,
            repo,
            path: blob_path(repo, &digest),
            headers: HeaderMap::new(),
            what: what.clone(),
            total_timeout: false,
            pass_statuses: &[],
        };
        let (what, digest) = (&what, &digest);
        self.run(&spec, |a| async move {
            if a.resp.status() != StatusCode::OK {
                return Err(Error::BadResponse {
                    registry: a.host,
                    what: what.clone(),
                    reason: format!(
                        "expected HTTP 200 for a whole blob, got {}",
                        a.resp.status()
                    ),
                });
            }
            let content_length = header_u64(a.resp.headers(), http::header::CONTENT_LENGTH);
            Ok(BlobStream {
                inner: a.resp.bytes_stream().boxed(),
                verifier: Some(digest.verifier()),
                digest: digest.clone(),
                content_length,
                received: 0,
                done: false,
                registry: a.host,
                log_url: a.log_url,
                what: what.clone(),
            })
        })
        .await
    }
}

/// The GET for bytes `range` of blob `digest` (checked), or `None` for an empty range.
pub(crate) fn range_request<'a>(
    repo: &'a Repository,
    digest: &Digest,
    range: &Range<u64>,
) -> Result<Option<RequestSpec<'a>>, Error> {
    repo.check()?;
    if range.start > range.end {
        return Err(Error::InvalidRange {
            start: range.start,
            end: range.end,
        });
    }
    if range.start == range.end {
        return Ok(None);
    }
    let mut headers = HeaderMap::new();
    let value = format!("bytes={}-{}", range.start, range.end - 1);
    headers.insert(
        http::header::RANGE,
        HeaderValue::from_str(&value).expect("digits and '-' are a valid header value"),
    );
    Ok(Some(RequestSpec {
        method: Method::GET,
        repo,
        path: blob_path(repo, digest),
        headers,
        what: format!(
            "bytes {}..{} of blob {digest} of {repo}",
            range.start, range.end
        ),
        total_timeout: false,
        pass_statuses: &[416],
    }))
}

fn bad_response(host: &str, what: &str, reason: String) -> Error {
    Error::BadResponse {
        registry: host.to_string(),
        what: what.to_string(),
        reason,
    }
}

/// Turns the answer to a ranged GET into exactly the requested bytes, or an error.
pub(crate) async fn range_answer(
    a: Answer,
    digest: &Digest,
    range: Range<u64>,
    what: &str,
) -> Result<Bytes, Error> {
    match a.resp.status() {
        StatusCode::PARTIAL_CONTENT => partial_answer(a, digest, range, what).await,
        StatusCode::OK => whole_answer(a, digest, range, what).await,
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let size = content_range(a.resp.headers())
                .and_then(Result::ok)
                .and_then(|cr| cr.total);
            Err(Error::RangeNotSatisfiable {
                registry: a.host,
                what: what.to_string(),
                range,
                size,
            })
        }
        other => Err(bad_response(
            &a.host,
            what,
            format!("unexpected HTTP {other} to a range request"),
        )),
    }
}

/// The `(first, last)` bytes a 206 says it carries, checked to cover `range` (a larger range
/// is fine; bytes from another offset are not) with a plausible length.
pub(crate) fn checked_content_range(
    a: &Answer,
    range: &Range<u64>,
    what: &str,
) -> Result<(u64, u64, Option<u64>), Error> {
    let bad = |reason: String| bad_response(&a.host, what, reason);
    let content_type = a
        .resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("multipart/") {
        return Err(bad("a multipart answer to a single-range request".into()));
    }
    let cr = match content_range(a.resp.headers()) {
        Some(Ok(cr)) => cr,
        Some(Err(reason)) => return Err(bad(reason)),
        None => return Err(bad("HTTP 206 without Content-Range".into())),
    };
    let Some((first, last)) = cr.range else {
        return Err(bad("HTTP 206 with Content-Range `*`".into()));
    };
    if first > range.start || last < range.end - 1 {
        return Err(bad(format!(
            "asked for bytes {}-{} but got {first}-{last}; refusing bytes from the \
             wrong offset (a mirror or proxy mangles Range requests)",
            range.start,
            range.end - 1
        )));
    }
    let got_len = last - first + 1;
    let want = range.end - range.start;
    if got_len - want > MAX_WHOLE_BODY_FOR_RANGE {
        return Err(bad(format!(
            "answered {got_len} bytes for a {want}-byte range"
        )));
    }
    if let Some(cl) = header_u64(a.resp.headers(), http::header::CONTENT_LENGTH) {
        if cl != got_len {
            return Err(bad(format!(
                "Content-Length {cl} disagrees with Content-Range {first}-{last}"
            )));
        }
    }
    Ok((first, last, cr.total))
}

/// A 206: the range (or one covering it), cut to size; verified when it is the whole blob.
pub(crate) async fn partial_answer(
    a: Answer,
    digest: &Digest,
    range: Range<u64>,
    what: &str,
) -> Result<Bytes, Error> {
    let (first, last, total) = checked_content_range(&a, &range, what)?;
    let got_len = last - first + 1;
    let host = a.host.clone();
    let body = read_exact_body(a, got_len, what).await?;
    if first == 0 && total == Some(got_len) {
        verify(digest, &body, &host, what).await?;
    }
    let offset = (range.start - first) as usize;
    Ok(body.slice(offset..offset + (range.end - range.start) as usize))
}

/// A 200 to a range request: the server ignored `Range`. A small blob is taken whole (and
/// verified before it is cut); a large one is refused rather than downloaded again and again.
async fn whole_answer(
    a: Answer,
    digest: &Digest,
    range: Range<u64>,
    what: &str,
) -> Result<Bytes, Error> {
    let announced = header_u64(a.resp.headers(), http::header::CONTENT_LENGTH);
    if announced.is_some_and(|len| len > MAX_WHOLE_BODY_FOR_RANGE) {
        return Err(bad_response(
            &a.host,
            what,
            format!(
                "the server ignored the Range header and started sending the whole {}-byte \
                 blob; use a registry or mirror that supports range requests",
                announced.unwrap_or_default()
            ),
        ));
    }
    let host = a.host.clone();
    let body = match announced {
        Some(len) => read_exact_body(a, len, what).await?,
        None => crate::body::read_limited(a.resp, MAX_WHOLE_BODY_FOR_RANGE as usize, &a.log_url)
            .await
            .map_err(|e| match e {
                Error::BadResponse { .. } => bad_response(
                    &host,
                    what,
                    format!(
                        "the server ignored the Range header and sent more than \
                         {MAX_WHOLE_BODY_FOR_RANGE} bytes; use a registry or mirror \
                         that supports range requests"
                    ),
                ),
                other => other,
            })?,
    };
    // We hold the whole blob: check it before cutting from it.
    verify(digest, &body, &host, what).await?;
    if (body.len() as u64) < range.end {
        return Err(Error::RangeNotSatisfiable {
            registry: host,
            what: what.to_string(),
            range,
            size: Some(body.len() as u64),
        });
    }
    Ok(body.slice(range.start as usize..range.end as usize))
}

/// A whole blob arriving in chunks. The stream checks the length against `Content-Length`
/// and, at its end, the digest: a mismatch is delivered as a final `Err` item, so a consumer
/// must not trust the data before the stream has ended without error.
pub struct BlobStream {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    verifier: Option<Verifier>,
    digest: Digest,
    content_length: Option<u64>,
    received: u64,
    done: bool,
    registry: String,
    log_url: String,
    what: String,
}

impl BlobStream {
    /// Size announced by the server, if it did.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Bytes delivered so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Bytes, Error>>> {
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadResponse {
            registry: self.registry.clone(),
            what: self.what.clone(),
            reason,
        }
    }
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("what", &self.what)
            .field("content_length", &self.content_length)
            .field("received", &self.received)
            .finish()
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.received += chunk.len() as u64;
                if let Some(len) = self.content_length.filter(|len| self.received > *len) {
                    let e = self.bad(format!("the body is longer than the {len} bytes announced"));
                    return self.fail(e);
                }
                if let Some(v) = self.verifier.as_mut() {
                    v.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(source))) => {
                let e = Error::Transport {
                    action: "read the body from",
                    url: self.log_url.clone(),
                    source,
                };
                self.fail(e)
            }
            Poll::Ready(None) => {
                self.done = true;
                if let Some(len) = self.content_length.filter(|len| self.received < *len) {
                    let e = self.bad(format!(
                        "the body ended after {} of {len} bytes; the connection or the stored \
                         blob is truncated",
                        self.received
                    ));
                    return self.fail(e);
                }
                let verifier = self
                    .verifier
                    .take()
                    .expect("verifier is used once, at the end");
                match verifier.check(&self.digest) {
                    Ok(()) => Poll::Ready(None),
                    Err(actual) => {
                        let e = Error::DigestMismatch {
                            registry: self.registry.clone(),
                            what: self.what.clone(),
                            expected: self.digest.to_string(),
                            actual,
                        };
                        self.fail(e)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        let cr = |s| parse_content_range(s);
        assert_eq!(
            cr("bytes 0-9/100"),
            Some(ContentRange {
                range: Some((0, 9)),
                total: Some(100)
            })
        );
        assert_eq!(
            cr("bytes 5-5/*"),
            Some(ContentRange {
                range: Some((5, 5)),
                total: None
            })
        );
        assert_eq!(
            cr("bytes */42"),
            Some(ContentRange {
                range: None,
                total: Some(42)
            })
        );
        for bad in [
            "",
            "bytes",
            "bytes 9-0/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes a-b/c",
            "bytes 0-1",
        ] {
            assert_eq!(cr(bad), None, "{bad}");
        }
    }
}
