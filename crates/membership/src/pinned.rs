//! Trusting the manager before a member has the CA: the CA is pinned by the fingerprint the
//! manager printed (`sha256:<hex>` of its DER certificate). The manager's TLS chain carries
//! the CA; the verifier finds the certificate with that fingerprint in it and checks the
//! manager's own certificate against it, as if it were the only root. Without a fingerprint,
//! a member first asks for the CA over a connection whose certificate is not checked
//! ([`PinnedCa`] without a pin) and trusts the answer only if it carries a MAC its join token verifies
//! ([`ca_mac`]).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// What the manager stores for a join token, and the key of its CA MAC: hex SHA-256 of the
/// token.
pub fn token_key(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Hex HMAC-SHA256 of a CA's DER certificate keyed with a token's [`token_key`]: proves the
/// CA came from someone who knows the token's hash (the manager).
pub fn ca_mac(token_key: &str, ca_der: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token_key.as_bytes());
    hex::encode(ring::hmac::sign(&key, ca_der).as_ref())
}

/// The manager's certificate, checked against the CA whose fingerprint is pinned; with no
/// pin, not checked at all (the handshake's signatures still are) — only for fetching the CA,
/// whose authenticity then comes from its MAC.
#[derive(Debug)]
pub(crate) struct PinnedCa {
    fingerprint: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    pub(crate) fn new(fingerprint: Option<&str>, provider: Arc<CryptoProvider>) -> PinnedCa {
        PinnedCa {
            fingerprint: fingerprint.map(str::to_ascii_lowercase),
            provider,
        }
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = &self.fingerprint else {
            return Ok(ServerCertVerified::assertion());
        };
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == *pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's chain does not hold the CA {pin} (check security.join.ca_fingerprint against what the manager printed)"
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
