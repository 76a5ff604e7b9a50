//! The peer port: accepts connections, hands those that start with the raw-TCP piece
//! protocol's magic to the piece loop and everything else (gRPC: GetPiece, TriggerDownload, StatTask, DeleteTask)
//! to tonic. Each connection is sorted on its own task, so a silent client never holds up
//! the accept loop. Connections are capped (`p2p.max_connections`; those over the cap are
//! closed at once) and timed: first bytes, idle piece connections, gRPC keepalive and
//! request deadlines.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use dragonfly_membership::server::{Acceptor, Conn, ConnPeer};
use dragonfly_membership::Role;
use dragonfly_proto::peer::peer_server::PeerServer;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

use super::piece_wire::{self, WireStatus};
use super::upload::{PeerService, UploadError};

/// How long a new connection may take to send its first bytes.
const FIRST_BYTES: Duration = Duration::from_secs(10);
/// How long a piece connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(120);
/// Longest a gRPC request may take (a demand waits for the origin up to 30 s).
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// gRPC streams at once on one connection.
const STREAMS_PER_CONNECTION: u32 = 256;

/// A connection holding one of the port's connection slots until it closes.
pub struct Counted {
    stream: Conn,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for Counted {
    type ConnectInfo = ConnPeer;

    fn connect_info(&self) -> ConnPeer {
        self.stream.connect_info()
    }
}

/// Serves the peer port on `listener` with at most `max_connections` open, each accepted by
/// `acceptor` (mutual TLS, or plain): raw-TCP piece connections here, the rest to the gRPC
/// `Peer` service (pieces, triggers, task stats). Both run as background tasks.
pub fn serve_peer_port(
    listener: TcpListener,
    service: Arc<PeerService>,
    max_connections: usize,
    acceptor: Acceptor,
) {
    let (grpc_tx, grpc_rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(serve(listener, service.clone(), grpc_tx, slots, acceptor));
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .initial_stream_window_size(super::WINDOW)
            .initial_connection_window_size(super::WINDOW)
            .tcp_nodelay(true)
            .timeout(REQUEST_DEADLINE)
            .max_concurrent_streams(STREAMS_PER_CONNECTION)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(
                PeerServer::from_arc(service)
                    .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(super::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(grpc_rx))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "peer service failed; other peers cannot fetch pieces from this host");
        }
    });
}

/// Accepts on `listener` until it fails, each connection taking one of `slots` (none left:
/// closed at once); gRPC connections go to `grpc`.
pub async fn serve(
    listener: TcpListener,
    service: Arc<PeerService>,
    grpc: mpsc::Sender<std::io::Result<Counted>>,
    slots: Arc<Semaphore>,
    acceptor: Acceptor,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "cannot accept a peer connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(peer = ?stream.peer_addr().ok(), "peer port at its connection cap; connection closed");
            service.connection_refused();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (service, grpc, acceptor) = (service.clone(), grpc.clone(), acceptor.clone());
        tokio::spawn(async move {
            let mut conn = match acceptor.accept(stream).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "peer connection refused at the handshake");
                    return;
                }
            };
            let first = match tokio::time::timeout(FIRST_BYTES, conn.peek(4)).await {
                Ok(Ok(b)) => b.to_vec(),
                _ => return,
            };
            if <[u8; 4]>::try_from(&first[..]).is_ok_and(|m| piece_wire::is_magic(&m)) {
                if may_read_pieces(conn.peer()) {
                    serve_pieces(conn, &service).await;
                }
            } else if !first.is_empty() {
                let _ = grpc
                    .send(Ok(Counted {
                        stream: conn,
                        _slot: slot,
                    }))
                    .await;
            }
        });
    }
}

/// Whether the raw-TCP piece protocol serves this connection: on TLS, only peers and seed
/// peers read pieces.
fn may_read_pieces(peer: &ConnPeer) -> bool {
    let ok = !peer.tls
        || peer
            .identity
            .as_ref()
            .is_some_and(|id| matches!(id.role, Role::Peer | Role::Seed));
    if !ok {
        tracing::warn!(identity = ?peer.identity, remote = ?peer.remote, "piece request from a member that is not a peer; connection closed");
    }
    ok
}

/// Answers piece requests on one connection until the client closes it.
async fn serve_pieces(stream: Conn, service: &PeerService) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    loop {
        let req = match tokio::time::timeout(IDLE, piece_wire::read_request(&mut r)).await {
            Ok(Ok(Some(req))) => req,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "malformed piece request; closing the connection");
                let _ = piece_wire::write_response(
                    &mut w,
                    WireStatus::BadRequest,
                    e.to_string().as_bytes(),
                )
                .await;
                return;
            }
        };
        let demand = req.fetch.then_some(req.fetch_until);
        let written = match service.piece(&req.task_id, req.number, demand).await {
            Ok(data) => piece_wire::write_response(&mut w, WireStatus::Ok, &data).await,
            Err(e) => {
                let (status, message) = match e {
                    UploadError::NotFound(m) => (WireStatus::NotFound, m),
                    UploadError::BadRequest(m) => (WireStatus::BadRequest, m),
                    UploadError::Busy => (
                        WireStatus::Busy,
                        "all upload slots are busy; try another parent".into(),
                    ),
                    UploadError::Internal(m) => (WireStatus::Internal, m),
                };
                piece_wire::write_response(&mut w, status, message.as_bytes()).await
            }
        };
        if written.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::P2pConfig;
    use crate::metrics::Metrics;
    use crate::p2p::piece_wire::PieceRequest;
    use crate::p2p::{ParentClients, SchedulerPool};
    use dragonfly_proto::peer::{DeleteTaskRequest, GetPieceRequest};
    use dragonfly_storage::testing::MemSource;
    use dragonfly_storage::{PieceStore, Priority, StoreConfig};
    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A peer port on loopback serving `store` with `slots` uploads and at most
    /// `max_connections` connections (its scheduler unreachable); the port.
    async fn serve_store(
        store: PieceStore,
        slots: u32,
        metrics: Arc<Metrics>,
        downloads: Option<Arc<crate::p2p::triggered::TriggeredDownloads>>,
        max_connections: usize,
    ) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = P2pConfig {
            schedulers: vec!["127.0.0.1:1".into()],
            advertise_ip: Some("127.0.0.1".parse().unwrap()),
            ..P2pConfig::default()
        };
        let seed = downloads.is_some();
        let membership = crate::p2p::membership::Membership::plain();
        let pool = SchedulerPool::new(&config, port, seed, &membership)
            .await
            .unwrap();
        let service = PeerService::new(store, slots, pool, metrics, downloads, 0);
        serve_peer_port(
            listener,
            Arc::new(service),
            max_connections,
            Acceptor::plain(),
        );
        port
    }

    /// A store in `dir` holding one complete blob of `len` bytes (`i % modulus`).
    async fn stored(
        dir: &std::path::Path,
        len: u32,
        modulus: u32,
    ) -> (PieceStore, Vec<u8>, String, dragonfly_storage::Blob) {
        let store = PieceStore::open(dir, StoreConfig::default()).await.unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % modulus) as u8).collect();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        let blob = store
            .blob(
                &digest,
                data.len() as u64,
                Arc::new(MemSource::new(data.clone())),
            )
            .unwrap();
        blob.fetch_all(Priority::OnDemand).await.unwrap();
        (store, data, digest, blob)
    }

    #[tokio::test]
    async fn one_port_serves_raw_tcp_pieces_and_grpc_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let (store, data, digest, _blob) = stored(dir.path(), 600_000, 251).await;

        let port = serve_store(store, 4, Metrics::new(), None, 1024).await;

        let parents = ParentClients::default();
        let req = |number: u32, task: &str| PieceRequest {
            task_id: task.into(),
            number,
            peer_id: "test".into(),
            fetch: false,
            fetch_until: 0,
        };
        // Raw TCP: the last (short) piece, twice over the pooled connection.
        for _ in 0..2 {
            let got = parents
                .get_piece_tcp("127.0.0.1", u32::from(port), &req(2, &digest), 1 << 20)
                .await
                .unwrap();
            assert_eq!(&got[..], &data[2 * 262_144..]);
        }
        let e = parents
            .get_piece_tcp(
                "127.0.0.1",
                u32::from(port),
                &req(0, "sha256:nope"),
                1 << 20,
            )
            .await
            .unwrap_err();
        assert!(!e.unreachable && e.message.contains("NotFound"), "{e:?}");
        let e = parents
            .get_piece_tcp("127.0.0.1", u32::from(port), &req(9, &digest), 1 << 20)
            .await
            .unwrap_err();
        assert!(e.message.contains("BadRequest"), "{e:?}");
        // gRPC on the same port.
        let mut c = parents.get("127.0.0.1", u32::from(port)).unwrap();
        let r = c
            .get_piece(GetPieceRequest {
                task_id: digest.clone(),
                number: 0,
                peer_id: "test".into(),
                fetch: false,
                fetch_until: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&r.data[..], &data[..262_144]);
        // Garbage after the magic gets an error answer and a closed connection; the server
        // keeps serving.
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"DFP1\xff\xffjunk").await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer[0], WireStatus::BadRequest as u8);
        // A connection that sends nothing useful and closes does not hurt either.
        drop(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        let got = parents
            .get_piece_tcp("127.0.0.1", u32::from(port), &req(1, &digest), 1 << 20)
            .await
            .unwrap();
        assert_eq!(&got[..], &data[262_144..2 * 262_144]);
        // Nobody listening: unreachable.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = closed.local_addr().unwrap().port();
        drop(closed);
        let e = parents
            .get_piece_tcp("127.0.0.1", u32::from(dead), &req(0, &digest), 1 << 20)
            .await
            .unwrap_err();
        assert!(e.unreachable, "{e:?}");
    }

    /// `DeleteTask` over the peer port: a blob a lazy mount reads stays (and the answer says
    /// so), an unused one leaves the disk, a task held nowhere is not "held".
    #[tokio::test]
    async fn delete_task_spares_a_mounted_blob_and_removes_an_unused_one() {
        let dir = tempfile::tempdir().unwrap();
        let (store, data, digest, blob) = stored(dir.path(), 300_000, 13).await;
        let mounted = blob.pin_mounted();
        let port = serve_store(store.clone(), 4, Metrics::new(), None, 64).await;
        let mut c = ParentClients::default()
            .get("127.0.0.1", u32::from(port))
            .unwrap();
        let delete = |id: &str| DeleteTaskRequest {
            task_id: id.to_owned(),
        };
        let kept = c.delete_task(delete(&digest)).await.unwrap().into_inner();
        assert!(kept.held && !kept.deleted, "{kept:?}");
        assert!(kept.reason.contains("lazy mount"), "{kept:?}");
        drop((mounted, blob));
        let gone = c.delete_task(delete(&digest)).await.unwrap().into_inner();
        assert!(gone.held && gone.deleted, "{gone:?}");
        assert_eq!(gone.freed_bytes, data.len() as u64);
        assert!(store.get(&digest).is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("sha256"))
                .unwrap()
                .count(),
            0
        );
        let again = c.delete_task(delete(&digest)).await.unwrap().into_inner();
        assert!(!again.held && !again.deleted, "{again:?}");
        let e = c.delete_task(delete("../../etc")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }

    /// Connections over the cap are closed as they arrive; a freed slot serves again.
    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = PieceStore::open(dir.path(), StoreConfig::default())
            .await
            .unwrap();
        let metrics = Metrics::new();
        let port = serve_store(store, 4, metrics.clone(), None, 2).await;
        // Two silent connections take both slots (they wait for their first bytes).
        let held: Vec<TcpStream> =
            futures::future::join_all((0..2).map(|_| TcpStream::connect(("127.0.0.1", port))))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let refused = |metrics: &Metrics| {
            metrics
                .p2p_uploads
                .with_label_values(&["connection_refused"])
                .get()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut third = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("the third connection is closed at once, not left waiting");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        while refused(&metrics) < 1 {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(held);
        // The freed slots serve a real request again.
        let parents = ParentClients::default();
        let req = PieceRequest {
            task_id: "sha256:nope".into(),
            number: 0,
            peer_id: "test".into(),
            fetch: false,
            fetch_until: 0,
        };
        let mut answered = false;
        for _ in 0..100 {
            match parents
                .get_piece_tcp("127.0.0.1", u32::from(port), &req, 1 << 20)
                .await
            {
                Err(e) if e.message.contains("NotFound") => {
                    answered = true;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        assert!(answered, "the port did not serve after slots were freed");
    }

    /// A seed-like peer port over a 1,000,000-byte blob with 64 KiB pieces, none present, whose
    /// origin answers after 200 ms, triggered here if `triggered`: (port, origin, data, digest).
    async fn demand_peer(
        dir: &std::path::Path,
        triggered: bool,
    ) -> (u16, Arc<MemSource>, Vec<u8>, String) {
        demand_peer_with(dir, triggered, |data| {
            MemSource::slow(data, std::time::Duration::from_millis(200))
        })
        .await
    }

    /// Like [`demand_peer`], with the origin `origin(data)`.
    async fn demand_peer_with(
        dir: &std::path::Path,
        triggered: bool,
        origin: impl FnOnce(Vec<u8>) -> Arc<MemSource>,
    ) -> (u16, Arc<MemSource>, Vec<u8>, String) {
        let config = StoreConfig {
            piece_length: 64 << 10,
            ..StoreConfig::default()
        };
        let store = PieceStore::open(dir, config).await.unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let origin = origin(data.clone());
        let digest = origin.digest();
        store
            .blob(&digest, data.len() as u64, Arc::new(origin.clone()))
            .unwrap();
        let metrics = Metrics::new();
        let origins = dragonfly_task::origin::Origins::new(
            crate::config::RegistryConfig::default(),
            metrics.origins.clone(),
        )
        .unwrap();
        let swarm = crate::p2p::Swarm::new(store.clone(), None, origins, metrics.clone());
        let downloads = crate::p2p::triggered::TriggeredDownloads::new(swarm);
        if triggered {
            downloads.mark_running(&digest);
        }
        let port = serve_store(store, 8, metrics, Some(downloads), 1024).await;
        (port, origin, data, digest)
    }

    /// A triggered seed whose origin hands out one `chunk` of bytes per permit of the gate.
    async fn gated_seed(
        dir: &std::path::Path,
        chunk: usize,
    ) -> (Arc<Semaphore>, (u16, Arc<MemSource>, Vec<u8>, String)) {
        let gate = Arc::new(Semaphore::new(0));
        let g = gate.clone();
        let seed =
            demand_peer_with(dir, true, move |data| MemSource::chunked(data, chunk, g)).await;
        (gate, seed)
    }

    /// Asks `port` for piece `number` (64 KiB pieces) of `digest`.
    async fn ask(
        parents: &ParentClients,
        port: u16,
        digest: &str,
        number: u32,
        fetch: bool,
        fetch_until: u32,
    ) -> Result<bytes::Bytes, crate::p2p::PieceFetchError> {
        let req = PieceRequest {
            task_id: digest.into(),
            number,
            peer_id: "child".into(),
            fetch,
            fetch_until,
        };
        parents
            .get_piece_tcp("127.0.0.1", u32::from(port), &req, 64 << 10)
            .await
    }

    /// A seed asked on demand for a piece it lacks fetches it from its origin once, however
    /// many peers ask at the same time; a plain request for it is still NOT_FOUND.
    #[tokio::test]
    async fn demand_for_a_missing_piece_makes_one_origin_fetch_for_every_asker() {
        let dir = tempfile::tempdir().unwrap();
        let (port, origin, data, digest) = demand_peer(dir.path(), true).await;
        let parents = Arc::new(ParentClients::default());
        let plain = ask(&parents, port, &digest, 7, false, 0).await.unwrap_err();
        assert!(plain.message.contains("NotFound"), "{plain:?}");
        let asks: Vec<_> = (0..3)
            .map(|_| {
                let (parents, digest) = (parents.clone(), digest.clone());
                tokio::spawn(async move { ask(&parents, port, &digest, 7, true, 0).await })
            })
            .collect();
        let piece = &data[7 * (64 << 10)..8 * (64 << 10)];
        for a in asks {
            assert_eq!(&a.await.unwrap().unwrap()[..], piece);
        }
        assert_eq!(
            origin.requests(),
            vec![7 * (64 << 10)..8 * (64 << 10)],
            "one origin fetch of exactly the piece, for three askers"
        );
    }

    /// A demand for a blob this peer holds but was not triggered for is a plain read: a peer
    /// cannot make another fetch from an origin.
    #[tokio::test]
    async fn a_demand_for_a_task_not_triggered_here_does_not_reach_the_origin() {
        let dir = tempfile::tempdir().unwrap();
        let (port, origin, _, digest) = demand_peer(dir.path(), false).await;
        let e = ask(&ParentClients::default(), port, &digest, 7, true, 9)
            .await
            .unwrap_err();
        assert!(e.message.contains("NotFound"), "{e:?}");
        assert!(origin.requests().is_empty());
    }

    /// The pieces of one read asked of a seed at once, each naming the run's end, cost the
    /// seed one origin request for the whole run; a run past the blob's end is cut at the end.
    #[tokio::test]
    async fn a_demand_run_is_one_origin_request() {
        let dir = tempfile::tempdir().unwrap();
        let (port, origin, data, digest) = demand_peer(dir.path(), true).await;
        let parents = Arc::new(ParentClients::default());
        let pl = 64 << 10;
        let asks: Vec<_> = (3..7u32)
            .map(|n| {
                let (parents, digest) = (parents.clone(), digest.clone());
                tokio::spawn(async move { (n, ask(&parents, port, &digest, n, true, 7).await) })
            })
            .collect();
        for a in asks {
            let (n, got) = a.await.unwrap();
            let n = n as usize;
            assert_eq!(&got.unwrap()[..], &data[n * pl..(n + 1) * pl]);
        }
        assert_eq!(origin.requests(), vec![3 * pl as u64..7 * pl as u64]);
        // Piece 14 is the last (short) one; a run "until 1000" stops at the blob's end.
        let got = ask(&parents, port, &digest, 13, true, 1000).await.unwrap();
        assert_eq!(&got[..], &data[13 * pl..14 * pl]);
        assert_eq!(
            origin.requests().last(),
            Some(&(13 * pl as u64..data.len() as u64))
        );
    }

    /// Requests pipelined on one connection are answered in order, an error answer (a piece
    /// past the end) does not stop the rest, and a run asked that way is one origin request
    /// however the seed's tasks are scheduled: it sees the run's first piece first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_requests_are_answered_in_order_and_a_run_is_one_origin_request() {
        let dir = tempfile::tempdir().unwrap();
        let (port, origin, data, digest) = demand_peer(dir.path(), true).await;
        let parents = ParentClients::default();
        let pl = 64 << 10;
        let req = |number: u32, fetch_until: u32| PieceRequest {
            task_id: digest.clone(),
            number,
            peer_id: "child".into(),
            fetch: true,
            fetch_until,
        };
        let reqs: Vec<_> = (3..9).map(|n| req(n, 9)).collect();
        let got = parents
            .get_pieces_tcp("127.0.0.1", u32::from(port), &reqs, pl)
            .await;
        assert_eq!(got.len(), 6);
        for (n, piece) in (3..9).zip(got) {
            assert_eq!(
                &piece.unwrap()[..],
                &data[n * pl..(n + 1) * pl],
                "piece {n}"
            );
        }
        assert_eq!(origin.requests(), vec![3 * pl as u64..9 * pl as u64]);

        let reqs = [req(9, 10), req(99, 100), req(10, 11)];
        let got = parents
            .get_pieces_tcp("127.0.0.1", u32::from(port), &reqs, pl)
            .await;
        assert_eq!(&got[0].as_ref().unwrap()[..], &data[9 * pl..10 * pl]);
        let past = got[1].as_ref().unwrap_err();
        assert!(
            past.message.contains("BadRequest") && !past.unreachable,
            "{past:?}"
        );
        assert_eq!(&got[2].as_ref().unwrap()[..], &data[10 * pl..11 * pl]);
    }

    /// A seed relays a run piece by piece: the answer for the run's first piece goes out as
    /// soon as that piece came from the origin, while the origin still holds back the rest;
    /// the next pieces, asked on the same connection, follow from the same origin request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_demand_is_answered_when_its_piece_arrives_not_the_whole_run() {
        let dir = tempfile::tempdir().unwrap();
        let pl = 64 << 10;
        let (gate, (port, origin, data, digest)) = gated_seed(dir.path(), pl).await;
        let parents = ParentClients::default();
        gate.add_permits(1);
        let first = tokio::time::timeout(
            Duration::from_secs(10),
            ask(&parents, port, &digest, 3, true, 9),
        )
        .await
        .expect("the first piece must not wait for the run's other five")
        .unwrap();
        assert_eq!(&first[..], &data[3 * pl..4 * pl]);
        gate.add_permits(5);
        let req = |number: u32| PieceRequest {
            task_id: digest.clone(),
            number,
            peer_id: "child".into(),
            fetch: true,
            fetch_until: 9,
        };
        let reqs: Vec<_> = (4..9).map(req).collect();
        let got = parents
            .get_pieces_tcp("127.0.0.1", u32::from(port), &reqs, pl)
            .await;
        for (n, piece) in (4..9).zip(got) {
            assert_eq!(
                &piece.unwrap()[..],
                &data[n * pl..(n + 1) * pl],
                "piece {n}"
            );
        }
        assert_eq!(origin.requests(), vec![3 * pl as u64..9 * pl as u64]);
    }

    /// The node's side of the relay: a run asked of the seed on one connection hands each
    /// answer on as it arrives, so the run's first piece reaches the reader while the origin
    /// still holds back the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pipelined_run_reaches_the_asker_piece_by_piece() {
        let dir = tempfile::tempdir().unwrap();
        let pl = 64 << 10;
        let (gate, (port, origin, data, digest)) = gated_seed(dir.path(), pl).await;
        let reqs: Vec<_> = (3..9)
            .map(|number| PieceRequest {
                task_id: digest.clone(),
                number,
                peer_id: "child".into(),
                fetch: true,
                fetch_until: 9,
            })
            .collect();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let asking = tokio::spawn(async move {
            let parents = ParentClients::default();
            parents
                .stream_pieces_tcp("127.0.0.1", u32::from(port), &reqs, pl, &tx)
                .await;
        });
        gate.add_permits(1);
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the run's first piece must not wait for its other five")
            .unwrap();
        assert_eq!(&first.unwrap()[..], &data[3 * pl..4 * pl]);
        gate.add_permits(5);
        for n in 4..9 {
            let piece = rx.recv().await.unwrap().unwrap();
            assert_eq!(&piece[..], &data[n * pl..(n + 1) * pl], "piece {n}");
        }
        asking.await.unwrap();
        assert!(rx.recv().await.is_none(), "one answer per request");
        assert_eq!(origin.requests(), vec![3 * pl as u64..9 * pl as u64]);
    }
}
