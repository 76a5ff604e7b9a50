//! The TOC (`stargz.index.json`): its JSON schema, decompression within limits, and
//! verification against the manifest's `containerd.io/snapshot/stargz/toc.digest`.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::footer::{LayerFormat, TocLocation};

/// Name of the TOC's tar entry in an eStargz blob.
pub const TOC_TAR_NAME: &str = "stargz.index.json";

/// Bounds on what a TOC may cost to read.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Compressed TOC bytes.
    pub max_toc_compressed: u64,
    /// Uncompressed TOC JSON bytes.
    pub max_toc_json: u64,
    /// TOC entries.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_toc_compressed: 64 << 20,
            max_toc_json: 256 << 20,
            max_entries: 2_000_000,
        }
    }
}

/// The TOC JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct Toc {
    /// Must be 1.
    pub version: u32,
    /// Entries in blob order.
    #[serde(default)]
    pub entries: Vec<TocEntry>,
}

/// One TOC entry (a tar entry, or a further chunk of a regular file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TocEntry {
    /// Path as in the tar.
    pub name: String,
    /// `dir`, `reg`, `symlink`, `hardlink`, `char`, `block`, `fifo` or `chunk`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed file size.
    pub size: u64,
    /// RFC 3339 modification time.
    pub modtime: String,
    /// Link target.
    pub link_name: String,
    /// Permission and mode bits (tar `Header.Mode`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device major.
    pub dev_major: u32,
    /// Device minor.
    pub dev_minor: u32,
    /// Extended attributes, values base64.
    pub xattrs: BTreeMap<String, String>,
    /// Digest of the whole file payload.
    pub digest: String,
    /// Compressed offset of the member/frame holding this payload.
    pub offset: u64,
    /// Uncompressed offset of the payload inside that member.
    pub inner_offset: u64,
    /// Offset of this chunk in the file.
    pub chunk_offset: u64,
    /// Uncompressed chunk size; 0 means "to the end of the file".
    pub chunk_size: u64,
    /// Digest of this chunk's uncompressed bytes.
    pub chunk_digest: String,
    /// zstd:chunked: end of the compressed chunk.
    pub end_offset: u64,
}

/// A parsed TOC with the digest of its JSON bytes.
#[derive(Debug, Clone)]
pub struct DecodedToc {
    /// The TOC.
    pub toc: Toc,
    /// `sha256:<hex>` of the JSON bytes.
    pub json_digest: String,
}

fn read_limited(mut r: impl Read, limit: u64, what: &'static str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    r.by_ref()
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::BadToc(format!("cannot decompress the TOC: {e}")))?;
    if out.len() as u64 > limit {
        return Err(Error::TocTooLarge { what, limit });
    }
    Ok(out)
}

/// Extracts the TOC JSON from its compressed bytes.
pub fn toc_json(loc: &TocLocation, compressed: &[u8], limits: &Limits) -> Result<Vec<u8>> {
    if compressed.len() as u64 != loc.toc_len {
        return Err(Error::BadToc(format!(
            "expected {} compressed TOC bytes, got {} (truncated blob?)",
            loc.toc_len,
            compressed.len()
        )));
    }
    if loc.toc_len > limits.max_toc_compressed {
        return Err(Error::TocTooLarge {
            what: "compressed TOC",
            limit: limits.max_toc_compressed,
        });
    }
    match loc.format {
        LayerFormat::ZstdChunked => {
            if loc
                .toc_uncompressed_len
                .is_some_and(|l| l > limits.max_toc_json)
            {
                return Err(Error::TocTooLarge {
                    what: "TOC JSON",
                    limit: limits.max_toc_json,
                });
            }
            let dec = zstd::stream::read::Decoder::new(compressed)
                .map_err(|e| Error::BadToc(format!("cannot start zstd decoder: {e}")))?;
            read_limited(dec, limits.max_toc_json, "TOC JSON")
        }
        LayerFormat::Estargz => {
            let gz = flate2::read::GzDecoder::new(compressed);
            let mut archive = tar::Archive::new(gz.take(limits.max_toc_json + 4096));
            let entries = archive
                .entries()
                .map_err(|e| Error::BadToc(format!("TOC member is not a tar stream: {e}")))?;
            for entry in entries {
                let entry = entry
                    .map_err(|e| Error::BadToc(format!("bad tar header in TOC member: {e}")))?;
                let path = entry
                    .path()
                    .map_err(|e| Error::BadToc(format!("bad tar path in TOC member: {e}")))?
                    .into_owned();
                if path.as_os_str() == TOC_TAR_NAME {
                    if entry.size() > limits.max_toc_json {
                        return Err(Error::TocTooLarge {
                            what: "TOC JSON",
                            limit: limits.max_toc_json,
                        });
                    }
                    let json = read_limited(entry, limits.max_toc_json, "TOC JSON")?;
                    return Ok(json);
                }
            }
            Err(Error::BadToc(format!(
                "no {TOC_TAR_NAME} entry in the TOC member"
            )))
        }
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Decompresses the TOC read at `loc` (within `limits`), checks it against the digest the
/// manifest gave for it (`expected`, if any) before a byte of it is parsed, and parses it.
pub fn decode_toc(
    loc: &TocLocation,
    compressed: &[u8],
    limits: &Limits,
    expected: Option<&str>,
) -> Result<DecodedToc> {
    let json = toc_json(loc, compressed, limits)?;
    let json_digest = sha256_digest(&json);
    if let Some(expected) = expected.filter(|e| *e != json_digest) {
        return Err(Error::TocDigestMismatch {
            expected: expected.to_owned(),
            actual: json_digest,
        });
    }
    let toc: Toc =
        serde_json::from_slice(&json).map_err(|e| Error::BadToc(format!("invalid JSON: {e}")))?;
    if toc.version != 1 {
        return Err(Error::BadToc(format!(
            "TOC version {} is not supported (only 1)",
            toc.version
        )));
    }
    if toc.entries.len() > limits.max_entries {
        return Err(Error::TocTooLarge {
            what: "number of TOC entries",
            limit: limits.max_entries as u64,
        });
    }
    Ok(DecodedToc { toc, json_digest })
}

/// Checks the TOC against the digest the manifest gave for it.
pub fn verify_toc_digest(decoded: &DecodedToc, expected: &str) -> Result<()> {
    if decoded.json_digest == expected {
        Ok(())
    } else {
        Err(Error::TocDigestMismatch {
            expected: expected.to_owned(),
            actual: decoded.json_digest.clone(),
        })
    }
}
