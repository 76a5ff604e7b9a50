//! Who a member is: its role in the cluster and its ID, as its certificate states them in a
//! URI subject alternative name `dragonfly://<role>/<id>`.

use std::fmt;
use std::str::FromStr;

use crate::MembershipError;

/// A member's role: what it may do in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The manager: starts preheats on schedulers.
    Manager,
    /// A scheduler: triggers downloads on peers.
    Scheduler,
    /// A seed peer: fetches from origins and records piece digests.
    Seed,
    /// A peer.
    Peer,
}

impl Role {
    /// Its name in certificates and config.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Scheduler => "scheduler",
            Role::Seed => "seed",
            Role::Peer => "peer",
        }
    }
}

impl FromStr for Role {
    type Err = MembershipError;

    fn from_str(s: &str) -> Result<Role, MembershipError> {
        Ok(match s {
            "manager" => Role::Manager,
            "scheduler" => Role::Scheduler,
            "seed" => Role::Seed,
            "peer" => Role::Peer,
            other => {
                return Err(MembershipError::bad(
                    "member role",
                    format!("{other:?} is not manager, scheduler, seed or peer"),
                ))
            }
        })
    }
}

/// A member: role and ID (a host ID for peers and seed peers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Its role.
    pub role: Role,
    /// Its ID.
    pub id: String,
}

const SCHEME: &str = "dragonfly://";

impl Identity {
    /// `role` member `id`; the ID must be 1..=256 bytes of `[A-Za-z0-9._:-]`.
    pub fn new(role: Role, id: &str) -> Result<Identity, MembershipError> {
        let ok = !id.is_empty()
            && id.len() <= 256
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if !ok {
            return Err(MembershipError::bad(
                "member ID",
                format!("{id:?} must be 1 to 256 letters, digits, '.', '_', ':' or '-'"),
            ));
        }
        Ok(Identity {
            role,
            id: id.to_owned(),
        })
    }

    /// The URI SAN that states it.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}", self.role.as_str(), self.id)
    }

    /// The identity a URI SAN states, if it is one of ours.
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let (role, id) = uri.strip_prefix(SCHEME)?.split_once('/')?;
        Identity::new(role.parse().ok()?, id).ok()
    }

    /// The identity in a DER certificate (already verified against the CA by TLS).
    pub fn from_cert_der(der: &[u8]) -> Result<Identity, MembershipError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| MembershipError::bad("member certificate", e))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| MembershipError::bad("member certificate", e))?
            .ok_or_else(|| MembershipError::NoIdentity(cert.subject().to_string()))?;
        let mut found = san.value.general_names.iter().filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Identity::from_uri(u),
            _ => None,
        });
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(id),
            (Some(_), Some(_)) => Err(MembershipError::bad(
                "member certificate",
                "it names more than one member",
            )),
            (None, _) => Err(MembershipError::NoIdentity(cert.subject().to_string())),
        }
    }
}

/// The IP addresses a certificate names (already verified against the CA by TLS).
pub(crate) fn cert_ips(der: &[u8]) -> Vec<std::net::IpAddr> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role.as_str(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uri_and_bad_ones_are_refused() {
        let id = Identity::new(Role::Seed, "10.0.0.1-seed-1").unwrap();
        assert_eq!(id.uri(), "dragonfly://seed/10.0.0.1-seed-1");
        assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        for bad in [
            "dragonfly://admin/x",
            "dragonfly://peer/",
            "dragonfly://peer/a/b",
            "https://peer/x",
            "dragonfly://peer/x y",
        ] {
            assert_eq!(Identity::from_uri(bad), None, "{bad}");
        }
        assert!(Identity::new(Role::Peer, &"a".repeat(257)).is_err());
    }
}
