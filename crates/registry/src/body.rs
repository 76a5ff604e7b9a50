//! Reading response bodies with a size limit, and turning error answers into [`Error`]s with
//! the registry's own explanation (its `{"errors":[{"code","message"}]}` body).

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::error::{detail_suffix, Error};

/// Longest error body read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Reads the whole body; more than `limit` bytes is an error, a broken body a transport error.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    log_url: &str,
) -> Result<Bytes, Error> {
    let host = resp.url().host_str().unwrap_or_default().to_string();
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| Error::Transport {
        action: "read the body from",
        url: log_url.to_string(),
        source,
    })? {
        if buf.len() + chunk.len() > limit {
            return Err(Error::BadResponse {
                registry: host,
                what: log_url.to_string(),
                reason: format!(
                    "the answer is larger than the {limit} bytes allowed; the server is not \
                     speaking the registry protocol"
                ),
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A short readable detail from an error body: the distribution error codes and messages,
/// else the start of the text.
pub(crate) fn error_detail(body: &[u8]) -> String {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        let parts: Vec<String> = parsed
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Turns an error answer into an [`Error`], reading (a bounded part of) its body for detail.
pub(crate) async fn status_error(resp: reqwest::Response, what: &str, log_url: &str) -> Error {
    let status = resp.status().as_u16();
    let registry = resp.url().host_str().unwrap_or_default().to_string();
    let registry = match resp.url().port() {
        Some(port) => format!("{registry}:{port}"),
        None => registry,
    };
    // A refused token says why in its challenge (`error="insufficient_scope"`).
    let challenge_error = resp
        .headers()
        .get_all(http::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(crate::challenge::parse_challenges)
        .find_map(|c| c.param("error").map(str::to_string));
    let mut detail = match read_limited(resp, MAX_ERROR_BODY, log_url).await {
        Ok(body) => error_detail(&body),
        Err(_) => String::new(),
    };
    if let Some(e) = challenge_error {
        detail = format!("{detail} (challenge error: {e})")
            .trim()
            .to_string();
    }
    error_for_status(status, registry, what.to_string(), detail_suffix(&detail))
}

/// The [`Error`] for an unsuccessful HTTP `status` from `registry` while doing `what`.
pub(crate) fn error_for_status(
    status: u16,
    registry: String,
    what: String,
    detail: String,
) -> Error {
    match status {
        401 => Error::Unauthorized {
            registry,
            what,
            detail,
        },
        403 => Error::Denied {
            registry,
            what,
            detail,
        },
        404 => Error::NotFound {
            registry,
            what,
            detail,
        },
        status => Error::Server {
            registry,
            status,
            what,
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details() {
        assert_eq!(
            error_detail(br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:x"}]}"#),
            "BLOB_UNKNOWN: blob unknown to registry"
        );
        assert_eq!(
            error_detail(br#"{"errors":[{"code":"A"},{"message":"m"}]}"#),
            "A; m"
        );
        assert_eq!(error_detail(b"  plain text \n"), "plain text");
        let long = "\u{e9}".repeat(300);
        assert!(error_detail(long.as_bytes()).len() <= 200);
        assert_eq!(error_detail(b""), "");
    }
}
