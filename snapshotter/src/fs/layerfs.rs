//! The read-only FUSE filesystem of one lazy layer.
//!
//! Metadata requests (lookup, getattr, readdir, readlink, xattrs, statfs) are answered from the
//! in-memory [`LayerIndex`] on the FUSE threads; they never touch disk or network. Reads are
//! handed to the async runtime, which gathers verified chunks and replies from there, so the
//! FUSE request loop never waits on a fetch. The layer is immutable: the kernel may cache
//! attributes, entries and pages for as long as it likes.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dragonfly_estargz::{LayerIndex, Node, NodeKind};
use sha2::{Digest, Sha256};

use super::chunks::ChunkReader;
use super::session::{Handler, Reply};
use super::wire::{self, op, Attr, Body, InHeader, Malformed, Ttl};
use crate::metrics::Metrics;

const BLOCK_SIZE: u32 = 4096;
/// Largest read we answer; the kernel asks for at most `max_pages` (1 MiB).
const MAX_READ: u32 = 16 << 20;

/// One mounted layer.
pub struct LayerFs {
    index: Arc<LayerIndex>,
    chunks: ChunkReader,
    runtime: tokio::runtime::Handle,
    ttl: Ttl,
    metrics: Arc<Metrics>,
}

impl LayerFs {
    /// A filesystem over `index`, reading file data through `chunks` on `runtime`.
    pub fn new(
        index: Arc<LayerIndex>,
        chunks: ChunkReader,
        runtime: tokio::runtime::Handle,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> LayerFs {
        LayerFs {
            index,
            chunks,
            runtime,
            ttl: ttl.into(),
            metrics,
        }
    }

    fn node(&self, ino: u64) -> Result<&Node, i32> {
        self.index.node(ino).ok_or(libc::ENOENT)
    }
}

fn type_bits(kind: NodeKind) -> u32 {
    match kind {
        NodeKind::Dir => libc::S_IFDIR,
        NodeKind::File => libc::S_IFREG,
        NodeKind::Symlink => libc::S_IFLNK,
        NodeKind::CharDevice => libc::S_IFCHR,
        NodeKind::BlockDevice => libc::S_IFBLK,
        NodeKind::Fifo => libc::S_IFIFO,
    }
}

/// The attributes the kernel sees for a node: a pure function of the TOC, so a successor
/// process answers byte for byte what the kernel has cached.
pub fn attr(ino: u64, n: &Node) -> Attr {
    let size = match n.kind {
        NodeKind::Symlink => n.link_target.as_ref().map_or(0, |t| t.len() as u64),
        _ => n.size,
    };
    let (mtime, mtime_nsec) = match n.mtime.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    };
    Attr {
        ino,
        size,
        blocks: size.div_ceil(512),
        mtime,
        mtime_nsec,
        mode: type_bits(n.kind) | (n.mode & 0o7777),
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: nix::sys::stat::makedev(u64::from(n.dev_major), u64::from(n.dev_minor)) as u32,
        blksize: BLOCK_SIZE,
    }
}

/// A digest of everything the kernel may have cached about the layer's tree: node ids,
/// names, parents and attributes. A successor adopts a connection only if its index of the
/// same TOC has the same layout.
pub fn layout_digest(index: &LayerIndex) -> String {
    let mut h = Sha256::new();
    for ino in 1..=index.len() as u64 {
        let Some(n) = index.node(ino) else { break };
        let a = attr(ino, n);
        for v in [
            a.ino,
            a.size,
            a.mtime as u64,
            u64::from(a.mode),
            u64::from(a.nlink),
        ] {
            h.update(v.to_le_bytes());
        }
        for v in [a.uid, a.gid, a.rdev, a.mtime_nsec] {
            h.update(v.to_le_bytes());
        }
        h.update(index.parent(ino).unwrap_or(0).to_le_bytes());
        for (name, child) in index.children(ino) {
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update(child.to_le_bytes());
        }
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Answers a size query (`size == 0`) or the value itself.
fn xattr_reply(reply: Reply, size: u32, value: &[u8]) {
    if size == 0 {
        reply.data(&wire::xattr_size_out(value.len() as u32));
    } else if value.len() <= size as usize {
        reply.data(value);
    } else {
        reply.error(libc::ERANGE);
    }
}

/// `fuse_read_in`: (offset, size); also the body of READDIR and READDIRPLUS.
fn read_args(body: &[u8]) -> Result<(u64, u32), Malformed> {
    let mut b = Body::new(body);
    b.skip(8, "read fh")?;
    let offset = b.u64("read offset")?;
    let size = b.u32("read size")?;
    Ok((offset, size))
}

impl Handler for LayerFs {
    fn handle(&self, h: &InHeader, body: &[u8], reply: Reply) {
        if let Err(e) = self.dispatch(h.opcode, h.nodeid, body, reply) {
            // The reply went with the failed parse and was dropped: the kernel got EIO.
            tracing::error!(opcode = h.opcode, error = %e, "malformed FUSE request");
        }
    }

    fn resent(&self) {
        self.metrics.fuse_resent.inc();
        // Rare (only right after a restart) and worth seeing.
        tracing::info!("answering a request the previous daemon had read but not answered (resent by the kernel)");
    }
}

impl LayerFs {
    fn dispatch(&self, opcode: u32, ino: u64, body: &[u8], reply: Reply) -> Result<(), Malformed> {
        let mut b = Body::new(body);
        match opcode {
            op::LOOKUP => self.lookup(ino, b.name()?, reply),
            op::GETATTR => self.getattr(ino, reply),
            op::READLINK => self.readlink(ino, reply),
            op::OPEN => self.open(ino, b.u32("open flags")?, reply),
            op::READ => {
                let (off, size) = read_args(body)?;
                self.read(ino, off, size, reply)
            }
            op::OPENDIR => self.opendir(ino, reply),
            op::READDIR | op::READDIRPLUS => {
                let (off, size) = read_args(body)?;
                self.readdir(ino, off, size, opcode == op::READDIRPLUS, reply)
            }
            op::STATFS => self.statfs(reply),
            op::GETXATTR => {
                let size = b.u32("getxattr size")?;
                b.skip(4, "getxattr padding")?;
                self.getxattr(ino, b.name()?, size, reply)
            }
            op::LISTXATTR => self.listxattr(ino, b.u32("listxattr size")?, reply),
            // Permission checks are done by the kernel (default_permissions).
            op::ACCESS => match self.node(ino) {
                Ok(_) => reply.data(&[]),
                Err(e) => reply.error(e),
            },
            // Handles hold nothing: nothing to flush or free.
            op::FLUSH | op::RELEASE | op::RELEASEDIR | op::DESTROY => reply.data(&[]),
            o if op::WRITES.contains(&o) => reply.error(libc::EROFS),
            _ => reply.error(libc::ENOSYS),
        }
        Ok(())
    }

    fn lookup(&self, parent: u64, name: &OsStr, reply: Reply) {
        match self.index.lookup(parent, name) {
            Some(ino) => match self.index.node(ino) {
                Some(n) => {
                    let mut o = Vec::with_capacity(128);
                    wire::entry_out(&mut o, &attr(ino, n), self.ttl);
                    reply.data(&o)
                }
                None => reply.error(libc::ENOENT),
            },
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&self, ino: u64, reply: Reply) {
        match self.node(ino) {
            Ok(n) => reply.data(&wire::attr_out(&attr(ino, n), self.ttl)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, ino: u64, reply: Reply) {
        match self.node(ino) {
            Ok(n) => match &n.link_target {
                Some(t) if n.kind == NodeKind::Symlink => reply.data(t.as_encoded_bytes()),
                _ => reply.error(libc::EINVAL),
            },
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, ino: u64, flags: u32, reply: Reply) {
        let write = flags as i32 & (libc::O_WRONLY | libc::O_RDWR) != 0;
        match self.node(ino) {
            Ok(_) if write => reply.error(libc::EROFS),
            Ok(n) if n.kind == NodeKind::Dir => reply.error(libc::EISDIR),
            // Immutable content: let the kernel keep its page cache across opens.
            Ok(_) => reply.data(&wire::open_out(wire::FOPEN_KEEP_CACHE)),
            Err(e) => reply.error(e),
        }
    }

    fn read(&self, ino: u64, offset: u64, size: u32, reply: Reply) {
        let node = match self.node(ino) {
            Ok(n) if n.kind == NodeKind::File => n,
            Ok(_) => return reply.error(libc::EINVAL),
            Err(e) => return reply.error(e),
        };
        if size > MAX_READ {
            return reply.error(libc::EINVAL);
        }
        let end = offset.saturating_add(u64::from(size)).min(node.size);
        if offset >= end {
            return reply.data(&[]);
        }
        let chunks = self.index.chunks_for(ino, offset..end).to_vec();
        let reader = self.chunks.clone();
        let metrics = self.metrics.clone();
        self.runtime.spawn(async move {
            let started = Instant::now();
            let parts = futures::future::join_all(chunks.iter().map(|c| reader.read(c))).await;
            match assemble(ino, offset..end, &chunks, parts) {
                Ok(out) => {
                    metrics.fuse_reads.with_label_values(&["ok"]).inc();
                    metrics.fuse_read_bytes.inc_by(out.len() as u64);
                    metrics
                        .fuse_read_seconds
                        .with_label_values(&["chunks"])
                        .observe(started.elapsed().as_secs_f64());
                    reply.data(&out);
                }
                Err(()) => {
                    metrics.fuse_reads.with_label_values(&["error"]).inc();
                    reply.error(libc::EIO);
                }
            }
        });
    }

    fn opendir(&self, ino: u64, reply: Reply) {
        match self.node(ino) {
            Ok(n) if n.kind == NodeKind::Dir => reply.data(&wire::open_out(wire::FOPEN_KEEP_CACHE)),
            Ok(_) => reply.error(libc::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    /// Entries from `offset` on; an entry's offset is its position + 1 (".", "..", then the
    /// children in name order), so a successor continues any listing where it stopped.
    fn readdir(&self, ino: u64, offset: u64, size: u32, plus: bool, reply: Reply) {
        if let Err(e) = self.node(ino) {
            return reply.error(e);
        }
        let parent = self.index.parent(ino).unwrap_or(ino);
        let dots = [(OsStr::new("."), ino), (OsStr::new(".."), parent)];
        let entries = dots.into_iter().chain(self.index.children(ino));
        let max = size as usize;
        let mut out = Vec::with_capacity(max.min(64 * 1024));
        for (i, (name, child)) in entries.enumerate().skip(offset as usize) {
            let Some(n) = self.index.node(child) else {
                continue;
            };
            let next = (i + 1) as u64;
            let fits = if plus {
                wire::push_direntplus(&mut out, max, (&attr(child, n), self.ttl), next, name)
            } else {
                let typ = type_bits(n.kind) >> 12;
                wire::push_dirent(&mut out, max, child, next, typ, name)
            };
            if !fits {
                break;
            }
        }
        reply.data(&out);
    }

    fn statfs(&self, reply: Reply) {
        let stats = self.index.stats();
        let s = wire::StatFs {
            blocks: stats.total_file_bytes.div_ceil(u64::from(BLOCK_SIZE)),
            files: stats.nodes,
            bsize: BLOCK_SIZE,
            namelen: 255,
        };
        reply.data(&s.encode());
    }

    fn getxattr(&self, ino: u64, name: &OsStr, size: u32, reply: Reply) {
        match self.node(ino) {
            Ok(n) => match n.xattrs.get(name) {
                Some(v) => xattr_reply(reply, size, v),
                None => reply.error(libc::ENODATA),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, ino: u64, size: u32, reply: Reply) {
        match self.node(ino) {
            Ok(n) => {
                let mut list = Vec::new();
                for name in n.xattrs.keys() {
                    list.extend_from_slice(name.as_encoded_bytes());
                    list.push(0);
                }
                xattr_reply(reply, size, &list);
            }
            Err(e) => reply.error(e),
        }
    }
}

/// The bytes of `range` of file `ino` cut from its fetched chunks; `Err` (logged) when a
/// chunk failed or does not cover what the TOC says.
fn assemble(
    ino: u64,
    range: std::ops::Range<u64>,
    chunks: &[dragonfly_estargz::Chunk],
    parts: Vec<Result<Bytes, super::chunks::ChunkError>>,
) -> Result<BytesMut, ()> {
    let (offset, end) = (range.start, range.end);
    let mut out = BytesMut::with_capacity((end - offset) as usize);
    for (chunk, part) in chunks.iter().zip(parts) {
        let data = part.map_err(|e| tracing::warn!(ino, offset, error = %e, "read failed: EIO"))?;
        let lo = offset.max(chunk.file_offset) - chunk.file_offset;
        let hi = end.min(chunk.file_offset + chunk.len) - chunk.file_offset;
        if hi as usize > data.len() || lo > hi {
            tracing::error!(ino, "chunk shorter than the TOC says: EIO");
            return Err(());
        }
        out.extend_from_slice(&data[lo as usize..hi as usize]);
    }
    if out.len() as u64 != end - offset {
        tracing::error!(ino, offset, "chunks do not cover the read: EIO");
        return Err(());
    }
    Ok(out)
}
