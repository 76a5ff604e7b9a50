//! Opening a task: the one way a blob enters the piece store with a source. Layer mounts, the
//! image API, triggered downloads and `dfctl get` all call [`Swarm::open`].
//!
//! One rule fills what the caller does not know: the size comes from the caller (a layer label,
//! a manifest descriptor, a preheat), else the store, else the swarm (the task's scheduler),
//! else the origin; the piece length is the stored blob's, else the caller's (a preheat's
//! `pieceLength`), else the swarm's (so this peer can exchange pieces with it), else the
//! store's default. A blob's source — the swarm's parents in front of its origin when P2P is
//! on, else the origin — is attached when the blob first needs one and replaced only by an
//! explicit refresh (a request that brings its own credentials or signed URL).

use std::sync::Arc;

use dragonfly_storage::{Blob, PieceStore, RangeSource, StoreError};
use dragonfly_task::origin::{Access, Origin, OriginError, Origins};
use dragonfly_task::{OciObject, TaskId, TaskUrl};

use super::source::{PeerSource, SharedPeerSource};
use super::P2p;
use crate::metrics::Metrics;
use dragonfly_proto::scheduler as pb;

/// What to open.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The task.
    pub id: TaskId,
    /// Where it comes from when no peer has it.
    pub url: TaskUrl,
    /// Its size, if the caller knows it.
    pub size: Option<u64>,
    /// The piece length the caller asks for (a preheat's), if any.
    pub piece_length: Option<u32>,
    /// What the request adds to the origin's settings (headers, credentials).
    pub access: Access,
    /// Whether an existing blob takes this request's origin (its own credentials or URL).
    pub refresh: bool,
}

impl TaskSpec {
    /// A blob (config, layer) of known or unknown size, with the daemon's registry settings.
    pub fn blob(object: OciObject, size: Option<u64>) -> TaskSpec {
        TaskSpec::of_object(
            TaskId::Oci(object.digest.clone()),
            TaskUrl::OciBlob(object),
            size,
        )
    }

    /// A manifest or index, like [`TaskSpec::blob`].
    pub fn manifest(object: OciObject, size: Option<u64>) -> TaskSpec {
        TaskSpec::of_object(
            TaskId::Oci(object.digest.clone()),
            TaskUrl::OciManifest(object),
            size,
        )
    }

    fn of_object(id: TaskId, url: TaskUrl, size: Option<u64>) -> TaskSpec {
        TaskSpec {
            id,
            url,
            size,
            piece_length: None,
            access: Access::default(),
            refresh: false,
        }
    }
}

/// A task that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// Its origin cannot be used.
    #[error("the origin of {id}: {source}")]
    Origin {
        /// The task.
        id: TaskId,
        /// Why.
        #[source]
        source: OriginError,
    },
    /// Nobody knows its size and the origin cannot say.
    #[error("cannot get the size of {id}: {source}")]
    Size {
        /// The task.
        id: TaskId,
        /// Why.
        #[source]
        source: OriginError,
    },
    /// The piece store refused it.
    #[error("cannot open {id} in the cache: {source}")]
    Store {
        /// The task.
        id: TaskId,
        /// Why.
        #[source]
        source: StoreError,
    },
}

impl SwarmError {
    /// The gRPC status for a local API caller or a peer: a bad origin (credentials) is the
    /// request's fault, an origin that cannot say the size is unavailable, a store that
    /// refuses is ours.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            SwarmError::Origin { .. } => tonic::Status::invalid_argument(self.to_string()),
            SwarmError::Size { .. } => tonic::Status::unavailable(self.to_string()),
            SwarmError::Store { .. } => tonic::Status::internal(self.to_string()),
        }
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SwarmError::Origin { source, .. } | SwarmError::Size { source, .. } => {
                source.is_retryable()
            }
            SwarmError::Store { source, .. } => source.is_retryable(),
        }
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
    pub async fn open(&self, spec: TaskSpec) -> Result<Blob, SwarmError> {
        let origin = self
            .origins
            .for_url(&spec.url, &spec.access)
            .map_err(|source| SwarmError::Origin {
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
            .map_err(|source| SwarmError::Store {
                id: spec.id.clone(),
                source,
            })?;
        if existed && spec.refresh {
            blob.refresh_origin(origin.source());
        }
        Ok(blob)
    }

    /// Size and piece length of the task (label, store, swarm, origin).
    async fn geometry(&self, spec: &TaskSpec, origin: &Origin) -> Result<(u64, u32), SwarmError> {
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
            None => origin.size().await.map_err(|source| SwarmError::Size {
                id: spec.id.clone(),
                source,
            })?,
        };
        let piece_length = spec
            .piece_length
            .or(swarm.map(|(_, pl)| pl))
            .unwrap_or_else(|| self.store.piece_length_of(&spec.id.to_string()));
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
            digest: id,
            origin_headers: Default::default(),
        };
        Arc::new(SharedPeerSource(PeerSource::new(
            p2p,
            self.store.clone(),
            self.metrics.clone(),
            origin,
            task,
        )))
    }
}
