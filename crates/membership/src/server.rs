//! The server end: accepting connections (TLS with a client certificate from the cluster CA,
//! or plain TCP when the server runs without credentials), learning who called from the
//! handshake, and the authorization check handlers make.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

use crate::{Credentials, Identity, MembershipError, Role};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection (put in every gRPC request's extensions).
#[derive(Debug, Clone)]
pub struct ConnPeer {
    /// The member its certificate names; `None` on a plain connection.
    pub identity: Option<Identity>,
    /// The addresses its certificate names (empty on a plain connection).
    pub cert_ips: Vec<std::net::IpAddr>,
    /// Whether the server runs with credentials (then calls need a member's certificate).
    pub tls: bool,
    /// Whether this connection itself is TLS: false for a plain-text client of a server with
    /// credentials, which is served only to be told `UNAUTHENTICATED`.
    pub encrypted: bool,
    /// Its address.
    pub remote: Option<SocketAddr>,
}

enum Io {
    Plain(TcpStream),
    /// rustls reads 4 KiB at a time; the buffer below it turns most of those into copies.
    Tls(Box<TlsStream<BufReader<TcpStream>>>),
}

/// Bytes read from the socket at once under TLS.
pub(crate) const TLS_READ_BUFFER: usize = 64 << 10;

/// An accepted connection: TLS or plain, with bytes read ahead (to tell protocols apart)
/// given back first.
pub struct Conn {
    io: Io,
    ahead: Vec<u8>,
    pos: usize,
    peer: ConnPeer,
}

/// Accepts connections for a server: with credentials, a TLS handshake that checks a client
/// certificate against the CA when one is presented (callers without one, and plain-text
/// callers, are let in only to get `UNAUTHENTICATED` from [`require`]); without, plain TCP.
#[derive(Clone)]
pub struct Acceptor {
    tls: Option<TlsAcceptor>,
}

impl Acceptor {
    /// Plain TCP (a server without credentials).
    pub fn plain() -> Acceptor {
        Acceptor { tls: None }
    }

    /// Mutual TLS with `creds`.
    pub fn tls(creds: &Credentials) -> Result<Acceptor, MembershipError> {
        Ok(Acceptor {
            tls: Some(TlsAcceptor::from(creds.server_config()?)),
        })
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Completes `stream`'s handshake (bounded by [`HANDSHAKE_TIMEOUT`]).
    pub async fn accept(&self, stream: TcpStream) -> io::Result<Conn> {
        let remote = stream.peer_addr().ok();
        let Some(tls) = &self.tls else {
            return Ok(Conn::new(Io::Plain(stream), None, false, remote));
        };
        if !starts_tls(&stream).await? {
            return Ok(Conn::new(Io::Plain(stream), None, true, remote));
        }
        let stream = BufReader::with_capacity(TLS_READ_BUFFER, stream);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        let identity = leaf.and_then(|c| Identity::from_cert_der(c).ok());
        let cert_ips = leaf
            .map(|c| crate::identity::cert_ips(c))
            .unwrap_or_default();
        let mut conn = Conn::new(Io::Tls(Box::new(tls)), identity, true, remote);
        conn.peer.cert_ips = cert_ips;
        conn.peer.encrypted = true;
        Ok(conn)
    }
}

/// Whether the client's first byte opens a TLS handshake record (0x16), waiting at most
/// [`HANDSHAKE_TIMEOUT`] for it; the byte stays in the socket.
async fn starts_tls(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client sent nothing"))??;
    Ok(n == 1 && first[0] == 0x16)
}

impl Conn {
    fn new(io: Io, identity: Option<Identity>, tls: bool, remote: Option<SocketAddr>) -> Conn {
        Conn {
            io,
            ahead: Vec::new(),
            pos: 0,
            peer: ConnPeer {
                identity,
                cert_ips: Vec::new(),
                tls,
                encrypted: false,
                remote,
            },
        }
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &ConnPeer {
        &self.peer
    }

    /// Reads ahead until `n` bytes (or the end) are buffered and returns them; they are
    /// read again by the next reader.
    pub async fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.ahead.len() < n {
            let mut buf = vec![0u8; n - self.ahead.len()];
            let got = match &mut self.io {
                Io::Plain(s) => s.read(&mut buf).await?,
                Io::Tls(s) => s.read(&mut buf).await?,
            };
            if got == 0 {
                break;
            }
            self.ahead.extend_from_slice(&buf[..got]);
        }
        Ok(&self.ahead[..self.ahead.len().min(n)])
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if me.pos < me.ahead.len() {
            let n = (me.ahead.len() - me.pos).min(buf.remaining());
            buf.put_slice(&me.ahead[me.pos..me.pos + n]);
            me.pos += n;
            return Poll::Ready(Ok(()));
        }
        match &mut me.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnPeer;

    fn connect_info(&self) -> ConnPeer {
        self.peer.clone()
    }
}

/// Most handshakes in progress at once on one listener.
const MAX_HANDSHAKES: usize = 256;

/// The accepted connections of `listener`, handshaken by `acceptor` on tasks of their own
/// (at most [`MAX_HANDSHAKES`] at once), for `serve_with_incoming`. Failed handshakes are
/// logged and dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: Acceptor,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!("too many TLS handshakes in progress; connection closed");
                continue;
            };
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                let conn = acceptor.accept(stream).await;
                drop(slot);
                match conn {
                    Ok(c) => {
                        let _ = tx.send(Ok(c)).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The caller of `req` if it may call `what`: on a TLS connection, a member with one of
/// `roles` (`Some(identity)`); on a plain connection (a server without credentials), anyone
/// (`None`). A request that did not come through an [`Acceptor`] is refused.
pub fn require<T>(
    req: &Request<T>,
    what: &str,
    roles: &[Role],
) -> Result<Option<Identity>, Status> {
    let unauthenticated = || {
        Status::unauthenticated(format!(
            "{what} needs a cluster member's certificate (mutual TLS with the manager's CA)"
        ))
    };
    let peer = req
        .extensions()
        .get::<ConnPeer>()
        .ok_or_else(unauthenticated)?;
    if !peer.tls {
        return Ok(None);
    }
    let id = peer.identity.as_ref().ok_or_else(unauthenticated)?;
    if !roles.contains(&id.role) {
        return Err(Status::permission_denied(format!(
            "{id} may not call {what}; only {}",
            roles
                .iter()
                .map(Role::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(Some(id.clone()))
}
