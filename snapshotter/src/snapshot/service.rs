//! containerd's snapshots gRPC service (`containerd.services.snapshots.v1.Snapshots`) over a
//! [`Snapshotter`]: request/response conversion only, no snapshot logic.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use dragonfly_proto::snapshots::snapshots_server::Snapshots;
use dragonfly_proto::snapshots::{
    self as pb, CleanupRequest, CommitSnapshotRequest, ListSnapshotsRequest, ListSnapshotsResponse,
    MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest,
    UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::metastore::Kind;
use super::snapshotter::{Info, Snapshotter};
use crate::metrics::Metrics;

/// Snapshots in one `List` response message.
const LIST_BATCH: usize = 100;

/// The gRPC face of the snapshotter.
pub struct SnapshotService {
    sn: Arc<Snapshotter>,
    metrics: Arc<Metrics>,
}

impl SnapshotService {
    /// Wraps a snapshotter.
    pub fn new(sn: Arc<Snapshotter>, metrics: Arc<Metrics>) -> Self {
        SnapshotService { sn, metrics }
    }

    fn observe<T>(&self, op: &str, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => "ok".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.metrics
            .snapshot_ops
            .with_label_values(&[op, &code])
            .inc();
    }
}

fn labels(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn timestamp(ns: i128) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000) as i64,
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

fn to_pb(info: Info) -> pb::Info {
    let kind = match info.kind {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    };
    pb::Info {
        name: info.name,
        parent: info.parent,
        kind: kind as i32,
        created_at: Some(timestamp(info.created_ns)),
        updated_at: Some(timestamp(info.updated_ns)),
        labels: info.labels.into_iter().collect(),
    }
}

/// The gRPC header containerd names a request's namespace in.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// containerd's namespace when a request names none.
const DEFAULT_NAMESPACE: &str = "default";

/// The namespace a key containerd's metadata layer made names: it keys backend snapshots
/// `<namespace>/<n>/<name>` (proxy snapshotters get no namespace header).
fn key_namespace(key: &str) -> Option<String> {
    let (ns, rest) = key.split_once('/')?;
    let (n, _) = rest.split_once('/')?;
    (!ns.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then(|| ns.to_owned())
}

#[tonic::async_trait]
impl Snapshots for SnapshotService {
    async fn prepare(
        &self,
        req: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let header = req
            .metadata()
            .get(NAMESPACE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let r = req.into_inner();
        let namespace = header
            .or_else(|| key_namespace(&r.key))
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        tracing::debug!(%namespace, key = %r.key, parent = %r.parent, labels = ?r.labels, "prepare");
        let res = self
            .sn
            .prepare(&namespace, &r.key, &r.parent, labels(r.labels))
            .await
            .map(|mounts| Response::new(PrepareSnapshotResponse { mounts }))
            .map_err(Status::from);
        self.observe("prepare", &res);
        res
    }

    async fn view(
        &self,
        req: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let res = self
            .sn
            .view(&r.key, &r.parent, labels(r.labels))
            .await
            .map(|mounts| Response::new(ViewSnapshotResponse { mounts }))
            .map_err(Status::from);
        self.observe("view", &res);
        res
    }

    async fn mounts(
        &self,
        req: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let r = req.into_inner();
        let res = self
            .sn
            .mounts(&r.key)
            .await
            .map(|mounts| Response::new(MountsResponse { mounts }))
            .map_err(Status::from);
        self.observe("mounts", &res);
        res
    }

    async fn commit(&self, req: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let res = self
            .sn
            .commit(&r.name, &r.key, labels(r.labels))
            .await
            .map(Response::new)
            .map_err(Status::from);
        self.observe("commit", &res);
        res
    }

    async fn remove(&self, req: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let res = self
            .sn
            .remove(&r.key)
            .await
            .map(Response::new)
            .map_err(Status::from);
        self.observe("remove", &res);
        res
    }

    async fn stat(
        &self,
        req: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let r = req.into_inner();
        let res = self
            .sn
            .stat(&r.key)
            .await
            .map(|i| {
                Response::new(StatSnapshotResponse {
                    info: Some(to_pb(i)),
                })
            })
            .map_err(Status::from);
        self.observe("stat", &res);
        res
    }

    async fn update(
        &self,
        req: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update request has no snapshot info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let res = self
            .sn
            .update(&info.name, labels(info.labels), paths)
            .await
            .map(|i| {
                Response::new(UpdateSnapshotResponse {
                    info: Some(to_pb(i)),
                })
            })
            .map_err(Status::from);
        self.observe("update", &res);
        res
    }

    type ListStream =
        Pin<Box<dyn Stream<Item = Result<ListSnapshotsResponse, Status>> + Send + 'static>>;

    async fn list(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = req.into_inner();
        let res = self.sn.list(&r.filters).await.map_err(Status::from);
        self.observe("list", &res);
        let infos: Vec<pb::Info> = res?.into_iter().map(to_pb).collect();
        let batches: Vec<Result<ListSnapshotsResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| Ok(ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(&self, req: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let r = req.into_inner();
        let res = self
            .sn
            .usage(&r.key)
            .await
            .map(|u| {
                Response::new(UsageResponse {
                    size: u.size,
                    inodes: u.inodes,
                })
            })
            .map_err(Status::from);
        self.observe("usage", &res);
        res
    }

    async fn cleanup(&self, _req: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        let res = self
            .sn
            .cleanup()
            .await
            .map(|n| {
                tracing::info!(
                    removed = n,
                    "cleanup removed unreferenced snapshot directories"
                );
                Response::new(())
            })
            .map_err(Status::from);
        self.observe("cleanup", &res);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::key_namespace;

    #[test]
    fn the_namespace_is_the_first_part_of_a_metadata_key() {
        let k = "k8s.io/17/extract-611496908-WTaH sha256:e918";
        assert_eq!(key_namespace(k).as_deref(), Some("k8s.io"));
        assert_eq!(key_namespace("plain-key").as_deref(), None);
        assert_eq!(key_namespace("a/b/c").as_deref(), None);
        assert_eq!(key_namespace("/1/x").as_deref(), None);
    }
}
