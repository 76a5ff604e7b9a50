//! What can go wrong with certificates and credentials.

/// A membership failure.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// A file could not be read or written.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key is malformed or unusable.
    #[error("{what}: {reason}")]
    BadCertificate {
        /// Which one.
        what: String,
        /// Why.
        reason: String,
    },
    /// A certificate names no member identity (no `dragonfly://<role>/<id>` URI SAN).
    #[error(
        "the certificate names no cluster member (expected a URI SAN dragonfly://<role>/<id>): {0}"
    )]
    NoIdentity(String),
    /// Getting a certificate from the manager failed.
    #[error("cannot get a certificate from the manager at {manager}: {reason}")]
    Join {
        /// The manager's address.
        manager: String,
        /// Why (the manager's answer, or the connection's failure).
        reason: String,
    },
    /// The TLS set-up could not be built.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

impl MembershipError {
    pub(crate) fn bad(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        MembershipError::BadCertificate {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
