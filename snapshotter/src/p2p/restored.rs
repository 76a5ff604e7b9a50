//! Blobs this daemon held before it restarted: each gets its place in the swarm back. A blob
//! loaded from disk that no request has opened yet is given a P2P source whose origin is not
//! known (the store keeps no URLs or credentials), so the scheduler hears at the first
//! announcement which of its pieces this host holds, other peers can fetch them, and a
//! `GetTask` finds them. The first request that names the blob hands over its origin
//! (see [`Swarm::open_task`]).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use dragonfly_proto::scheduler as pb;
use dragonfly_storage::{Priority, RangeSource, SourceError};
use futures::future::{BoxFuture, FutureExt};

use super::Swarm;

/// The origin of a blob loaded from disk, until a request names it: every fetch fails,
/// saying what brings the origin back.
struct UnknownOrigin {
    id: String,
}

impl RangeSource for UnknownOrigin {
    fn fetch(
        &self,
        range: Range<u64>,
        _priority: Priority,
    ) -> BoxFuture<'static, Result<Bytes, SourceError>> {
        let message = format!(
            "bytes {}..{} of {} are not here and no parent has them; its origin is not known \
             since this daemon restarted: pull the image or download the file again, which \
             names it",
            range.start, range.end, self.id
        );
        async move { Err(SourceError::new(message, false)) }.boxed()
    }

    fn origin_known(&self) -> bool {
        false
    }
}

/// Gives every stored blob that holds pieces and has no source a P2P source with an unknown
/// origin; they register with their schedulers at this host's first announcement. Returns
/// how many it offered.
pub fn offer_restored(swarm: &Swarm) -> usize {
    let Some(p2p) = swarm.p2p() else {
        return 0;
    };
    let mut offered = 0;
    for blob in swarm.store().without_source() {
        let id = blob.digest().to_owned();
        let task = pb::Task {
            id: id.clone(),
            content_length: blob.size(),
            piece_length: blob.piece_length(),
            url: String::new(),
            digest: blob.content_digest().unwrap_or_default(),
            origin_headers: Default::default(),
        };
        let origin = Arc::new(UnknownOrigin { id: id.clone() });
        let opened = swarm
            .store()
            .open_blob(&id, blob.size(), blob.piece_length(), || {
                swarm.peer_source(p2p, task, origin)
            });
        match opened {
            Ok(_) => offered += 1,
            Err(e) => {
                tracing::warn!(blob = %id, error = %e, "cannot offer a stored blob to the swarm")
            }
        }
    }
    if offered > 0 {
        tracing::info!(
            blobs = offered,
            "blobs held before the restart are offered to the swarm again"
        );
    }
    offered
}
