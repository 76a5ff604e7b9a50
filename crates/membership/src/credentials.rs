//! A member's credentials: the cluster CA, its certificate chain and key (PEM files, from the
//! manager or from cert-manager), and the rustls configurations for both ends of a connection.
//! The certificate and key can be replaced while servers and clients use them (renewal): every
//! configuration made from one `Credentials` (or its clones) presents the newest.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};

use crate::{Identity, MembershipError};

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Credentials {
    roots: Arc<RootCertStore>,
    ca: Vec<CertificateDer<'static>>,
    current: Arc<RwLock<Current>>,
    identity: Identity,
}

/// The certificate presented now.
#[derive(Debug)]
struct Current {
    /// Chain (ours first, then the CA, so a joining client can pin it) and signing key.
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The newest certificate of a [`Credentials`], for rustls on either end.
#[derive(Debug)]
struct Resolver(Arc<RwLock<Current>>);

impl Resolver {
    fn key(&self) -> Arc<CertifiedKey> {
        self.0.read().expect("credentials lock").key.clone()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// When `der` (a certificate) starts and stops being valid.
pub(crate) fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), MembershipError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| MembershipError::bad("the member certificate", e))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    let v = cert.validity();
    Ok((at(v.not_before), at(v.not_after)))
}

/// The certificates in `pem`; at least one.
pub(crate) fn pem_certs(
    pem: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, MembershipError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MembershipError::bad(what, e))?;
    if certs.is_empty() {
        return Err(MembershipError::bad(what, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// ring, with AES-128-GCM first: as safe as AES-256 for this use and cheaper per byte, which
/// matters for piece transfers on small nodes.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(p)
}

fn read(path: &Path, what: &'static str) -> Result<String, MembershipError> {
    std::fs::read_to_string(path).map_err(|source| MembershipError::Io {
        what,
        path: path.display().to_string(),
        source,
    })
}

impl Credentials {
    /// From PEM text: the CA, the member's certificate (chain) and its key. The certificate
    /// must verify against the CA now and name a member.
    pub fn from_pem(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Credentials, MembershipError> {
        let ca = pem_certs(ca_pem, "the CA certificate")?;
        let mut roots = RootCertStore::empty();
        for c in &ca {
            roots
                .add(c.clone())
                .map_err(|e| MembershipError::bad("the CA certificate", e))?;
        }
        let roots = Arc::new(roots);
        let current = Current::new(&roots, &ca, cert_pem, key_pem)?;
        let identity = Identity::from_cert_der(&current.key.cert[0])?;
        Ok(Credentials {
            roots,
            ca,
            current: Arc::new(RwLock::new(current)),
            identity,
        })
    }

    /// Presents `cert_pem` with `key_pem` from now on, everywhere these credentials (or their
    /// clones) are used; the certificate must verify against the CA and name the same member.
    pub fn renew(&self, cert_pem: &str, key_pem: &str) -> Result<(), MembershipError> {
        let next = Current::new(&self.roots, &self.ca, cert_pem, key_pem)?;
        let who = Identity::from_cert_der(&next.key.cert[0])?;
        if who != self.identity {
            return Err(MembershipError::bad(
                "the renewed certificate",
                format!("it names {who}, not {}", self.identity),
            ));
        }
        *self.current.write().expect("credentials lock") = next;
        Ok(())
    }

    /// When the certificate presented now was issued and when it expires.
    pub fn validity(&self) -> (SystemTime, SystemTime) {
        let c = self.current.read().expect("credentials lock");
        (c.not_before, c.not_after)
    }

    /// The IP addresses the certificate presented now names.
    pub fn ips(&self) -> Vec<std::net::IpAddr> {
        let c = self.current.read().expect("credentials lock");
        crate::identity::cert_ips(&c.key.cert[0])
    }

    /// The CA certificate(s), DER.
    pub fn ca_der(&self) -> &[CertificateDer<'static>] {
        &self.ca
    }

    /// From the PEM files `ca`, `cert` and `key`.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Credentials, MembershipError> {
        Credentials::from_pem(
            &read(ca, "read the CA certificate")?,
            &read(cert, "read the member certificate")?,
            &read(key, "read the member key")?,
        )
    }

    /// Who these credentials make us.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Server side: our certificate; a client certificate, when one is presented, must be
    /// from the CA. Clients without one still complete the handshake so that they get a
    /// gRPC `UNAUTHENTICATED` (from [`crate::server::require`]) instead of a broken pipe,
    /// and so that a joining member can ask for its first certificate.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, MembershipError> {
        let verifier = client_verifier(&self.roots, true)?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| MembershipError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(self.current.clone())));
        Ok(Arc::new(config))
    }

    /// Client side: the server must present a certificate from the CA for the address
    /// dialled; we present ours.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, MembershipError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| MembershipError::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(self.client_cert());
        Ok(Arc::new(config))
    }

    /// What a client presents: the newest certificate.
    pub(crate) fn client_cert(&self) -> Arc<dyn ResolvesClientCert> {
        Arc::new(Resolver(self.current.clone()))
    }
}

fn client_verifier(
    roots: &Arc<RootCertStore>,
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, MembershipError> {
    let b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
    let b = if optional {
        b.allow_unauthenticated()
    } else {
        b
    };
    b.build().map_err(|e| MembershipError::Tls(e.to_string()))
}

impl Current {
    /// `cert_pem` and `key_pem`, checked: the key matches, and the certificate verifies
    /// against `roots` now.
    fn new(
        roots: &Arc<RootCertStore>,
        ca: &[CertificateDer<'static>],
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Current, MembershipError> {
        let mut chain = pem_certs(cert_pem, "the member certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| MembershipError::bad("the member key", e))?;
        client_verifier(roots, false)?
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|e| {
                MembershipError::bad(
                    "the member certificate",
                    format!("it does not verify against the CA: {e}"),
                )
            })?;
        let (not_before, not_after) = validity(&chain[0])?;
        for c in ca {
            if !chain.contains(c) {
                chain.push(c.clone());
            }
        }
        let key = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| MembershipError::bad("the member key", e))?;
        Ok(Current {
            key: Arc::new(key),
            not_before,
            not_after,
        })
    }
}
