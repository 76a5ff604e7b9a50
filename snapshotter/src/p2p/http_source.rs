//! An ordinary HTTP(S) URL as the origin of a task: its size, and byte ranges with `Range`
//! requests (5xx and connection errors are retryable; a server that ignores `Range` is refused
//! for partial reads rather than streamed in full again and again).

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use dragonfly_storage::{RangeSource, SourceError};
use futures::future::{BoxFuture, FutureExt};

/// Ranged reads of one URL.
pub struct HttpSource {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HashMap<String, String>,
}

fn err(message: String, retryable: bool) -> SourceError {
    SourceError { message, retryable }
}

impl HttpSource {
    /// A source for `url` sending `headers` with every request.
    pub fn new(url: &str, headers: HashMap<String, String>) -> Result<HttpSource, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "only http and https URLs can be downloaded, not {:?}",
                url.scheme()
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(HttpSource {
            client,
            url,
            headers,
        })
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut r = self.client.request(method, self.url.clone());
        for (k, v) in &self.headers {
            r = r.header(k, v);
        }
        r
    }

    /// The size of the file (from `Content-Range` of a one-byte range, or `Content-Length`).
    pub async fn size(&self) -> Result<u64, SourceError> {
        let resp = self
            .request(reqwest::Method::GET)
            .header("Range", "bytes=0-0")
            .send()
            .await
            .map_err(|e| err(format!("cannot reach {}: {e}", self.url), true))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(err(
                format!("{} answered {status}", self.url),
                status.is_server_error(),
            ));
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
            _ => Err(err(
                format!("{} does not say how big it is", self.url),
                false,
            )),
        }
    }
}

impl RangeSource for HttpSource {
    fn fetch(&self, range: Range<u64>) -> BoxFuture<'static, Result<Bytes, SourceError>> {
        let req = self
            .request(reqwest::Method::GET)
            .header("Range", format!("bytes={}-{}", range.start, range.end - 1));
        let url = self.url.clone();
        async move {
            let resp = req.send().await.map_err(|e| err(format!("cannot reach {url}: {e}"), true))?;
            let status = resp.status();
            if status.as_u16() != 206 {
                return Err(err(
                    format!("{url} answered {status} to a range request (the origin must support Range)"),
                    status.is_server_error(),
                ));
            }
            resp.bytes().await.map_err(|e| err(format!("reading {url}: {e}"), true))
        }
        .boxed()
    }
}
