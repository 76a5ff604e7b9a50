//! The cluster's certificate authority (the manager's): creates or loads the CA and issues
//! member certificates — one member identity as a URI SAN, plus the addresses and names other
//! members dial it by, for client and server use.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{CertRequest, Identity, MembershipError};

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Clock skew a new certificate tolerates.
const BACKDATE: Duration = Duration::from_secs(300);

/// The CA: its certificate and key, as PEM.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
}

/// A member certificate with its new key, as PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

fn rc(what: &str) -> impl FnOnce(rcgen::Error) -> MembershipError + '_ {
    move |e| MembershipError::bad(what, e)
}

fn validity(p: &mut CertificateParams, valid: Duration) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - BACKDATE;
    p.not_after = now + valid;
}

impl Ca {
    /// A new CA named `name` (ECDSA P-256, valid ten years).
    pub fn create(name: &str) -> Result<Ca, MembershipError> {
        let key = KeyPair::generate().map_err(rc("the CA key"))?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc("the CA"))?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut p, CA_VALIDITY);
        let cert = p.self_signed(&key).map_err(rc("the CA"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA in `cert_pem` with its key `key_pem` (checked to belong together).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, MembershipError> {
        let ca = Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        };
        ca.issuer()?;
        Ok(ca)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, MembershipError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(rc("the CA key"))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(rc("the CA certificate"))
    }

    /// Its certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Its key (keep it private).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Its DER certificate.
    pub fn cert_der(&self) -> Result<Vec<u8>, MembershipError> {
        let der = crate::credentials::pem_certs(&self.cert_pem, "the CA certificate")?;
        Ok(der[0].to_vec())
    }

    /// `sha256:<hex>` of its DER certificate: what a joining member pins.
    pub fn fingerprint(&self) -> Result<String, MembershipError> {
        let der = crate::credentials::pem_certs(&self.cert_pem, "the CA certificate")?;
        Ok(crate::pinned::fingerprint(&der[0]))
    }

    /// A certificate for `who`, dialled at `ips` and `names`, valid for `valid`, with a new
    /// key.
    pub fn issue(
        &self,
        who: &Identity,
        ips: &[IpAddr],
        names: &[String],
        valid: Duration,
    ) -> Result<Issued, MembershipError> {
        let key = KeyPair::generate().map_err(rc("a member key"))?;
        let cert = member_params(who, ips, names, valid)?
            .signed_by(&key, &self.issuer()?)
            .map_err(rc("a member certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for the key of `req` (its signature already checked), valid for
    /// `valid`: with the identity, addresses and names it asks for, and nothing else of it —
    /// the usages and constraints are ours.
    pub fn sign(&self, req: &CertRequest, valid: Duration) -> Result<String, MembershipError> {
        let signing = rcgen::CertificateSigningRequestParams {
            params: member_params(&req.identity, &req.ips, &req.names, valid)?,
            public_key: req.public_key.clone(),
        };
        let cert = signing
            .signed_by(&self.issuer()?)
            .map_err(rc("a member certificate"))?;
        Ok(cert.pem())
    }
}

/// What a member certificate says: `who` as a URI SAN, `ips` and `names` as SANs, for TLS
/// client and server use, valid for `valid` (backdated a little for clock skew).
pub(crate) fn member_params(
    who: &Identity,
    ips: &[IpAddr],
    names: &[String],
    valid: Duration,
) -> Result<CertificateParams, MembershipError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc("a member"))?;
    p.distinguished_name
        .push(DnType::CommonName, who.to_string());
    let uri = who.uri().try_into().map_err(rc("the member's URI"))?;
    p.subject_alt_names = std::iter::once(SanType::URI(uri))
        .chain(ips.iter().map(|ip| SanType::IpAddress(*ip)))
        .map(Ok)
        .chain(names.iter().map(|n| {
            n.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(rc("a member's DNS name"))
        }))
        .collect::<Result<_, _>>()?;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, valid);
    Ok(p)
}

impl Ca {
    /// Credentials for `who` issued here, in memory: for a member run in the same process as
    /// its CA (tests, benches).
    pub fn credentials(
        &self,
        who: &Identity,
        ips: &[IpAddr],
        valid: Duration,
    ) -> Result<crate::Credentials, MembershipError> {
        self.credentials_for(who, ips, &[], valid)
    }

    /// Like [`Ca::credentials`], for DNS names too.
    pub fn credentials_for(
        &self,
        who: &Identity,
        ips: &[IpAddr],
        names: &[String],
        valid: Duration,
    ) -> Result<crate::Credentials, MembershipError> {
        let issued = self.issue(who, ips, names, valid)?;
        crate::Credentials::from_pem(&self.cert_pem, &issued.cert_pem, &issued.key_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    #[test]
    fn a_ca_issues_certificates_naming_the_member() {
        let ca = Ca::create("test cluster").unwrap();
        let again = Ca::load(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(ca.fingerprint().unwrap(), again.fingerprint().unwrap());
        let who = Identity::new(Role::Scheduler, "sched-1").unwrap();
        let issued = ca
            .issue(
                &who,
                &["127.0.0.1".parse().unwrap()],
                &["localhost".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let der = crate::credentials::pem_certs(&issued.cert_pem, "test").unwrap();
        assert_eq!(Identity::from_cert_der(&der[0]).unwrap(), who);
    }
}
