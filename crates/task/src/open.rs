//! Opening a task, as the layers above the swarm see it: a [`TaskSpec`] says what is known of
//! the task, a [`TaskOpener`] (the daemon's swarm) returns its blob in the piece store with a
//! source attached. Layer mounts and the local API depend on this, not on the P2P engine.

use dragonfly_storage::{Blob, StoreError};
use futures::future::BoxFuture;

use crate::origin::{Access, OriginError};
use crate::url::OciObject;
use crate::{TaskId, TaskUrl};

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
    /// The blob will be read in small ranges (a lazy layer): when neither the caller, the
    /// store nor the swarm has a piece length for it, it gets the store's lazy one.
    pub lazy: bool,
    /// What the request adds to the origin's settings (headers, credentials).
    pub access: Access,
    /// Whether an existing blob takes this request's origin (its own credentials or URL).
    pub refresh: bool,
    /// What a file's content must hash to (`sha256:<hex>`), when the request says.
    pub digest: Option<String>,
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
            lazy: false,
            access: Access::default(),
            refresh: false,
            digest: None,
        }
    }
}

/// A task that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
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

impl OpenError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            OpenError::Origin { source, .. } | OpenError::Size { source, .. } => {
                source.is_retryable()
            }
            OpenError::Store { source, .. } => source.is_retryable(),
        }
    }
}

/// Opens tasks (the daemon's swarm).
pub trait TaskOpener: Send + Sync + 'static {
    /// The blob of `spec`, with its source attached.
    fn open(&self, spec: TaskSpec) -> BoxFuture<'_, Result<Blob, OpenError>>;
}
