//! What can be wrong with a task ID or a task URL.

/// A task ID or task URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Not `sha256:<hex>` or `task:<hex>`.
    #[error("task ID {id:?} is neither sha256:<64 hex> (an OCI object) nor task:<64 hex> (a file by URL)")]
    BadId {
        /// What was given.
        id: String,
    },
    /// A digest that is not a valid sha256 digest.
    #[error("{what} has a digest the swarm cannot use")]
    BadDigest {
        /// Where the digest came from.
        what: String,
        /// Why it is refused.
        #[source]
        source: Box<dragonfly_registry::Error>,
    },
    /// Not a URL at all.
    #[error("invalid URL {url:?}")]
    BadUrl {
        /// What was given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: url::ParseError,
    },
    /// A URL of a scheme no origin serves.
    #[error("task URL {url:?} is not oci://REGISTRY/REPO@DIGEST, oci-manifest://REGISTRY/REPO@DIGEST, http:// or https://")]
    UnknownScheme {
        /// What was given.
        url: String,
    },
    /// An `oci://` or `oci-manifest://` URL without its parts.
    #[error("task URL {url:?} is not {scheme}REGISTRY/REPO@sha256:<hex>")]
    BadOciUrl {
        /// What was given.
        url: String,
        /// The scheme it started with.
        scheme: &'static str,
    },
}
