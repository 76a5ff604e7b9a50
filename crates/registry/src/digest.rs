//! Content digests (`sha256:<hex>`, `sha512:<hex>`): validation before a digest goes into a URL,
//! and incremental verification of fetched content.

use std::fmt;

use sha2::{Digest as _, Sha256, Sha512};

use crate::error::Error;

/// Hash algorithms this client can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256 (what registries and the piece store use).
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest, `algorithm:hex` (lowercase hex of the right length): the only form
/// that may go into a URL, a path or a task ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses and validates `algorithm:hex`; only sha256 and sha512 are accepted because only
    /// those can be verified.
    pub fn parse(text: &str) -> Result<Digest, Error> {
        let bad = |reason: &str| Error::InvalidDigest {
            digest: text.to_string(),
            reason: reason.to_string(),
        };
        let (algo, hex) = text.split_once(':').ok_or_else(|| bad("missing ':'"))?;
        let algorithm = match algo {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err(bad(&format!(
                    "unsupported algorithm {other:?} (only sha256 and sha512 can be verified)"
                )))
            }
        };
        if hex.len() != algorithm.hex_len() {
            return Err(bad(&format!(
                "{} needs {} hex characters, got {}",
                algorithm.name(),
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("the hex part must be lowercase hexadecimal"));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// `sha256:<hex>` of `data`.
    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(data)),
        }
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Its hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A fresh incremental verifier using this digest's algorithm.
    pub(crate) fn verifier(&self) -> Verifier {
        Verifier::new(self.algorithm)
    }

    /// Hashes `data` with this digest's algorithm and compares.
    pub(crate) fn matches(&self, data: &[u8]) -> Result<(), String> {
        let mut v = self.verifier();
        v.update(data);
        v.check(self)
    }
}

impl std::str::FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Digest, Error> {
        Digest::parse(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

/// Incremental hasher for one algorithm.
pub(crate) enum Verifier {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Verifier {
    pub(crate) fn new(algorithm: Algorithm) -> Verifier {
        match algorithm {
            Algorithm::Sha256 => Verifier::Sha256(Sha256::new()),
            Algorithm::Sha512 => Verifier::Sha512(Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Verifier::Sha256(h) => h.update(data),
            Verifier::Sha512(h) => h.update(data),
        }
    }

    /// The digest string of everything fed so far.
    pub(crate) fn finish(self) -> String {
        match self {
            Verifier::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Verifier::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }

    /// Compares with `expected`; on mismatch returns the actual digest.
    pub(crate) fn check(self, expected: &Digest) -> Result<(), String> {
        let actual = self.finish();
        if actual == expected.to_string() {
            Ok(())
        } else {
            Err(actual)
        }
    }
}

/// `sha256:<hex>` of `data`.
pub(crate) fn sha256_of(data: &[u8]) -> String {
    let mut v = Verifier::new(Algorithm::Sha256);
    v.update(data);
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_digests() {
        let d = Digest::parse(&sha256_of(b"abc")).unwrap();
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(d.matches(b"abc").is_ok());
        assert!(d.matches(b"abd").is_err());
        let long = format!("sha512:{}", "a".repeat(128));
        assert!(Digest::parse(&long).is_ok());
    }

    #[test]
    fn rejects_malformed_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}/../x", "a".repeat(58)),
        ] {
            let err = Digest::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidDigest { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn sha512_verification() {
        let mut v = Verifier::new(Algorithm::Sha512);
        v.update(b"abc");
        let text = v.finish();
        let d = Digest::parse(&text).unwrap();
        assert!(d.matches(b"abc").is_ok());
        assert_eq!(d.matches(b"x").unwrap_err().len(), "sha512:".len() + 128);
    }
}
