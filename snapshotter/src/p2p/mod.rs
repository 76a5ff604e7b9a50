//! Piece exchange with other peers: the scheduler pool (announce, keepalive, which scheduler
//! serves a task), the upload service other peers fetch pieces from, and the source that puts
//! parents in front of the registry for every blob read.

pub mod download;
pub mod http_source;
pub mod ratelimit;
pub mod schedulers;
pub mod seed;
pub mod source;
pub mod upload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dragonfly_proto::peer::peer_client::PeerClient;
use tonic::transport::{Channel, Endpoint};

pub use schedulers::SchedulerPool;
pub use source::PeerSource;

/// Largest gRPC message we accept or send (a piece plus framing).
pub const MAX_MESSAGE_BYTES: usize = 80 << 20;

/// HTTP/2 flow-control window for piece transfers: large enough that a whole piece is in
/// flight without waiting for window updates.
pub const WINDOW: u32 = 16 << 20;

/// Lazily connected clients of parents' peer services, shared by all blobs.
#[derive(Default)]
pub struct ParentClients {
    clients: Mutex<HashMap<String, PeerClient<Channel>>>,
}

impl ParentClients {
    /// The client for `ip:port`.
    pub fn get(&self, ip: &str, port: u32) -> Result<PeerClient<Channel>, String> {
        let key = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{key}"))
            .map_err(|e| format!("bad parent address {key}: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .tcp_nodelay(true)
            .connect_lazy();
        let client = PeerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        clients.insert(key, client.clone());
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
