//! Certificate signing requests: a joining member makes a key and asks the manager's CA for a
//! certificate naming its identity and addresses; the manager parses the request (signature
//! checked, sizes bounded) before deciding whether to sign it.

use std::net::IpAddr;

use rcgen::{CertificateParams, CertificateSigningRequestParams, KeyPair, PublicKey, SanType};

use crate::{Identity, MembershipError};

/// Longest request accepted, PEM.
pub const MAX_REQUEST_BYTES: usize = 16 << 10;
/// Most addresses, and most names, one certificate may carry.
pub const MAX_SANS: usize = 16;

/// What a request asks for.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// The member it would name.
    pub identity: Identity,
    /// Addresses it would be dialled at.
    pub ips: Vec<IpAddr>,
    /// Names it would be dialled by.
    pub names: Vec<String>,
    pub(crate) public_key: PublicKey,
}

/// A request and the new key it is for, as PEM.
pub struct NewRequest {
    /// The request.
    pub csr_pem: String,
    /// The key (keep it private).
    pub key_pem: String,
}

fn bad(reason: impl std::fmt::Display) -> MembershipError {
    MembershipError::bad("the certificate request", reason)
}

impl CertRequest {
    /// A new key and a request for `who` at `ips` and `names`.
    pub fn create(
        who: &Identity,
        ips: &[IpAddr],
        names: &[String],
    ) -> Result<NewRequest, MembershipError> {
        if ips.len() > MAX_SANS || names.len() > MAX_SANS {
            return Err(bad(format!(
                "at most {MAX_SANS} addresses and {MAX_SANS} names"
            )));
        }
        let key = KeyPair::generate().map_err(bad)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
        p.subject_alt_names = std::iter::once(who.uri().try_into().map(SanType::URI))
            .chain(
                names
                    .iter()
                    .map(|n| n.clone().try_into().map(SanType::DnsName)),
            )
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        p.subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let csr = p.serialize_request(&key).map_err(bad)?;
        Ok(NewRequest {
            csr_pem: csr.pem().map_err(bad)?,
            key_pem: key.serialize_pem(),
        })
    }

    /// The request in `pem`, its signature checked; exactly one member identity, at most
    /// [`MAX_SANS`] addresses and names, nothing else.
    pub fn parse(pem: &str) -> Result<CertRequest, MembershipError> {
        if pem.len() > MAX_REQUEST_BYTES {
            return Err(bad(format!("longer than {MAX_REQUEST_BYTES} bytes")));
        }
        let csr = CertificateSigningRequestParams::from_pem(pem).map_err(bad)?;
        let (mut identity, mut ips, mut names) = (None, Vec::new(), Vec::new());
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::URI(u) => {
                    let who = Identity::from_uri(u.as_str())
                        .ok_or_else(|| bad(format!("{:?} is not a member URI", u.as_str())))?;
                    if identity.replace(who).is_some() {
                        return Err(bad("it names more than one member"));
                    }
                }
                SanType::IpAddress(ip) => ips.push(*ip),
                SanType::DnsName(n) => names.push(n.as_str().to_owned()),
                other => return Err(bad(format!("unsupported name {other:?}"))),
            }
        }
        if ips.len() > MAX_SANS || names.len() > MAX_SANS {
            return Err(bad(format!(
                "at most {MAX_SANS} addresses and {MAX_SANS} names"
            )));
        }
        Ok(CertRequest {
            identity: identity
                .ok_or_else(|| bad("it names no member (dragonfly://<role>/<id>)"))?,
            ips,
            names,
            public_key: csr.public_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Ca, Credentials, Role};

    #[test]
    fn a_request_round_trips_and_the_ca_signs_what_it_asks_for() {
        let who = Identity::new(Role::Peer, "10.0.0.7-node").unwrap();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let new = CertRequest::create(&who, &[ip], &["node-7".into()]).unwrap();
        let req = CertRequest::parse(&new.csr_pem).unwrap();
        assert_eq!(req.identity, who);
        assert_eq!(req.ips, vec![ip]);
        assert_eq!(req.names, vec!["node-7".to_owned()]);
        let ca = Ca::create("test").unwrap();
        let cert = ca.sign(&req, Duration::from_secs(3600)).unwrap();
        let creds = Credentials::from_pem(ca.cert_pem(), &cert, &new.key_pem).unwrap();
        assert_eq!(creds.identity(), &who);
    }

    #[test]
    fn tampered_oversized_and_nameless_requests_are_refused() {
        let who = Identity::new(Role::Seed, "s1").unwrap();
        let new = CertRequest::create(&who, &[], &[]).unwrap();
        let other =
            CertRequest::create(&Identity::new(Role::Scheduler, "s1").unwrap(), &[], &[]).unwrap();
        // Another request's body under this one's signature: the signature fails.
        let body = |pem: &str| {
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>()
        };
        let (a, b) = (body(&new.csr_pem), body(&other.csr_pem));
        let spliced = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}{}\n-----END CERTIFICATE REQUEST-----\n",
            &b[..b.len() / 2],
            &a[a.len() / 2..]
        );
        assert!(CertRequest::parse(&spliced).is_err());
        assert!(CertRequest::parse(&"A".repeat(MAX_REQUEST_BYTES + 1)).is_err());
        assert!(CertRequest::parse("not a request").is_err());
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["only-a-name".to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::DnsName("x".try_into().unwrap()));
        let nameless = p.serialize_request(&key).unwrap().pem().unwrap();
        let e = CertRequest::parse(&nameless).unwrap_err().to_string();
        assert!(e.contains("names no member"), "{e}");
    }
}
