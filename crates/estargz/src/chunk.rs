//! Decoding one chunk: decompress its member/frame, skip to the payload, verify the digest.
//! No byte leaves this function unverified.

use std::io::Read;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::footer::LayerFormat;
use crate::index::Chunk;

/// Largest decoded chunk accepted: the buffer is sized from the TOC, which the image's author
/// wrote (eStargz chunks are 4 MiB by default).
pub const MAX_CHUNK_BYTES: u64 = 64 << 20;

/// Decodes `chunk` from exactly the compressed bytes `[compressed_offset, compressed_end)`
/// and checks them against the chunk's digest.
pub fn decode_chunk(format: LayerFormat, compressed: &[u8], chunk: &Chunk) -> Result<Vec<u8>> {
    let want = chunk.compressed_end - chunk.compressed_offset;
    let bad = |reason: String| Error::BadChunk {
        offset: chunk.compressed_offset,
        reason,
    };
    if chunk.len > MAX_CHUNK_BYTES {
        return Err(bad(format!(
            "the TOC gives it {} bytes, more than the {MAX_CHUNK_BYTES} accepted",
            chunk.len
        )));
    }
    if compressed.len() as u64 != want {
        return Err(bad(format!(
            "expected {want} compressed bytes, got {}",
            compressed.len()
        )));
    }
    let reader: Box<dyn Read + '_> = match format {
        LayerFormat::Estargz => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        LayerFormat::ZstdChunked => Box::new(
            zstd::stream::read::Decoder::with_buffer(compressed)
                .map_err(|e| bad(format!("cannot start zstd decoder: {e}")))?,
        ),
    };
    let mut reader = reader.take(chunk.inner_offset + chunk.len);
    if chunk.inner_offset > 0 {
        std::io::copy(
            &mut reader.by_ref().take(chunk.inner_offset),
            &mut std::io::sink(),
        )
        .map_err(|e| bad(e.to_string()))?;
    }
    let mut out = vec![0u8; chunk.len as usize];
    reader
        .read_exact(&mut out)
        .map_err(|e| bad(format!("cannot read {} bytes: {e}", chunk.len)))?;
    let actual: [u8; 32] = Sha256::digest(&out).into();
    if actual != chunk.digest {
        return Err(Error::ChunkDigestMismatch {
            offset: chunk.compressed_offset,
            expected: hex::encode(chunk.digest),
            actual: hex::encode(actual),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TOC that claims a huge chunk gets an error, not a huge allocation.
    #[test]
    fn a_chunk_larger_than_the_limit_is_refused_before_allocating() {
        let chunk = Chunk {
            file_offset: 0,
            len: 1 << 40,
            compressed_offset: 0,
            compressed_end: 4,
            inner_offset: 0,
            digest: [0; 32],
        };
        let e = decode_chunk(LayerFormat::Estargz, &[0; 4], &chunk).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }
}
