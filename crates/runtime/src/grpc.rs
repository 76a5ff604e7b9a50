//! gRPC clients: every tonic endpoint is built here, with one [`Timeouts`] struct, so a
//! control-plane call and a piece transfer differ only in the timeouts they are given.

use std::time::Duration;

use dragonfly_membership::client::Dialer;
use dragonfly_membership::Role;
use tonic::transport::Endpoint;

/// How long a connection attempt and a whole call may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting (TCP, HTTP/2 handshake).
    pub connect: Duration,
    /// One call, from request to the end of its answer.
    pub request: Duration,
}

impl Timeouts {
    /// Control-plane calls between components (announce, register, keepalive, find parents).
    pub const CONTROL: Timeouts = Timeouts {
        connect: Duration::from_secs(3),
        request: Duration::from_secs(10),
    };
    /// Piece transfers between peers.
    pub const PIECES: Timeouts = Timeouts {
        connect: Duration::from_secs(3),
        request: Duration::from_secs(30),
    };
}

/// An address that is not a valid gRPC endpoint.
#[derive(Debug, thiserror::Error)]
#[error("bad gRPC address {address:?} (host:port)")]
pub struct BadAddress {
    /// The address given.
    pub address: String,
    /// Why it does not parse.
    #[source]
    pub source: tonic::transport::Error,
}

/// A gRPC call to another component that did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The address does not parse.
    #[error(transparent)]
    BadAddress(#[from] BadAddress),
    /// Nothing answered at the address.
    #[error("cannot reach {who} at {address}: {source}")]
    Connect {
        /// What was called (`the manager`, `peer 10.0.0.2:4000`).
        who: String,
        /// Where.
        address: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// It answered with an error.
    #[error("{who} failed: {}", .source.message())]
    Status {
        /// What was called.
        who: String,
        /// Its answer.
        #[source]
        source: tonic::Status,
    },
}

impl CallError {
    /// The callee's status code, when it answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            CallError::Status { source, .. } => Some(source.code()),
            _ => None,
        }
    }
}

/// A connected channel to `address` (`who` names it in errors).
pub async fn connect(
    who: &str,
    address: &str,
    timeouts: Timeouts,
) -> Result<tonic::transport::Channel, CallError> {
    endpoint(address, timeouts)?
        .connect()
        .await
        .map_err(|source| CallError::Connect {
            who: who.to_owned(),
            address: address.to_owned(),
            source,
        })
}

/// A lazily connected channel to the member at `address` through `dialer` (TLS with our
/// credentials, or plain), whose server must have one of `roles`.
pub fn member_channel(
    address: &str,
    timeouts: Timeouts,
    dialer: &Dialer,
    roles: &'static [Role],
) -> Result<tonic::transport::Channel, BadAddress> {
    Ok(dialer.channel(endpoint(address, timeouts)?, roles))
}

/// Like [`connect`], to a member through `dialer` (see [`member_channel`]).
pub async fn connect_member(
    who: &str,
    address: &str,
    timeouts: Timeouts,
    dialer: &Dialer,
    roles: &'static [Role],
) -> Result<tonic::transport::Channel, CallError> {
    dialer
        .connect_channel(endpoint(address, timeouts)?, roles)
        .await
        .map_err(|source| CallError::Connect {
            who: who.to_owned(),
            address: address.to_owned(),
            source,
        })
}

/// The endpoint of `address` (`host:port`, or a full `http://host:port`) with `timeouts` and
/// TCP_NODELAY; connect it with `connect().await` or `connect_lazy()`.
pub fn endpoint(address: &str, timeouts: Timeouts) -> Result<Endpoint, BadAddress> {
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    Ok(Endpoint::from_shared(uri)
        .map_err(|source| BadAddress {
            address: address.to_owned(),
            source,
        })?
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.request)
        .tcp_nodelay(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_and_urls_are_accepted_and_garbage_is_not() {
        assert_eq!(
            endpoint("127.0.0.1:8002", Timeouts::CONTROL)
                .unwrap()
                .uri()
                .to_string(),
            "http://127.0.0.1:8002/"
        );
        assert!(endpoint("http://[::1]:65003", Timeouts::PIECES).is_ok());
        let e = endpoint("not a host", Timeouts::CONTROL).unwrap_err();
        assert!(e.to_string().contains("not a host"), "{e}");
    }
}
