//! Reading a lazy layer's TOC through the piece store: footer → TOC bytes → digest check
//! against the manifest's `toc.digest` → the layer index. The footer and TOC are ordinary
//! pieces, so after the first mount they come from the local store.

use dragonfly_estargz::{
    decode_toc, locate_toc, IndexOptions, LayerFormat, LayerIndex, Limits, FOOTER_READ_SIZE,
};
use dragonfly_storage::{Blob, Priority};

use super::error::LayerError;

/// Builds the index of `blob`, or `None` when the blob has no eStargz/zstd:chunked footer (an
/// ordinary layer). With `expected_toc` the TOC must hash to it; `None` accepts an unverified
/// TOC (the caller decided that is allowed).
pub async fn load_index(
    blob: &Blob,
    expected_toc: Option<String>,
    opts: IndexOptions,
) -> Result<Option<(LayerIndex, LayerFormat)>, LayerError> {
    let digest = blob.digest().to_owned();
    let size = blob.size();
    let tail_len = FOOTER_READ_SIZE.min(size);
    let tail = blob
        .read(size - tail_len..size, Priority::OnDemand)
        .await
        .map_err(|source| LayerError::Read {
            part: "footer",
            digest: digest.clone(),
            source,
        })?;
    let Ok(loc) = locate_toc(size, &tail) else {
        return Ok(None);
    };
    // The footer is the blob's word: its TOC length is bounded before a byte of it is read.
    let limits = Limits::default();
    if loc.toc_len > limits.max_toc_compressed {
        return Err(LayerError::BadToc {
            digest,
            source: dragonfly_estargz::Error::TocTooLarge {
                what: "compressed TOC (as the footer gives it)",
                limit: limits.max_toc_compressed,
            },
        });
    }
    let toc_bytes = blob
        .read(
            loc.toc_offset..loc.toc_offset + loc.toc_len,
            Priority::OnDemand,
        )
        .await
        .map_err(|source| LayerError::Read {
            part: "TOC",
            digest: digest.clone(),
            source,
        })?;
    let format = loc.format;
    tokio::task::spawn_blocking(move || {
        let bad = |source| LayerError::BadToc {
            digest: digest.clone(),
            source,
        };
        // Checked against the manifest's digest before it is parsed.
        let decoded =
            decode_toc(&loc, &toc_bytes, &limits, expected_toc.as_deref()).map_err(|source| {
                match source {
                    e @ dragonfly_estargz::Error::TocDigestMismatch { .. } => {
                        LayerError::TocMismatch {
                            digest: digest.clone(),
                            source: e,
                        }
                    }
                    e => bad(e),
                }
            })?;
        LayerIndex::build(&decoded.toc, loc.toc_offset, &opts).map_err(bad)
    })
    .await
    .map_err(|source| LayerError::Task {
        what: "TOC",
        source,
    })?
    .map(|index| Some((index, format)))
}
