//! An ordinary HTTP(S) URL as the origin of a task: its size, and byte ranges with `Range`
//! requests (5xx and connection errors are retryable; a server that ignores `Range` is refused
//! for partial reads rather than streamed in full again and again).

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use dragonfly_storage::{Priority, RangeSource, SourceError};
use futures::future::{BoxFuture, FutureExt};

use super::error::OriginError;

/// Ranged reads of one URL.
pub struct HttpOrigin {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HashMap<String, String>,
}

impl HttpOrigin {
    /// `url` (http or https), sending `headers` with every request.
    pub fn new(url: url::Url, headers: HashMap<String, String>) -> Result<HttpOrigin, OriginError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|source| OriginError::Http {
                what: "cannot make a client for",
                url: url.to_string(),
                source,
            })?;
        Ok(HttpOrigin {
            client,
            url,
            headers,
        })
    }

    fn request(&self, range: &str) -> reqwest::RequestBuilder {
        let mut r = self.client.get(self.url.clone()).header("Range", range);
        for (k, v) in &self.headers {
            r = r.header(k, v);
        }
        r
    }

    fn unreachable(&self) -> impl FnOnce(reqwest::Error) -> OriginError + '_ {
        |source| OriginError::Http {
            what: "cannot reach",
            url: self.url.to_string(),
            source,
        }
    }

    /// The size of the file (from `Content-Range` of a one-byte range, or `Content-Length`).
    pub async fn size(&self) -> Result<u64, OriginError> {
        let resp = self
            .request("bytes=0-0")
            .send()
            .await
            .map_err(self.unreachable())?;
        let status = resp.status();
        let url = self.url.to_string();
        if !status.is_success() {
            return Err(OriginError::Status { url, status });
        }
        let from_range = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit('/').next())
            .and_then(|t| t.parse().ok());
        match (status.as_u16(), from_range, resp.content_length()) {
            (206, Some(total), _) => Ok(total),
            (200, _, Some(len)) => Ok(len),
            _ => Err(OriginError::NoSize { url }),
        }
    }
}

impl RangeSource for HttpOrigin {
    fn fetch(
        &self,
        range: Range<u64>,
        _: Priority,
    ) -> BoxFuture<'static, Result<Bytes, SourceError>> {
        let req = self.request(&format!("bytes={}-{}", range.start, range.end - 1));
        let url = self.url.to_string();
        async move {
            let resp = req.send().await.map_err(|source| OriginError::Http {
                what: "cannot reach",
                url: url.clone(),
                source,
            })?;
            let status = resp.status();
            if status.as_u16() != 206 {
                return Err(OriginError::NoRange { url, status }.into());
            }
            resp.bytes().await.map_err(|source| {
                OriginError::Http {
                    what: "reading",
                    url,
                    source,
                }
                .into()
            })
        }
        .boxed()
    }
}
