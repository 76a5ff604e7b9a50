//! What a Prepare's labels say about a layer: image reference, layer digest, TOC digest and
//! prefetch hints, from any of the label sets clients send.
//!
//! - `ctr-remote image rpull`: `containerd.io/snapshot/remote/stargz.{reference,digest,layers,prefetch,skipverify}`
//! - the CRI plugin (`disable_snapshot_annotations = false`) and nerdctl:
//!   `containerd.io/snapshot/cri.{image-ref,layer-digest,image-layers}`
//! - the manifest annotation `containerd.io/snapshot/stargz/toc.digest`, which containerd
//!   forwards to every Prepare by itself.

use std::collections::BTreeMap;

use dragonfly_registry::Reference;

use super::error::LayerError;

/// `ctr-remote`'s image reference label.
pub const STARGZ_REFERENCE: &str = "containerd.io/snapshot/remote/stargz.reference";
/// `ctr-remote`'s layer digest label.
pub const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
/// `ctr-remote`'s skip-verification label.
pub const STARGZ_SKIP_VERIFY: &str = "containerd.io/snapshot/remote/stargz.skipverify";
/// CRI's image reference label.
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// CRI's layer digest label.
pub const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// The TOC digest annotation of eStargz / zstd:chunked layers.
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Our own label, persisted with the committed snapshot: the blob's size, so a restart can
/// re-mount from the local cache without asking the registry.
pub const BLOB_SIZE: &str = "containerd.io/snapshot/dragonfly.blob-size";

/// A layer to serve lazily.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerLabels {
    /// The image the layer belongs to (where to fetch it from).
    pub image: Reference,
    /// The layer blob's digest (`sha256:…`).
    pub digest: String,
    /// The expected digest of the TOC JSON, if the manifest gave one.
    pub toc_digest: Option<String>,
    /// The client asked not to verify the TOC.
    pub skip_verify: bool,
    /// Blob size remembered from an earlier mount.
    pub blob_size: Option<u64>,
}

impl LayerLabels {
    /// Whether the labels name an image and a layer (cheap check).
    pub fn present(labels: &BTreeMap<String, String>) -> bool {
        let has = |k: &str| labels.get(k).is_some_and(|v| !v.is_empty());
        (has(STARGZ_REFERENCE) && has(STARGZ_DIGEST))
            || (has(CRI_IMAGE_REF) && has(CRI_LAYER_DIGEST))
    }

    /// Parses the labels; errors name the label that is wrong.
    pub fn parse(labels: &BTreeMap<String, String>) -> Result<LayerLabels, LayerError> {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty());
        let (reference, digest) = match (get(STARGZ_REFERENCE), get(STARGZ_DIGEST)) {
            (Some(r), Some(d)) => (r, d),
            _ => match (get(CRI_IMAGE_REF), get(CRI_LAYER_DIGEST)) {
                (Some(r), Some(d)) => (r, d),
                _ => {
                    return Err(LayerError::BadLabel(format!(
                        "no image reference and layer digest labels ({STARGZ_REFERENCE} or {CRI_IMAGE_REF})"
                    )))
                }
            },
        };
        let image: Reference = reference
            .parse()
            .map_err(|e| LayerError::BadLabel(format!("bad image reference {reference:?}: {e}")))?;
        if !is_sha256_digest(digest) {
            return Err(LayerError::BadLabel(format!(
                "bad layer digest {digest:?}: expected sha256:<64 hex digits>"
            )));
        }
        let toc_digest = get(TOC_DIGEST).cloned();
        if let Some(t) = &toc_digest {
            if !is_sha256_digest(t) {
                return Err(LayerError::BadLabel(format!(
                    "bad {TOC_DIGEST} label {t:?}: expected sha256:<64 hex digits>"
                )));
            }
        }
        let blob_size = match get(BLOB_SIZE) {
            Some(s) => Some(
                s.parse()
                    .map_err(|_| LayerError::BadLabel(format!("bad {BLOB_SIZE} label {s:?}")))?,
            ),
            None => None,
        };
        Ok(LayerLabels {
            image,
            digest: digest.clone(),
            toc_digest,
            skip_verify: get(STARGZ_SKIP_VERIFY).is_some_and(|v| v == "true"),
            blob_size,
        })
    }
}

/// `sha256:` followed by 64 lower-case hex digits (what names a task).
fn is_sha256_digest(s: &str) -> bool {
    dragonfly_task::TaskId::oci(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stargz_labels() {
        let l = labels(&[
            (STARGZ_REFERENCE, "127.0.0.1:5000/img:v1"),
            (STARGZ_DIGEST, D),
            (TOC_DIGEST, D),
        ]);
        assert!(LayerLabels::present(&l));
        let p = LayerLabels::parse(&l).unwrap();
        assert_eq!(p.digest, D);
        assert_eq!(p.toc_digest.as_deref(), Some(D));
        assert!(!p.skip_verify);
    }

    #[test]
    fn cri_labels() {
        let l = labels(&[
            (CRI_IMAGE_REF, "127.0.0.1:5000/img:v1"),
            (CRI_LAYER_DIGEST, D),
        ]);
        assert!(LayerLabels::present(&l));
        assert_eq!(LayerLabels::parse(&l).unwrap().toc_digest, None);
    }

    #[test]
    fn no_labels_or_bad_values() {
        assert!(!LayerLabels::present(&labels(&[(TOC_DIGEST, D)])));
        let bad = labels(&[
            (STARGZ_REFERENCE, "127.0.0.1:5000/img:v1"),
            (STARGZ_DIGEST, "sha256:xyz"),
        ]);
        assert!(LayerLabels::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("bad layer digest"));
        let bad = labels(&[
            (STARGZ_REFERENCE, "127.0.0.1:5000/img:v1"),
            (STARGZ_DIGEST, D),
            (TOC_DIGEST, "md5:1"),
        ]);
        assert!(LayerLabels::parse(&bad).is_err());
    }
}
