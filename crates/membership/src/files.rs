//! The `security:` section every component's config has: where its credentials are — three
//! PEM files (`ca`, `cert`, `key`), or a join token for the manager (`join`, kept in `dir`) —
//! or nothing (then the component runs without TLS, for loopback use only).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::join::{JoinSpec, Member};
use crate::{Credentials, MembershipError};

/// `security: {ca, cert, key}` (from the manager, or from cert-manager), or
/// `security: {join: {manager, token, ca_fingerprint}, dir}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA's certificate.
    pub ca: Option<PathBuf>,
    /// This member's certificate (chain).
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// Get the certificate from the manager with a join token instead.
    pub join: Option<JoinSpec>,
    /// Where joined credentials are kept (0700); the component picks a default under its
    /// own state directory.
    pub dir: Option<PathBuf>,
}

/// Credentials and, when they came from the manager, what renews them.
pub struct Obtained {
    /// The credentials.
    pub credentials: Credentials,
    /// Joined: run it (it renews before expiry, forever).
    pub renewal: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl TlsFiles {
    /// The credentials the files hold; `None` when none is set. Joining needs
    /// [`TlsFiles::join`].
    pub fn credentials(&self) -> Result<Option<Credentials>, MembershipError> {
        match (&self.ca, &self.cert, &self.key) {
            (None, None, None) if self.join.is_some() => Err(MembershipError::bad(
                "security.join",
                "this component joins with TlsFiles::join, or cannot join with a token (give it ca, cert and key)",
            )),
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) if self.join.is_none() => {
                Credentials::load(ca, cert, key).map(Some)
            }
            (Some(_), Some(_), Some(_)) => Err(MembershipError::bad(
                "security",
                "set either ca, cert and key, or join, not both",
            )),
            _ => Err(MembershipError::bad(
                "security",
                "set all of ca, cert and key, or none of them",
            )),
        }
    }

    /// Joins as `me` through the manager `join` names (credentials kept in `dir`, else
    /// `default_dir`): for a config whose `join` is set.
    pub async fn join(&self, me: Member, default_dir: &Path) -> Result<Obtained, MembershipError> {
        let Some(spec) = self.join.clone() else {
            return Err(MembershipError::bad("security.join", "not set"));
        };
        if self.ca.is_some() || self.cert.is_some() || self.key.is_some() {
            return Err(MembershipError::bad(
                "security",
                "set either ca, cert and key, or join, not both",
            ));
        }
        let dir = self.dir.clone().unwrap_or_else(|| default_dir.to_owned());
        let credentials = crate::join::obtain(&spec, &dir, &me).await?;
        let renewal = crate::join::renew_loop(spec, dir, me, credentials.clone());
        Ok(Obtained {
            credentials,
            renewal: Some(Box::pin(renewal)),
        })
    }
}

impl Obtained {
    /// Credentials from files (nothing renews them).
    pub fn files(credentials: Credentials) -> Obtained {
        Obtained {
            credentials,
            renewal: None,
        }
    }
}
