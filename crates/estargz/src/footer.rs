//! Footers: where a layer's TOC is.
//!
//! - eStargz: a 51-byte empty gzip member whose extra field (subfield `SG`) holds
//!   `%016x` of the TOC offset followed by `STARGZ`.
//! - legacy stargz (CRFS): 47 bytes, the same text as a raw extra field.
//! - zstd:chunked as written by stargz-snapshotter: a zstd skippable frame with a 40-byte payload
//!   `LE64 toc offset | LE64 compressed length | LE64 uncompressed length | LE64 type=1 | "GnUlInUx"`.
//! - zstd:chunked as written by containers/storage: a 64-byte payload, seven LE64 fields
//!   (the first four as above) and `"GNUlInUx"`.

use crate::error::{Error, Result};

/// Compression format of a layer's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// Concatenated gzip members (eStargz, legacy stargz).
    Estargz,
    /// Concatenated zstd frames (zstd:chunked).
    ZstdChunked,
}

/// Bytes to read from the end of a blob to locate its TOC (the largest footer, with its
/// skippable-frame header).
pub const FOOTER_READ_SIZE: u64 = 72;

const ESTARGZ_FOOTER: usize = 51;
const LEGACY_FOOTER: usize = 47;
const ZSTD_MAGIC_OLD: &[u8; 8] = b"GnUlInUx";
const ZSTD_MAGIC_NEW: &[u8; 8] = b"GNUlInUx";
const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];

/// Where the TOC is and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocLocation {
    /// Chunk format of the layer.
    pub format: LayerFormat,
    /// Offset of the TOC's compressed bytes in the blob.
    pub toc_offset: u64,
    /// Length of the TOC's compressed bytes.
    pub toc_len: u64,
    /// Uncompressed length of the TOC JSON, when the footer says.
    pub toc_uncompressed_len: Option<u64>,
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

fn parse_hex_offset(text: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(text).ok()?;
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn gzip_footer(blob_size: u64, f: &[u8]) -> Option<u64> {
    let header_ok = f.len() >= 12 && f[0] == 0x1f && f[1] == 0x8b && f[2] == 8 && f[3] & 0x04 != 0;
    if !header_ok {
        return None;
    }
    let xlen = u16::from_le_bytes([f[10], f[11]]) as usize;
    let offset = if f.len() == ESTARGZ_FOOTER && xlen == 26 {
        let sub = &f[12..38];
        if &sub[0..2] != b"SG"
            || u16::from_le_bytes([sub[2], sub[3]]) != 22
            || &sub[20..26] != b"STARGZ"
        {
            return None;
        }
        parse_hex_offset(&sub[4..20])?
    } else if f.len() == LEGACY_FOOTER && xlen == 22 {
        let sub = &f[12..34];
        if &sub[16..22] != b"STARGZ" {
            return None;
        }
        parse_hex_offset(&sub[..16])?
    } else {
        return None;
    };
    (offset < blob_size - f.len() as u64).then_some(offset)
}

/// Locates the TOC from the last `min(FOOTER_READ_SIZE, blob_size)` bytes of a blob.
pub fn locate_toc(blob_size: u64, tail: &[u8]) -> Result<TocLocation> {
    let want = FOOTER_READ_SIZE.min(blob_size) as usize;
    if tail.len() != want {
        return Err(Error::BadFooter(format!(
            "expected the last {want} bytes of the blob, got {}",
            tail.len()
        )));
    }
    // zstd:chunked: the magic ends the blob.
    if tail.len() >= 48 && (tail.ends_with(ZSTD_MAGIC_OLD) || tail.ends_with(ZSTD_MAGIC_NEW)) {
        let payload = if tail.ends_with(ZSTD_MAGIC_OLD) {
            40
        } else {
            64
        };
        if tail.len() < payload + 8 {
            return Err(Error::BadFooter("zstd:chunked footer is truncated".into()));
        }
        let frame = &tail[tail.len() - payload - 8..];
        if frame[..4] != SKIPPABLE_MAGIC
            || u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes")) as usize != payload
        {
            return Err(Error::BadFooter(
                "zstd:chunked footer is not in a skippable frame".into(),
            ));
        }
        let p = &frame[8..];
        let (offset, len, ulen, kind) =
            (le64(&p[0..]), le64(&p[8..]), le64(&p[16..]), le64(&p[24..]));
        if kind != 1 {
            return Err(Error::BadFooter(format!(
                "zstd:chunked manifest type {kind} is not supported (only 1, the TOC)"
            )));
        }
        let footer_start = blob_size - (payload as u64 + 8);
        if offset.checked_add(len).is_none_or(|end| end > footer_start) || len == 0 {
            return Err(Error::BadFooter(format!(
                "zstd:chunked TOC range {offset}+{len} does not fit in a blob of {blob_size} bytes"
            )));
        }
        return Ok(TocLocation {
            format: LayerFormat::ZstdChunked,
            toc_offset: offset,
            toc_len: len,
            toc_uncompressed_len: Some(ulen),
        });
    }
    for size in [ESTARGZ_FOOTER, LEGACY_FOOTER] {
        if tail.len() < size {
            continue;
        }
        let f = &tail[tail.len() - size..];
        if let Some(offset) = gzip_footer(blob_size, f) {
            return Ok(TocLocation {
                format: LayerFormat::Estargz,
                toc_offset: offset,
                toc_len: blob_size - size as u64 - offset,
                toc_uncompressed_len: None,
            });
        }
    }
    Err(Error::BadFooter(
        "no eStargz, stargz or zstd:chunked footer at the end of the blob (is the image converted, e.g. with `ctr-remote image convert --estargz`?)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estargz_footer(offset: u64) -> Vec<u8> {
        let mut f = vec![
            0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
        ];
        f.extend_from_slice(format!("{offset:016x}STARGZ").as_bytes());
        f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(f.len(), 51);
        f
    }

    fn tail_of(blob: &[u8]) -> &[u8] {
        &blob[blob.len() - FOOTER_READ_SIZE.min(blob.len() as u64) as usize..]
    }

    #[test]
    fn estargz_footer_is_located() {
        let mut blob = vec![0u8; 1000];
        blob.extend(estargz_footer(700));
        let loc = locate_toc(blob.len() as u64, tail_of(&blob)).unwrap();
        assert_eq!(loc.format, LayerFormat::Estargz);
        assert_eq!((loc.toc_offset, loc.toc_len), (700, 300));
    }

    #[test]
    fn legacy_footer_is_located() {
        let mut f = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 22, 0];
        f.extend_from_slice(format!("{:016x}STARGZ", 10).as_bytes());
        f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut blob = vec![0u8; 100];
        blob.extend(f);
        let loc = locate_toc(blob.len() as u64, tail_of(&blob)).unwrap();
        assert_eq!((loc.toc_offset, loc.toc_len), (10, 90));
    }

    #[test]
    fn zstd_footers_are_located() {
        for (magic, payload) in [(ZSTD_MAGIC_OLD, 40usize), (ZSTD_MAGIC_NEW, 64)] {
            let mut blob = vec![0u8; 500];
            blob.extend_from_slice(&SKIPPABLE_MAGIC);
            blob.extend_from_slice(&(payload as u32).to_le_bytes());
            for v in [300u64, 100, 900, 1] {
                blob.extend_from_slice(&v.to_le_bytes());
            }
            blob.extend(std::iter::repeat_n(0u8, payload - 40));
            blob.extend_from_slice(magic);
            let loc = locate_toc(blob.len() as u64, tail_of(&blob)).unwrap();
            assert_eq!(loc.format, LayerFormat::ZstdChunked);
            assert_eq!(
                (loc.toc_offset, loc.toc_len, loc.toc_uncompressed_len),
                (300, 100, Some(900))
            );
        }
    }

    #[test]
    fn corrupt_and_truncated_footers_are_errors() {
        let mut blob = vec![0u8; 1000];
        blob.extend(estargz_footer(700));
        // Wrong subfield id.
        let mut bad = blob.clone();
        let n = bad.len();
        bad[n - 51 + 12] = b'X';
        assert!(locate_toc(bad.len() as u64, tail_of(&bad)).is_err());
        // Non-hex offset.
        let mut bad = blob.clone();
        bad[n - 51 + 20] = b'z';
        assert!(locate_toc(bad.len() as u64, tail_of(&bad)).is_err());
        // Offset beyond the blob.
        let mut big = vec![0u8; 10];
        big.extend(estargz_footer(5000));
        assert!(locate_toc(big.len() as u64, tail_of(&big)).is_err());
        // Tail of the wrong length, tiny blob, plain gzip data.
        assert!(locate_toc(blob.len() as u64, &blob[..10]).is_err());
        assert!(locate_toc(3, &[1, 2, 3]).is_err());
        let plain = vec![
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
            16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37,
            38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
            60, 61, 62,
        ];
        let e = locate_toc(plain.len() as u64, tail_of(&plain)).unwrap_err();
        assert!(e.to_string().contains("ctr-remote"), "{e}");
    }

    #[test]
    fn zstd_footer_with_bad_range_is_an_error() {
        let mut blob = vec![0u8; 50];
        blob.extend_from_slice(&SKIPPABLE_MAGIC);
        blob.extend_from_slice(&40u32.to_le_bytes());
        for v in [30u64, 1000, 900, 1] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        blob.extend_from_slice(ZSTD_MAGIC_OLD);
        assert!(locate_toc(blob.len() as u64, tail_of(&blob)).is_err());
    }
}
