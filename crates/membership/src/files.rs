//! The `security:` section every component's config has: where its credentials are. All
//! three files, or none (then the component runs without TLS, for loopback use only).

use std::path::PathBuf;

use serde::Deserialize;

use crate::{Credentials, MembershipError};

/// `security: {ca, cert, key}`: PEM files (from the manager, or from cert-manager).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA's certificate.
    pub ca: Option<PathBuf>,
    /// This member's certificate (chain).
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// The credentials the files hold; `None` when none is set.
    pub fn credentials(&self) -> Result<Option<Credentials>, MembershipError> {
        match (&self.ca, &self.cert, &self.key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Credentials::load(ca, cert, key).map(Some),
            _ => Err(MembershipError::bad(
                "security",
                "set all of ca, cert and key, or none of them",
            )),
        }
    }
}
