//! What can go wrong at an origin, typed per adapter; each says what failed and whether trying
//! again may help.

use dragonfly_storage::SourceError;

/// An origin's failure.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The registry failed a blob or manifest request.
    #[error("registry {what}: {source}")]
    Registry {
        /// The request (`127.0.0.1:5000/app blob sha256:… bytes 0..4096`).
        what: String,
        /// The registry client's error.
        #[source]
        source: dragonfly_registry::Error,
    },
    /// The registry settings cannot make a client.
    #[error("registry client: {source}")]
    Client {
        /// Why.
        #[source]
        source: dragonfly_registry::Error,
    },
    /// The request's `Authorization` header carries no usable credential.
    #[error("the request's {source}")]
    BadCredential {
        /// Why (never the secret).
        #[source]
        source: dragonfly_registry::BadAuthorization,
    },
    /// An HTTP origin could not be reached or its body could not be read.
    #[error("{what} {url}: {source}")]
    Http {
        /// `cannot reach` or `reading`.
        what: &'static str,
        /// The URL (query included: it is the user's own).
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// An HTTP origin answered with an error status.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// An HTTP origin ignored a range request.
    #[error("{url} answered {status} to a range request (the origin must support Range)")]
    NoRange {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// An HTTP origin did not say how big the file is.
    #[error("{url} does not say how big it is")]
    NoSize {
        /// The URL.
        url: String,
    },
    /// A manifest is shorter than the range asked of it.
    #[error("manifest {reference} is {len} bytes, not {wanted}")]
    ShortManifest {
        /// The manifest.
        reference: String,
        /// Its size.
        len: u64,
        /// The end of the range asked for.
        wanted: u64,
    },
}

impl OriginError {
    /// Whether the origin says the object does not exist (404, unknown manifest or blob).
    pub fn is_not_found(&self) -> bool {
        match self {
            OriginError::Registry { source, .. } => source.is_not_found(),
            OriginError::Status { status, .. } => *status == reqwest::StatusCode::NOT_FOUND,
            _ => false,
        }
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            OriginError::Registry { source, .. } => source.is_retryable(),
            OriginError::Http { .. } => true,
            OriginError::Status { status, .. } | OriginError::NoRange { status, .. } => {
                status.is_server_error()
            }
            OriginError::Client { .. }
            | OriginError::BadCredential { .. }
            | OriginError::NoSize { .. }
            | OriginError::ShortManifest { .. } => false,
        }
    }
}

impl From<OriginError> for SourceError {
    fn from(e: OriginError) -> SourceError {
        let retryable = e.is_retryable();
        SourceError::caused_by(e, retryable)
    }
}
