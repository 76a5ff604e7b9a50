//! Opening a task: the one way a blob enters the piece store with a source. Layer mounts, the
//! image API, triggered downloads and `dfctl get` all call [`Swarm::open`].
//!
//! One rule fills what the caller does not know: the size comes from the caller (a layer label,
//! a manifest descriptor, a preheat), else the store, else the swarm (the task's scheduler),
//! else the origin; the piece length is the stored blob's, else the caller's (a preheat's
//! `pieceLength`), else the swarm's (so this peer can exchange pieces with it), else the
//! store's default. A blob's source — the swarm's parents in front of its origin when P2P is
//! on, else the origin — is attached when the blob first needs one and replaced only by an
//! explicit refresh (a request that brings its own credentials or signed URL), or by the first
//! request that names the origin of a blob offered to the swarm after a restart.

use std::sync::Arc;

use dragonfly_storage::{Blob, PieceStore, RangeSource};
use dragonfly_task::origin::{Origin, Origins};
use dragonfly_task::{OpenError, TaskId, TaskOpener, TaskSpec};
use futures::future::{BoxFuture, FutureExt};

use super::source::{PeerSource, SharedPeerSource};
use super::P2p;
use crate::metrics::Metrics;
use dragonfly_proto::scheduler as pb;

/// How a task that cannot be opened is answered over gRPC: a bad origin (credentials) is the
/// request's fault, an origin that cannot say the size is unavailable, a store that refuses
/// is ours.
pub fn open_status(e: &OpenError) -> tonic::Status {
    match e {
        OpenError::Origin { .. } => tonic::Status::invalid_argument(e.to_string()),
        OpenError::Size { .. } => tonic::Status::unavailable(e.to_string()),
        OpenError::Store { .. } => tonic::Status::internal(e.to_string()),
    }
}

/// The piece store, the P2P engine (when configured) and the origins.
pub struct Swarm {
    store: PieceStore,
    p2p: Option<Arc<P2p>>,
    origins: Origins,
    metrics: Arc<Metrics>,
}

impl Swarm {
    /// Tasks go into `store`, through `p2p` when configured, from `origins` otherwise.
    pub fn new(
        store: PieceStore,
        p2p: Option<Arc<P2p>>,
        origins: Origins,
        metrics: Arc<Metrics>,
    ) -> Arc<Swarm> {
        Arc::new(Swarm {
            store,
            p2p,
            origins,
            metrics,
        })
    }

    /// The piece store.
    pub fn store(&self) -> &PieceStore {
        &self.store
    }

    /// The origins (the registry client for manifests by tag, say).
    pub fn origins(&self) -> &Origins {
        &self.origins
    }

    /// The P2P engine, when configured.
    pub fn p2p(&self) -> Option<&Arc<P2p>> {
        self.p2p.as_ref()
    }

    /// The blob of `spec`, with its source attached (see the module doc for the rules).
    pub async fn open_task(&self, spec: TaskSpec) -> Result<Blob, OpenError> {
        let origin = self
            .origins
            .for_url(&spec.url, &spec.access)
            .map_err(|source| OpenError::Origin {
                id: spec.id.clone(),
                source,
            })?;
        let (size, piece_length) = self.geometry(&spec, &origin).await?;
        let name = spec.id.to_string();
        let existed = self.store.get(&name).is_some();
        let blob = self
            .store
            .open_blob(&name, size, piece_length, || {
                self.source_for(&spec, origin.source(), size, piece_length)
            })
            .map_err(|source| OpenError::Store {
                id: spec.id.clone(),
                source,
            })?;
        if let Some(d) = &spec.digest {
            blob.expect_digest(d).map_err(|source| OpenError::Store {
                id: spec.id.clone(),
                source,
            })?;
        }
        // A blob offered to the swarm after a restart learns its origin from the first
        // request that names it.
        if existed && (spec.refresh || blob.origin_unknown()) {
            blob.refresh_origin(origin.source());
        }
        Ok(blob)
    }

    /// Size and piece length of the task (label, store, swarm, origin).
    async fn geometry(&self, spec: &TaskSpec, origin: &Origin) -> Result<(u64, u32), OpenError> {
        if let Some(b) = self.store.get(&spec.id.to_string()) {
            return Ok((spec.size.unwrap_or(b.size()), b.piece_length()));
        }
        let swarm = match (spec.size, spec.piece_length, &self.p2p) {
            (Some(_), Some(_), _) | (_, _, None) => None,
            (_, _, Some(p2p)) => p2p
                .pool
                .stat_task(&spec.id.to_string())
                .await
                .filter(|(_, pl)| *pl != 0),
        };
        let size = match spec.size.or(swarm.map(|(s, _)| s)) {
            Some(s) => s,
            None => origin.size().await.map_err(|source| OpenError::Size {
                id: spec.id.clone(),
                source,
            })?,
        };
        let piece_length = spec
            .piece_length
            .or(swarm.map(|(_, pl)| pl))
            .unwrap_or_else(|| self.store.piece_length_for(&spec.id.to_string(), spec.lazy));
        Ok((size, piece_length))
    }

    /// The swarm's parents in front of `origin` when P2P is on, else `origin`.
    fn source_for(
        &self,
        spec: &TaskSpec,
        origin: Arc<dyn RangeSource>,
        size: u64,
        piece_length: u32,
    ) -> Arc<dyn RangeSource> {
        let Some(p2p) = &self.p2p else {
            return origin;
        };
        let id = spec.id.to_string();
        let task = pb::Task {
            id: id.clone(),
            content_length: size,
            piece_length,
            url: spec.url.to_string(),
            // Known for a blob (its ID), and for a file when the request gave it.
            digest: match &spec.id {
                TaskId::Oci(_) => id,
                TaskId::File(_) => spec.digest.clone().unwrap_or_default(),
            },
            origin_headers: Default::default(),
        };
        self.peer_source(p2p, task, origin)
    }

    /// `task`'s parents in front of `origin`.
    pub(super) fn peer_source(
        &self,
        p2p: &P2p,
        task: pb::Task,
        origin: Arc<dyn RangeSource>,
    ) -> Arc<dyn RangeSource> {
        Arc::new(SharedPeerSource(PeerSource::new(
            p2p,
            self.store.clone(),
            self.metrics.clone(),
            origin,
            task,
        )))
    }
}

impl TaskOpener for Swarm {
    fn open(&self, spec: TaskSpec) -> BoxFuture<'_, Result<Blob, OpenError>> {
        self.open_task(spec).boxed()
    }
}
