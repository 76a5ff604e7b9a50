//! The swarm: opening tasks ([`Swarm::open`]), the scheduler pool (announce, keepalive, which
//! scheduler serves a task), the source that puts parents in front of a task's origin, the
//! upload service other peers fetch pieces from, and triggered downloads.

pub mod dynconfig;
pub mod membership;
mod origin_pieces;
mod piece_order;
pub mod piece_server;
pub mod piece_wire;
pub mod ratelimit;
pub mod restored;
pub mod schedulers;
pub mod source;
pub mod swarm;
pub mod triggered;
pub mod upload;

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dragonfly_membership::client::{ClientConn, Dialer};
use dragonfly_membership::Role;
use dragonfly_proto::peer::peer_client::PeerClient;
use dragonfly_runtime::grpc::{endpoint, BadAddress, Timeouts};
use lru::LruCache;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use piece_wire::{PieceRequest, WireStatus};

pub use schedulers::SchedulerPool;
pub use source::PeerSource;
pub use swarm::{open_status, Swarm};

/// Largest gRPC message we accept or send (a piece plus framing).
pub const MAX_MESSAGE_BYTES: usize = 80 << 20;

/// HTTP/2 flow-control window for piece transfers: large enough that a whole piece is in
/// flight without waiting for window updates.
pub const WINDOW: u32 = 16 << 20;

/// Idle raw-TCP piece connections kept per parent.
const IDLE_PER_PARENT: usize = 16;
/// Longest a raw-TCP piece exchange may take.
const PIECE_TIMEOUT: Duration = Duration::from_secs(30);

/// Parents whose clients and idle connections are kept (the least recently used go first):
/// their addresses come from the network.
const MAX_PARENTS: usize = 512;

/// Lazily connected clients of parents' peer services, shared by all blobs: gRPC channels,
/// and pooled connections for the raw-TCP piece protocol, for the latest parents only.
pub struct ParentClients {
    clients: Mutex<LruCache<String, PeerClient<Channel>>>,
    idle: Mutex<LruCache<String, Vec<ClientConn>>>,
    dialer: Dialer,
}

/// Who may be a parent.
const PARENT_ROLES: &[Role] = &[Role::Seed, Role::Peer];

impl Default for ParentClients {
    fn default() -> ParentClients {
        ParentClients::new(Dialer::plain())
    }
}

impl ParentClients {
    /// Clients dialling parents through `dialer`.
    pub fn new(dialer: Dialer) -> ParentClients {
        let cap = NonZeroUsize::new(MAX_PARENTS).expect("not zero");
        ParentClients {
            clients: Mutex::new(LruCache::new(cap)),
            idle: Mutex::new(LruCache::new(cap)),
            dialer,
        }
    }
}

/// A piece a parent did not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceFetchError {
    /// The parent could not be reached (refused, reset, no route), as opposed to answering
    /// with an error or being slow.
    pub unreachable: bool,
    /// Its upload slots were all taken: try again shortly, it is not a fault.
    pub busy: bool,
    /// What happened.
    pub message: String,
}

fn parent_addr(ip: &str, port: u32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Where a parent's answers go as they arrive.
pub type Answers = mpsc::UnboundedSender<Result<Bytes, PieceFetchError>>;

/// Requests that will not be answered: `count` copies of `e` (a reader that went away does
/// not want them).
fn fail_rest(answers: &Answers, count: usize, e: PieceFetchError) {
    for _ in 0..count {
        let _ = answers.send(Err(e.clone()));
    }
}

/// A parent's answer to `req` from `key`: the piece, or why it did not send it.
fn answer(
    key: &str,
    req: &PieceRequest,
    status: WireStatus,
    payload: Bytes,
) -> Result<Bytes, PieceFetchError> {
    if status == WireStatus::Ok {
        return Ok(payload);
    }
    Err(PieceFetchError {
        unreachable: false,
        busy: status == WireStatus::Busy,
        message: format!(
            "piece {} from {key}: {status:?}: {}",
            req.number,
            String::from_utf8_lossy(&payload)
        ),
    })
}

impl ParentClients {
    /// Piece `req` from the parent at `ip:port` over the raw-TCP protocol, at most `max`
    /// bytes. A pooled connection the parent has since closed is retried once on a fresh one.
    pub async fn get_piece_tcp(
        &self,
        ip: &str,
        port: u32,
        req: &PieceRequest,
        max: usize,
    ) -> Result<Bytes, PieceFetchError> {
        let mut got = self
            .get_pieces_tcp(ip, port, std::slice::from_ref(req), max)
            .await;
        got.pop().expect("one answer per request")
    }

    /// Pieces `reqs` from the parent at `ip:port`, pipelined on one connection (see
    /// [`ParentClients::stream_pieces_tcp`]), once every answer is in.
    pub async fn get_pieces_tcp(
        &self,
        ip: &str,
        port: u32,
        reqs: &[PieceRequest],
        max: usize,
    ) -> Vec<Result<Bytes, PieceFetchError>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.stream_pieces_tcp(ip, port, reqs, max, &tx).await;
        drop(tx);
        let mut answers = Vec::with_capacity(reqs.len());
        while let Some(answer) = rx.recv().await {
            answers.push(answer);
        }
        answers
    }

    /// Pieces `reqs` from the parent at `ip:port`, pipelined on one connection: every request
    /// is sent at once and the parent answers them in order (so it sees them in order: a
    /// seed sees a run's first piece first). Each answer, at most `max` bytes, goes to
    /// `answers` as it arrives: exactly one per request, in order. A pooled connection the
    /// parent has since closed is retried once on a fresh one.
    pub async fn stream_pieces_tcp(
        &self,
        ip: &str,
        port: u32,
        reqs: &[PieceRequest],
        max: usize,
        answers: &Answers,
    ) {
        let key = parent_addr(ip, port);
        let pooled = self
            .idle
            .lock()
            .expect("idle lock")
            .get_mut(&key)
            .and_then(Vec::pop);
        if let Some(conn) = pooled {
            match self.exchange(&key, conn, reqs, max, answers).await {
                Ok(()) => return,
                // It answered, then failed: the rest fail with it.
                Err((done, e)) if done > 0 => return fail_rest(answers, reqs.len() - done, e),
                // Closed while idle: a fresh connection.
                Err(_) => {}
            }
        }
        let unreachable = |message: String| PieceFetchError {
            unreachable: true,
            busy: false,
            message,
        };
        let conn = match tokio::time::timeout(
            Duration::from_secs(3),
            self.dialer.connect(&key, PARENT_ROLES),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let e = unreachable(format!("cannot connect to {key}: {e}"));
                return fail_rest(answers, reqs.len(), e);
            }
            Err(_) => {
                let e = unreachable(format!("connecting to {key} timed out"));
                return fail_rest(answers, reqs.len(), e);
            }
        };
        if let Err((done, e)) = self.exchange(&key, conn, reqs, max, answers).await {
            fail_rest(answers, reqs.len() - done, e);
        }
    }

    /// `reqs` on `conn`, pipelined, each answer sent to `answers` as it arrives. `Err` means
    /// the connection failed after that many answers; a connection left in a clean state goes
    /// back to the pool.
    async fn exchange(
        &self,
        key: &str,
        mut conn: ClientConn,
        reqs: &[PieceRequest],
        max: usize,
        answers: &Answers,
    ) -> Result<(), (usize, PieceFetchError)> {
        let mut done = 0;
        let io = tokio::time::timeout(PIECE_TIMEOUT, async {
            piece_wire::write_requests(&mut conn, reqs).await?;
            for req in reqs {
                let (status, payload) = piece_wire::read_response(&mut conn, max).await?;
                // A reader that went away no longer wants the rest; reading them keeps the
                // connection clean for the pool.
                let _ = answers.send(answer(key, req, status, payload));
                done += 1;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        let number = reqs.get(done).map_or(0, |r| r.number);
        match io {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let unreachable = matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                );
                let message = format!("piece {number} from {key}: {e}");
                return Err((
                    done,
                    PieceFetchError {
                        unreachable,
                        busy: false,
                        message,
                    },
                ));
            }
            Err(_) => {
                let message = format!("piece {number} from {key} timed out");
                return Err((
                    done,
                    PieceFetchError {
                        unreachable: false,
                        busy: false,
                        message,
                    },
                ));
            }
        }
        let mut idle = self.idle.lock().expect("idle lock");
        let conns = idle.get_or_insert_mut(key.to_owned(), Vec::new);
        if conns.len() < IDLE_PER_PARENT {
            conns.push(conn);
        }
        Ok(())
    }

    /// The gRPC client for `ip:port`.
    pub fn get(&self, ip: &str, port: u32) -> Result<PeerClient<Channel>, BadAddress> {
        let key = parent_addr(ip, port);
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let endpoint = endpoint(&key, Timeouts::PIECES)?
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(WINDOW);
        let channel = self.dialer.channel(endpoint, PARENT_ROLES);
        let client = PeerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        clients.put(key, client.clone());
        Ok(client)
    }
}

/// The P2P engine's shared parts.
pub struct P2p {
    /// Schedulers.
    pub pool: Arc<SchedulerPool>,
    /// Parent clients.
    pub parents: Arc<ParentClients>,
    /// Parents fetched from at once.
    pub parallel: usize,
}
