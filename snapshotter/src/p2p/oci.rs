//! OCI objects as swarm tasks. A registry blob (config, layer) or a manifest / index is one
//! task whose ID is its digest, so every registry host, mirror or URL that serves the same
//! content joins one swarm. Its origin URL says how a peer with no parent fetches it:
//! `oci://REGISTRY/REPO@DIGEST` (blob, range requests) or `oci-manifest://REGISTRY/REPO@DIGEST`
//! (manifest, fetched whole with the manifest media types accepted).

use std::sync::Arc;

use dragonfly_registry::{RegistryClient, Repository};
use dragonfly_storage::{Blob, PieceStore, RangeSource};

use super::P2p;
use crate::layer::source::{ManifestSource, RegistrySource};
use crate::metrics::Metrics;

/// What kind of object a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciKind {
    /// A blob: config or layer.
    Blob,
    /// A manifest or index.
    Manifest,
}

impl OciKind {
    fn scheme(self) -> &'static str {
        match self {
            OciKind::Blob => "oci://",
            OciKind::Manifest => "oci-manifest://",
        }
    }
}

/// An object in a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciObject {
    /// Blob or manifest.
    pub kind: OciKind,
    /// Where its registry has it.
    pub repo: Repository,
    /// `sha256:<hex>`; the task ID.
    pub digest: String,
}

impl OciObject {
    /// The task's origin URL.
    pub fn url(&self) -> String {
        format!(
            "{}{}/{}@{}",
            self.kind.scheme(),
            self.repo.registry,
            self.repo.repository,
            self.digest
        )
    }

    /// Parses an origin URL (`oci://…` or `oci-manifest://…`).
    pub fn parse(url: &str) -> Result<OciObject, String> {
        let (kind, rest) = if let Some(r) = url.strip_prefix(OciKind::Blob.scheme()) {
            (OciKind::Blob, r)
        } else if let Some(r) = url.strip_prefix(OciKind::Manifest.scheme()) {
            (OciKind::Manifest, r)
        } else {
            return Err(format!(
                "task url {url:?} is neither oci:// nor oci-manifest://REGISTRY/REPO@DIGEST"
            ));
        };
        let (path, digest) = rest
            .rsplit_once('@')
            .ok_or_else(|| format!("task url {url:?} has no @DIGEST"))?;
        let (registry, repository) = path
            .split_once('/')
            .ok_or_else(|| format!("task url {url:?} has no repository"))?;
        if registry.is_empty() || repository.is_empty() || !digest.starts_with("sha256:") {
            return Err(format!(
                "task url {url:?} is not {}REGISTRY/REPO@sha256:...",
                kind.scheme()
            ));
        }
        Ok(OciObject {
            kind,
            repo: Repository {
                registry: registry.to_owned(),
                repository: repository.to_owned(),
            },
            digest: digest.to_owned(),
        })
    }

    /// The registry as this object's source.
    pub fn origin(&self, client: RegistryClient, metrics: Arc<Metrics>) -> OriginSource {
        match self.kind {
            OciKind::Blob => OriginSource::Blob(Arc::new(RegistrySource::new(
                client,
                self.repo.clone(),
                self.digest.clone(),
                metrics,
            ))),
            OciKind::Manifest => OriginSource::Manifest(Arc::new(ManifestSource::new(
                client,
                self.repo.clone(),
                self.digest.clone(),
                metrics,
            ))),
        }
    }
}

/// An object's origin, able to say how big the object is.
#[derive(Clone)]
pub enum OriginSource {
    /// Range requests for a blob.
    Blob(Arc<RegistrySource>),
    /// A manifest fetched whole.
    Manifest(Arc<ManifestSource>),
}

impl OriginSource {
    /// The object's size as its registry reports it.
    pub async fn size(&self, client: &RegistryClient, object: &OciObject) -> Result<u64, String> {
        match self {
            OriginSource::Blob(_) => client
                .blob_size(&object.repo, &object.digest)
                .await
                .map_err(|e| format!("cannot get the size of {}: {e}", object.digest)),
            OriginSource::Manifest(m) => m
                .bytes()
                .await
                .map(|b| b.len() as u64)
                .map_err(|e| e.message),
        }
    }

    fn source(&self) -> Arc<dyn RangeSource> {
        match self {
            OriginSource::Blob(b) => b.clone(),
            OriginSource::Manifest(m) => m.clone(),
        }
    }
}

/// Opens `object` in `store`, with the swarm's parents in front of the registry when P2P is
/// on. The size comes from `size` (a manifest descriptor or an earlier mount), else from the
/// store or the swarm (so a preheated object needs nothing from the registry), else from the
/// registry. `piece_length` is a preheat's request (0 = none).
#[allow(clippy::too_many_arguments)]
pub async fn open(
    store: &PieceStore,
    p2p: Option<&Arc<P2p>>,
    metrics: &Arc<Metrics>,
    client: &RegistryClient,
    object: &OciObject,
    size: Option<u64>,
    piece_length: u32,
) -> Result<Blob, String> {
    let origin = object.origin(client.clone(), metrics.clone());
    let known = super::known_task(store, p2p.map(|p| &**p), &object.digest).await;
    let size = match (size, known) {
        (Some(s), _) | (None, Some((s, _))) => s,
        (None, None) => origin.size(client, object).await?,
    };
    let piece_length = super::piece_length_given(store, known, &object.digest, piece_length);
    super::open_task(
        store,
        p2p.map(|p| &**p),
        metrics,
        origin.source(),
        &object.digest,
        object.url(),
        size,
        piece_length,
    )
    .map_err(|e| format!("cannot open {} in the cache: {e}", object.digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_urls_round_trip_and_bad_ones_are_refused() {
        for (url, kind) in [
            ("oci://127.0.0.1:5000/library/x@sha256:ab", OciKind::Blob),
            (
                "oci-manifest://127.0.0.1:5000/library/x@sha256:ab",
                OciKind::Manifest,
            ),
        ] {
            let o = OciObject::parse(url).unwrap();
            assert_eq!(
                (
                    o.kind,
                    o.repo.registry.as_str(),
                    o.repo.repository.as_str(),
                    o.digest.as_str()
                ),
                (kind, "127.0.0.1:5000", "library/x", "sha256:ab")
            );
            assert_eq!(o.url(), url);
        }
        for bad in [
            "http://x/y@sha256:a",
            "oci://x@sha256:a",
            "oci://x/y",
            "oci:///y@sha256:a",
            "oci://x/y@md5:a",
            "oci-manifests://x/y@sha256:a",
        ] {
            assert!(OciObject::parse(bad).is_err(), "{bad}");
        }
    }
}
