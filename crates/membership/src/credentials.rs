//! A member's credentials: the cluster CA, its certificate chain and key (PEM files, from the
//! manager or from cert-manager), and the rustls configurations for both ends of a connection.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::{Identity, MembershipError};

/// See the module doc.
#[derive(Debug)]
pub struct Credentials {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: Identity,
}

impl Clone for Credentials {
    fn clone(&self) -> Credentials {
        Credentials {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
        }
    }
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
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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
        let mut roots = RootCertStore::empty();
        for ca in pem_certs(ca_pem, "the CA certificate")? {
            roots
                .add(ca)
                .map_err(|e| MembershipError::bad("the CA certificate", e))?;
        }
        let chain = pem_certs(cert_pem, "the member certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| MembershipError::bad("the member key", e))?;
        let identity = Identity::from_cert_der(&chain[0])?;
        let creds = Credentials {
            roots: Arc::new(roots),
            chain,
            key,
            identity,
        };
        creds
            .client_verifier()?
            .verify_client_cert(&creds.chain[0], &creds.chain[1..], UnixTime::now())
            .map_err(|e| {
                MembershipError::bad(
                    "the member certificate",
                    format!("it does not verify against the CA: {e}"),
                )
            })?;
        Ok(creds)
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

    fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, MembershipError> {
        WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| MembershipError::Tls(e.to_string()))
    }

    /// Server side: our certificate, and every client must present one from the CA.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, MembershipError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| MembershipError::Tls(e.to_string()))?
            .with_client_cert_verifier(self.client_verifier()?)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| MembershipError::Tls(e.to_string()))?;
        Ok(Arc::new(config))
    }

    /// Client side: the server must present a certificate from the CA for the address
    /// dialled; we present ours.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, MembershipError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| MembershipError::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| MembershipError::Tls(e.to_string()))?;
        Ok(Arc::new(config))
    }
}
