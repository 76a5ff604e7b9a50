//! The client end: dialling a member (TLS with our credentials, checking that the server's
//! certificate is from the cluster CA, for the address dialled, and names one of the roles we
//! expect there), or plain TCP when we run without credentials; and tonic channels over it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::{Credentials, Identity, MembershipError, Role};

/// Dials members.
#[derive(Clone)]
pub struct Dialer {
    tls: Option<TlsConnector>,
}

/// A connection to a member.
pub enum ClientConn {
    /// In the clear.
    Plain(TcpStream),
    /// Over mutual TLS, with the server's identity checked (reads buffered below TLS).
    Tls(Box<TlsStream<BufReader<TcpStream>>>),
}

fn denied(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

impl Dialer {
    /// Plain TCP (no credentials).
    pub fn plain() -> Dialer {
        Dialer { tls: None }
    }

    /// Mutual TLS with `creds`.
    pub fn tls(creds: &Credentials) -> Result<Dialer, MembershipError> {
        Ok(Dialer {
            tls: Some(TlsConnector::from(creds.client_config()?)),
        })
    }

    /// TLS that checks no server certificate (see [`crate::pinned::PinnedCa`]): only for
    /// fetching the CA, whose answer is authenticated otherwise.
    pub(crate) fn unchecked() -> Result<Dialer, MembershipError> {
        Dialer::to_manager(None, None)
    }

    /// TLS trusting only the CA whose fingerprint is `fingerprint` (found in the server's
    /// chain), presenting `current` when given: how a member reaches the manager before it
    /// has the CA (see [`crate::join`]).
    pub fn pinned(
        fingerprint: &str,
        current: Option<&Credentials>,
    ) -> Result<Dialer, MembershipError> {
        Dialer::to_manager(Some(fingerprint), current)
    }

    fn to_manager(
        pin: Option<&str>,
        current: Option<&Credentials>,
    ) -> Result<Dialer, MembershipError> {
        let provider = crate::credentials::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| MembershipError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::pinned::PinnedCa::new(
                pin, provider,
            )));
        let config = match current {
            Some(c) => builder.with_client_cert_resolver(c.client_cert()),
            None => builder.with_no_client_auth(),
        };
        Ok(Dialer {
            tls: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects to `host:port` (TCP connect bounded by the caller); over TLS the server must
    /// be a member with one of `roles`.
    pub async fn connect(&self, addr: &str, roles: &[Role]) -> io::Result<ClientConn> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(ClientConn::Plain(tcp));
        };
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tcp = BufReader::with_capacity(crate::server::TLS_READ_BUFFER, tcp);
        let stream = tls.connect(name, tcp).await?;
        let who = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| denied(format!("{addr} presented no certificate")))
            .and_then(|c| Identity::from_cert_der(c).map_err(|e| denied(format!("{addr}: {e}"))))?;
        if !roles.contains(&who.role) {
            return Err(denied(format!(
                "{addr} is {who}, not a {}",
                roles
                    .iter()
                    .map(Role::as_str)
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        Ok(ClientConn::Tls(Box::new(stream)))
    }

    /// A lazily connected channel to `endpoint` (built for `http://host:port`, with its
    /// timeouts) through this dialer, to a server with one of `roles`.
    pub fn channel(&self, endpoint: Endpoint, roles: &'static [Role]) -> Channel {
        match self.tls {
            None => endpoint.connect_lazy(),
            Some(_) => endpoint.connect_with_connector_lazy(self.connector(roles)),
        }
    }

    /// Like [`Dialer::channel`], connected now.
    pub async fn connect_channel(
        &self,
        endpoint: Endpoint,
        roles: &'static [Role],
    ) -> Result<Channel, tonic::transport::Error> {
        match self.tls {
            None => endpoint.connect().await,
            Some(_) => endpoint.connect_with_connector(self.connector(roles)).await,
        }
    }

    /// The connector tonic dials through.
    fn connector(
        &self,
        roles: &'static [Role],
    ) -> impl tower::Service<
        http::Uri,
        Response = TokioIo<ClientConn>,
        Error = io::Error,
        Future = impl std::future::Future<Output = io::Result<TokioIo<ClientConn>>> + Send,
    > + Clone
           + Send
           + 'static {
        let dialer = self.clone();
        tower::service_fn(move |uri: http::Uri| {
            let dialer = dialer.clone();
            async move {
                let addr = uri
                    .authority()
                    .map(|a| a.to_string())
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
                dialer.connect(&addr, roles).await.map(TokioIo::new)
            }
        })
    }
}

/// `e` and every error below it, joined by ": " (tonic's own message is only the top).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

impl AsyncRead for ClientConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientConn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientConn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientConn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientConn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientConn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
