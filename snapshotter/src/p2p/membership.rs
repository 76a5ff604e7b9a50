//! This host's place in the cluster: the identity its credentials give it (which is its host
//! ID), and how it accepts callers on the peer port and dials schedulers, parents and the
//! manager — mutual TLS with `security: {ca, cert, key}` or a certificate joined with a token,
//! or plain without (loopback use).

use dragonfly_membership::client::Dialer;
use dragonfly_membership::server::Acceptor;
use dragonfly_membership::{Credentials, Identity, MembershipError, Role, TlsFiles};

/// See the module doc.
#[derive(Clone)]
pub struct Membership {
    /// How the peer port accepts.
    pub acceptor: Acceptor,
    /// How this host dials other members.
    pub dialer: Dialer,
    /// Who the credentials say this host is; `None` without credentials.
    pub identity: Option<Identity>,
}

impl Membership {
    /// No credentials: plain connections.
    pub fn plain() -> Membership {
        Membership {
            acceptor: Acceptor::plain(),
            dialer: Dialer::plain(),
            identity: None,
        }
    }

    /// From the configured files; a seed peer needs a seed peer's certificate.
    pub fn from_files(files: &TlsFiles, seed: bool) -> Result<Membership, MembershipError> {
        match files.credentials()? {
            Some(creds) => Membership::from_credentials(&creds, seed),
            None => Ok(Membership::plain()),
        }
    }

    /// With `creds` (which must be a seed peer's for a seed peer, a peer's otherwise).
    pub fn from_credentials(
        creds: &Credentials,
        seed: bool,
    ) -> Result<Membership, MembershipError> {
        let id = creds.identity().clone();
        let want = if seed { Role::Seed } else { Role::Peer };
        if id.role != want {
            return Err(MembershipError::BadCertificate {
                what: "security.cert".into(),
                reason: format!(
                    "it is the certificate of a {}; this daemon runs as a {} (p2p.seed_peer)",
                    id.role.as_str(),
                    want.as_str()
                ),
            });
        }
        Ok(Membership {
            acceptor: Acceptor::tls(creds)?,
            dialer: Dialer::tls(creds)?,
            identity: Some(id),
        })
    }
}
