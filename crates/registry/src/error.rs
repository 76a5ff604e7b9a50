//! Errors of the registry client: one enum whose messages say what failed and what to do,
//! plus the retry classification used by the request engine.

use std::ops::Range;

/// Everything that can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The registry (or its token service) wants credentials we do not have or refused ours.
    #[error(
        "registry {registry} refused authentication for {what} (HTTP 401{detail}); check credentials \
         for {registry} in docker config.json or in the daemon config"
    )]
    Unauthorized {
        /// Registry host the request went to.
        registry: String,
        /// What was requested (e.g. `blob sha256:… of library/busybox`).
        what: String,
        /// Extra detail from the server, already prefixed with `: ` when present.
        detail: String,
    },
    /// The credentials were accepted but do not grant access.
    #[error(
        "registry {registry} denied access to {what} (HTTP 403{detail}); check that the account \
         configured for {registry} may pull this repository"
    )]
    Denied {
        /// Registry host the request went to.
        registry: String,
        /// What was requested.
        what: String,
        /// Extra detail from the server, already prefixed with `: ` when present.
        detail: String,
    },
    /// The repository, manifest or blob does not exist.
    #[error(
        "{what} not found on registry {registry} (HTTP 404{detail}); check the image reference, \
         repository name and digest"
    )]
    NotFound {
        /// Registry host the request went to.
        registry: String,
        /// What was requested.
        what: String,
        /// Extra detail from the server, already prefixed with `: ` when present.
        detail: String,
    },
    /// The server answered with an error status (5xx, 429 or an unexpected 4xx).
    #[error(
        "registry {registry} answered HTTP {status} for {what}{detail}; {}",
        if *status == 429 || *status >= 500 { "the registry is overloaded or failing, retry later" }
        else { "the request was not accepted, check the reference and the registry's API support" }
    )]
    Server {
        /// Registry (or storage) host that answered.
        registry: String,
        /// HTTP status code.
        status: u16,
        /// What was requested.
        what: String,
        /// Extra detail from the server, already prefixed with `: ` when present.
        detail: String,
    },
    /// The connection failed, timed out or broke while the body was read.
    #[error(
        "could not {action} {url}: {}; {}",
        error_chain(source),
        transport_hint(action)
    )]
    Transport {
        /// What was being done (`connect to`, `read the body from`).
        action: &'static str,
        /// URL without query or credentials.
        url: String,
        /// The underlying HTTP client error.
        #[source]
        source: reqwest::Error,
    },
    /// The client's owner does not allow a request to this URL.
    #[error("will not send a request to {url}: {reason}")]
    Refused {
        /// URL without query or credentials.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered something that does not follow the distribution protocol.
    #[error("registry {registry} sent a bad response for {what}: {reason}")]
    BadResponse {
        /// Registry (or storage) host that answered.
        registry: String,
        /// What was requested.
        what: String,
        /// What was wrong, and what to do about it.
        reason: String,
    },
    /// The requested byte range lies (partly) beyond the end of the blob.
    #[error(
        "bytes {}..{} of {what} are not available on registry {registry} (HTTP 416{}); the range \
         is past the end of the blob, check the offsets or whether the blob is corrupt",
        range.start, range.end,
        size.map(|s| format!(", blob size {s}")).unwrap_or_default()
    )]
    RangeNotSatisfiable {
        /// Registry host that answered.
        registry: String,
        /// What was requested.
        what: String,
        /// The requested range.
        range: Range<u64>,
        /// Blob size when the server told it.
        size: Option<u64>,
    },
    /// Content did not hash to the digest it was fetched by.
    #[error(
        "{what} from registry {registry} has digest {actual}, expected {expected}; the registry, \
         a mirror or the stored data is corrupt, do not use it"
    )]
    DigestMismatch {
        /// Registry host that served the content.
        registry: String,
        /// What was fetched.
        what: String,
        /// Digest it was requested by.
        expected: String,
        /// Digest of what arrived.
        actual: String,
    },
    /// A byte range whose start lies after its end was asked for.
    #[error(
        "invalid byte range {start}..{end}: the start is after the end; fix the caller's offsets"
    )]
    InvalidRange {
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
    },
    /// An image reference could not be parsed.
    #[error(
        "invalid image reference {reference:?}: {reason}; expected [host[:port]/]name[:tag][@digest]"
    )]
    InvalidReference {
        /// The text that was given.
        reference: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A digest string is malformed.
    #[error(
        "invalid digest {digest:?}: {reason}; expected <algorithm>:<hex>, e.g. sha256:<64 hex>"
    )]
    InvalidDigest {
        /// The text that was given.
        digest: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The client configuration (or a credentials file it points to) is unusable.
    #[error("registry client configuration error: {0}")]
    Config(String),
}

impl Error {
    /// Whether trying the same request again later may succeed: 5xx, 429, connection
    /// failures, timeouts and bodies that broke off. Never 401/403/404 or malformed input.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Server { status, .. } => *status == 429 || *status >= 500,
            Error::Transport { .. } => true,
            _ => false,
        }
    }

    /// Whether this is a "not found" answer (repository, manifest or blob unknown).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

fn transport_hint(action: &str) -> &'static str {
    if action.starts_with("read") {
        "the connection broke off mid-body; retry, and if it keeps happening check the \
         registry's storage (the blob may be truncated) and any proxy in between"
    } else {
        "check that the registry is reachable from this host (network, DNS, proxy, plain_http \
         setting) and retry"
    }
}

/// An error and its causes, `outer: inner: innermost` (reqwest hides the useful part, such as
/// "connection refused" or "incomplete body", in its sources).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// Formats an optional server detail as `: detail` (or nothing).
pub(crate) fn detail_suffix(detail: &str) -> String {
    let detail = detail.trim();
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: u16) -> Error {
        Error::Server {
            registry: "r".into(),
            status,
            what: "w".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn retry_classification() {
        assert!(server(500).is_retryable());
        assert!(server(503).is_retryable());
        assert!(server(429).is_retryable());
        assert!(!server(400).is_retryable());
        let nf = Error::NotFound {
            registry: "r".into(),
            what: "w".into(),
            detail: String::new(),
        };
        assert!(!nf.is_retryable());
        assert!(nf.is_not_found());
        let unauth = Error::Unauthorized {
            registry: "r".into(),
            what: "w".into(),
            detail: String::new(),
        };
        assert!(!unauth.is_retryable());
        assert!(unauth.to_string().contains("docker config.json"));
    }

    #[test]
    fn messages_say_what_to_do() {
        assert!(server(503).to_string().contains("retry later"));
        let e = Error::RangeNotSatisfiable {
            registry: "r".into(),
            what: "blob".into(),
            range: 10..20,
            size: Some(5),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("10..20") && msg.contains("blob size 5"),
            "{msg}"
        );
    }
}
