//! The set of pieces present, in memory and in its checksummed on-disk form.
//!
//! File layout: magic `DFLYBMP1`, blob size (u64 LE), piece length (u32 LE), piece count
//! (u32 LE), the bits (piece i is bit i%8 of byte i/8), then the SHA-256 of everything before.
//! A file that fails any check is treated as "no pieces": pieces are fetched again, never
//! served from a bitmap we cannot trust.

use std::ops::Range;

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"DFLYBMP1";
const HEADER: usize = 8 + 8 + 4 + 4;

/// Which pieces of a blob are present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bitmap {
    bits: Vec<u8>,
    pieces: u32,
    present: u32,
}

impl Bitmap {
    /// No pieces present.
    pub(crate) fn empty(pieces: u32) -> Bitmap {
        Bitmap {
            bits: vec![0; (pieces as usize).div_ceil(8)],
            pieces,
            present: 0,
        }
    }

    pub(crate) fn pieces(&self) -> u32 {
        self.pieces
    }

    pub(crate) fn present(&self) -> u32 {
        self.present
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.present == self.pieces
    }

    pub(crate) fn has(&self, piece: u32) -> bool {
        piece < self.pieces && self.bits[(piece / 8) as usize] & (1 << (piece % 8)) != 0
    }

    pub(crate) fn has_all(&self, pieces: Range<u32>) -> bool {
        pieces.into_iter().all(|p| self.has(p))
    }

    pub(crate) fn set(&mut self, piece: u32) {
        debug_assert!(piece < self.pieces);
        let byte = &mut self.bits[(piece / 8) as usize];
        if *byte & (1 << (piece % 8)) == 0 {
            *byte |= 1 << (piece % 8);
            self.present += 1;
        }
    }

    pub(crate) fn unset(&mut self, piece: u32) {
        if !self.has(piece) {
            return;
        }
        self.bits[(piece / 8) as usize] &= !(1 << (piece % 8));
        self.present -= 1;
    }

    pub(crate) fn missing(&self, pieces: Range<u32>) -> impl Iterator<Item = u32> + '_ {
        pieces.filter(move |p| !self.has(*p))
    }

    /// The on-disk form for a blob of `size` bytes cut into `piece_length` pieces.
    pub(crate) fn encode(&self, size: u64, piece_length: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.bits.len() + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&piece_length.to_le_bytes());
        out.extend_from_slice(&self.pieces.to_le_bytes());
        out.extend_from_slice(&self.bits);
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Parses the on-disk form; `Err` says why it is unusable.
    pub(crate) fn decode(data: &[u8], size: u64, piece_length: u32) -> Result<Bitmap, String> {
        let pieces = piece_count(size, piece_length);
        let want = HEADER + (pieces as usize).div_ceil(8) + 32;
        if data.len() != want {
            return Err(format!("bitmap is {} bytes, expected {want}", data.len()));
        }
        let (body, sum) = data.split_at(want - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err("bitmap checksum mismatch".into());
        }
        if &body[..8] != MAGIC {
            return Err("bitmap has a bad magic number".into());
        }
        let f_size = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
        let f_len = u32::from_le_bytes(body[16..20].try_into().expect("4 bytes"));
        let f_pieces = u32::from_le_bytes(body[20..24].try_into().expect("4 bytes"));
        if (f_size, f_len, f_pieces) != (size, piece_length, pieces) {
            return Err(format!(
                "bitmap is for size {f_size}, piece length {f_len}, {f_pieces} pieces; expected {size}, {piece_length}, {pieces}"
            ));
        }
        let bits = body[HEADER..].to_vec();
        let tail_bits = pieces % 8;
        if tail_bits != 0 && bits.last().is_some_and(|b| b >> tail_bits != 0) {
            return Err("bitmap marks pieces past the end of the blob".into());
        }
        let present = bits.iter().map(|b| b.count_ones()).sum();
        Ok(Bitmap {
            bits,
            pieces,
            present,
        })
    }
}

/// Pieces of a blob of `size` bytes (a zero-byte blob has none).
pub(crate) fn piece_count(size: u64, piece_length: u32) -> u32 {
    u32::try_from(size.div_ceil(u64::from(piece_length))).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_counts() {
        let mut b = Bitmap::empty(13);
        for p in [0, 7, 8, 12] {
            b.set(p);
        }
        b.set(7);
        assert_eq!(b.present(), 4);
        assert!(b.has(12) && !b.has(11) && !b.has(13));
        assert!(b.has_all(7..9) && !b.has_all(6..9));
        assert_eq!(b.missing(5..10).collect::<Vec<_>>(), vec![5, 6, 9]);
        let enc = b.encode(13 * 65536 - 5, 65536);
        assert_eq!(Bitmap::decode(&enc, 13 * 65536 - 5, 65536).unwrap(), b);
        b.unset(7);
        b.unset(7);
        b.unset(11);
        assert_eq!(b.present(), 3);
        assert!(!b.has(7) && b.has(8));
    }

    #[test]
    fn damaged_or_foreign_files_are_refused() {
        let mut b = Bitmap::empty(10);
        b.set(3);
        let enc = b.encode(10 * 65536, 65536);
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x10;
            assert!(
                Bitmap::decode(&bad, 10 * 65536, 65536).is_err(),
                "flip at {i} accepted"
            );
        }
        assert!(Bitmap::decode(&enc[..enc.len() - 1], 10 * 65536, 65536).is_err());
        assert!(Bitmap::decode(&enc, 11 * 65536, 65536).is_err());
        assert!(Bitmap::decode(&enc, 10 * 65536, 131072).is_err());
        assert!(Bitmap::decode(&[], 10 * 65536, 65536).is_err());
    }

    #[test]
    fn piece_counts() {
        assert_eq!(piece_count(0, 65536), 0);
        assert_eq!(piece_count(1, 65536), 1);
        assert_eq!(piece_count(65536, 65536), 1);
        assert_eq!(piece_count(65537, 65536), 2);
        assert!(Bitmap::empty(0).is_complete());
    }
}
