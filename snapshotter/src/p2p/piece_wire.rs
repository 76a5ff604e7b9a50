//! The raw-TCP piece protocol ("DFP1"): the bulk of the bytes between peers without HTTP/2
//! framing and flow control on top. It shares the peer service's port: a connection whose
//! first four bytes are the magic is ours, anything else is gRPC. A connection is reused;
//! its requests are answered one at a time, in order, so a client may pipeline several (a
//! seed then sees a run's pieces in the order the reader needs them).
//!
//! ```text
//! request:  "DFP1" | u16 task_id length | task_id | u32 piece number | u16 peer_id length | peer_id
//!           "DFP2" | the same | u8 flags (bit 0: fetch the piece from the origin if missing;
//!                                         bit 1: a u32 follows, the end of the run to fetch)
//! response: u8 status | u32 length | piece bytes (status OK) or a UTF-8 message (otherwise)
//! ```
//! Integers are big-endian. Hosts that speak it say so in their announcement
//! (`Host.tcp_pieces`), so a mixed fleet falls back to gRPC `GetPiece`; only hosts that
//! announce `demand_pieces` are sent "DFP2" (a plain request is always "DFP1").

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First bytes of a plain request.
pub const MAGIC: &[u8; 4] = b"DFP1";
/// First bytes of a request with flags.
pub const MAGIC_FLAGS: &[u8; 4] = b"DFP2";
/// Request flag: fetch the piece from the origin if it is not here.
const FLAG_FETCH: u8 = 1;
/// Request flag: a u32 follows, [`PieceRequest::fetch_until`].
const FLAG_RUN: u8 = 2;

/// Whether `first` bytes of a connection are one of ours.
pub fn is_magic(first: &[u8; 4]) -> bool {
    first == MAGIC || first == MAGIC_FLAGS
}
/// Longest task or peer ID accepted.
pub const MAX_ID: usize = 1024;

/// A request for one piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceRequest {
    /// Task (blob) ID.
    pub task_id: String,
    /// Piece number.
    pub number: u32,
    /// The asking peer.
    pub peer_id: String,
    /// Fetch the piece from the origin if it is not here (a seed's demand).
    pub fetch: bool,
    /// With `fetch`: the reader needs the pieces up to this one (exclusive) too, fetched in
    /// the same origin request. At most `number + 1` means this piece only.
    pub fetch_until: u32,
}

impl PieceRequest {
    /// Whether the request names a run beyond its own piece.
    fn has_run(&self) -> bool {
        self.fetch && self.fetch_until > self.number.saturating_add(1)
    }
}

/// Outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireStatus {
    /// The piece follows.
    Ok = 0,
    /// The task or piece is not here.
    NotFound = 1,
    /// No free upload slot: try another parent.
    Busy = 2,
    /// The request is malformed.
    BadRequest = 3,
    /// The parent failed to read the piece.
    Internal = 4,
}

impl WireStatus {
    fn from_u8(b: u8) -> Option<WireStatus> {
        Some(match b {
            0 => WireStatus::Ok,
            1 => WireStatus::NotFound,
            2 => WireStatus::Busy,
            3 => WireStatus::BadRequest,
            4 => WireStatus::Internal,
            _ => return None,
        })
    }
}

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m)
}

async fn read_id<R: AsyncRead + Unpin>(r: &mut R, what: &str) -> io::Result<String> {
    let len = r.read_u16().await? as usize;
    if len > MAX_ID {
        return Err(invalid(format!("{what} of {len} bytes is too long")));
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await?;
    String::from_utf8(buf).map_err(|_| invalid(format!("{what} is not UTF-8")))
}

fn put_id(out: &mut Vec<u8>, id: &str, what: &str) -> io::Result<()> {
    if id.len() > MAX_ID {
        return Err(invalid(format!("{what} of {} bytes is too long", id.len())));
    }
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out.extend_from_slice(id.as_bytes());
    Ok(())
}

fn encode_request(out: &mut Vec<u8>, req: &PieceRequest) -> io::Result<()> {
    out.extend_from_slice(if req.fetch { MAGIC_FLAGS } else { MAGIC });
    put_id(out, &req.task_id, "task id")?;
    out.extend_from_slice(&req.number.to_be_bytes());
    put_id(out, &req.peer_id, "peer id")?;
    if req.has_run() {
        out.push(FLAG_FETCH | FLAG_RUN);
        out.extend_from_slice(&req.fetch_until.to_be_bytes());
    } else if req.fetch {
        out.push(FLAG_FETCH);
    }
    Ok(())
}

/// Sends `req`.
pub async fn write_request<W: AsyncWrite + Unpin>(w: &mut W, req: &PieceRequest) -> io::Result<()> {
    write_requests(w, std::slice::from_ref(req)).await
}

/// Sends `reqs` back to back, in one write: the parent answers them in this order.
pub async fn write_requests<W: AsyncWrite + Unpin>(
    w: &mut W,
    reqs: &[PieceRequest],
) -> io::Result<()> {
    let mut out = Vec::new();
    for req in reqs {
        encode_request(&mut out, req)?;
    }
    w.write_all(&out).await?;
    w.flush().await
}

/// The next request on a connection; `None` when the peer closed it between requests.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<PieceRequest>> {
    let mut magic = [0u8; 4];
    match r.read_exact(&mut magic).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if !is_magic(&magic) {
        return Err(invalid(format!("bad request magic {magic:?}")));
    }
    let task_id = read_id(r, "task id").await?;
    let number = r.read_u32().await?;
    let peer_id = read_id(r, "peer id").await?;
    let flags = if &magic == MAGIC_FLAGS {
        r.read_u8().await?
    } else {
        0
    };
    if flags & !(FLAG_FETCH | FLAG_RUN) != 0 {
        return Err(invalid(format!("unknown request flags {flags:#x}")));
    }
    let fetch_until = if flags & FLAG_RUN != 0 {
        r.read_u32().await?
    } else {
        0
    };
    Ok(Some(PieceRequest {
        task_id,
        number,
        peer_id,
        fetch: flags & FLAG_FETCH != 0,
        fetch_until,
    }))
}

/// Sends a response: the piece, or a message for a non-OK status.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: WireStatus,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| invalid("payload too large".into()))?;
    let mut head = [0u8; 5];
    head[0] = status as u8;
    head[1..].copy_from_slice(&len.to_be_bytes());
    // Header and payload in one (vectored) write: no separate 5-byte segment per piece.
    let mut both = bytes::Buf::chain(&head[..], payload);
    w.write_all_buf(&mut both).await?;
    w.flush().await
}

/// Reads a response whose payload may be at most `max` bytes.
pub async fn read_response<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> io::Result<(WireStatus, Bytes)> {
    let status = r.read_u8().await?;
    let status =
        WireStatus::from_u8(status).ok_or_else(|| invalid(format!("bad status byte {status}")))?;
    let len = r.read_u32().await? as usize;
    if len > max {
        return Err(invalid(format!(
            "response of {len} bytes is longer than the {max} expected"
        )));
    }
    // Read into spare capacity: a piece is not zeroed first, then overwritten.
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        let want = len - buf.len();
        let mut rest = (&mut buf).limit(want);
        if r.read_buf(&mut rest).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok((status, buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_and_responses_round_trip_and_bad_input_is_refused() {
        let req = PieceRequest {
            task_id: "sha256:abc".into(),
            number: 7,
            peer_id: "me".into(),
            fetch: false,
            fetch_until: 0,
        };
        let demand = PieceRequest {
            fetch: true,
            ..req.clone()
        };
        let run = PieceRequest {
            fetch: true,
            fetch_until: 12,
            ..req.clone()
        };
        let mut buf = Vec::new();
        write_request(&mut buf, &req).await.unwrap();
        write_request(&mut buf, &demand).await.unwrap();
        write_request(&mut buf, &run).await.unwrap();
        assert_eq!(
            &buf[..4],
            MAGIC,
            "a plain request is what every peer speaks"
        );
        let mut r = &buf[..];
        assert_eq!(read_request(&mut r).await.unwrap(), Some(req.clone()));
        assert_eq!(read_request(&mut r).await.unwrap(), Some(demand.clone()));
        assert_eq!(read_request(&mut r).await.unwrap(), Some(run));
        assert_eq!(read_request(&mut r).await.unwrap(), None, "clean end");
        // Flags this build does not know are refused.
        let mut bad = Vec::new();
        write_request(&mut bad, &demand).await.unwrap();
        *bad.last_mut().unwrap() = 0x80;
        assert!(read_request(&mut &bad[..]).await.is_err());

        // Truncated, wrong magic, oversized ID.
        let mut r = &buf[..10];
        assert!(read_request(&mut r).await.is_err());
        let mut r = &b"PRI * HTTP/2.0"[..];
        assert!(read_request(&mut r).await.is_err());
        let mut long = MAGIC.to_vec();
        long.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(read_request(&mut &long[..]).await.is_err());
        let huge = PieceRequest {
            task_id: "x".repeat(MAX_ID + 1),
            ..req
        };
        assert!(write_request(&mut Vec::new(), &huge).await.is_err());

        let mut buf = Vec::new();
        write_response(&mut buf, WireStatus::Ok, b"piece")
            .await
            .unwrap();
        write_response(&mut buf, WireStatus::Busy, b"full")
            .await
            .unwrap();
        let mut r = &buf[..];
        let (s, d) = read_response(&mut r, 100).await.unwrap();
        assert_eq!((s, &d[..]), (WireStatus::Ok, &b"piece"[..]));
        let (s, d) = read_response(&mut r, 100).await.unwrap();
        assert_eq!((s, &d[..]), (WireStatus::Busy, &b"full"[..]));
        // Longer than allowed, unknown status.
        let mut buf = Vec::new();
        write_response(&mut buf, WireStatus::Ok, &[0; 64])
            .await
            .unwrap();
        assert!(read_response(&mut &buf[..], 10).await.is_err());
        buf[0] = 9;
        assert!(read_response(&mut &buf[..], 100).await.is_err());
    }

    /// A payload that arrives a few bytes at a time is put together exactly, the answer after
    /// it is untouched, and one cut short is an unexpected end, not a short piece.
    #[tokio::test]
    async fn responses_arriving_in_small_reads_are_whole_and_a_cut_one_is_refused() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        write_response(&mut wire, WireStatus::Ok, &payload)
            .await
            .unwrap();
        write_response(&mut wire, WireStatus::Ok, b"next")
            .await
            .unwrap();
        let (mut w, mut r) = tokio::io::duplex(7);
        let sent = wire.clone();
        tokio::spawn(async move { w.write_all(&sent).await.unwrap() });
        let (s, d) = read_response(&mut r, 8192).await.unwrap();
        assert_eq!((s, &d[..]), (WireStatus::Ok, &payload[..]));
        let (_, d) = read_response(&mut r, 8192).await.unwrap();
        assert_eq!(&d[..], b"next");

        let cut = &wire[..wire.len() / 2];
        let err = read_response(&mut &cut[..], 8192).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
