//! The read-only FUSE filesystem of one lazy layer.
//!
//! Metadata requests (lookup, getattr, readdir, readlink, xattrs, statfs) are answered from the
//! in-memory [`LayerIndex`] on the FUSE threads; they never touch disk or network. Reads are
//! handed to the async runtime, which gathers verified chunks and replies from there, so the
//! FUSE request loop never waits on a fetch. The layer is immutable: the kernel may cache
//! attributes, entries and pages for as long as it likes.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dragonfly_estargz::{LayerIndex, Node, NodeKind};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::chunks::ChunkReader;
use crate::metrics::Metrics;

const BLOCK_SIZE: u32 = 4096;

/// One mounted layer.
pub struct LayerFs {
    index: Arc<LayerIndex>,
    chunks: ChunkReader,
    runtime: tokio::runtime::Handle,
    ttl: Duration,
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
            ttl,
            metrics,
        }
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.index.node(ino.0).ok_or(Errno::ENOENT)
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

/// The attributes the kernel sees for a node.
pub fn attr(ino: u64, n: &Node) -> FileAttr {
    let size = match n.kind {
        NodeKind::Symlink => n.link_target.as_ref().map_or(0, |t| t.len() as u64),
        _ => n.size,
    };
    let mtime = n.mtime;
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(n.kind),
        perm: (n.mode & 0o7777) as u16,
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: nix::sys::stat::makedev(u64::from(n.dev_major), u64::from(n.dev_minor)) as u32,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() <= size as usize {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large read-ahead: chunks are fetched whole anyway.
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_CACHE_SYMLINKS | fuser::InitFlags::FUSE_PARALLEL_DIROPS,
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.index.lookup(parent.0, name) {
            Some(ino) => match self.index.node(ino) {
                Some(n) => reply.entry(&self.ttl, &attr(ino, n), Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(n) => reply.attr(&self.ttl, &attr(ino.0, n)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Ok(n) => match &n.link_target {
                Some(t) if n.kind == NodeKind::Symlink => reply.data(t.as_encoded_bytes()),
                _ => reply.error(Errno::EINVAL),
            },
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & (libc::O_WRONLY | libc::O_RDWR) != 0;
        match self.node(ino) {
            Ok(_) if write => reply.error(Errno::EROFS),
            Ok(n) if n.kind == NodeKind::Dir => reply.error(Errno::EISDIR),
            // Immutable content: let the kernel keep its page cache across opens.
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let node = match self.node(ino) {
            Ok(n) if n.kind == NodeKind::File => n,
            Ok(_) => return reply.error(Errno::EINVAL),
            Err(e) => return reply.error(e),
        };
        let end = offset.saturating_add(u64::from(size)).min(node.size);
        if offset >= end {
            return reply.data(&[]);
        }
        let chunks = self.index.chunks_for(ino.0, offset..end).to_vec();
        let reader = self.chunks.clone();
        let metrics = self.metrics.clone();
        self.runtime.spawn(async move {
            let started = Instant::now();
            let parts = futures::future::join_all(chunks.iter().map(|c| reader.read(c))).await;
            let mut out = BytesMut::with_capacity((end - offset) as usize);
            for (chunk, part) in chunks.iter().zip(parts) {
                let data: Bytes = match part {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(ino = ino.0, offset, error = %e, "read failed: EIO");
                        metrics.fuse_reads.with_label_values(&["error"]).inc();
                        return reply.error(Errno::EIO);
                    }
                };
                let lo = offset.max(chunk.file_offset) - chunk.file_offset;
                let hi = end.min(chunk.file_offset + chunk.len) - chunk.file_offset;
                if hi as usize > data.len() || lo > hi {
                    tracing::error!(ino = ino.0, "chunk shorter than the TOC says: EIO");
                    metrics.fuse_reads.with_label_values(&["error"]).inc();
                    return reply.error(Errno::EIO);
                }
                out.extend_from_slice(&data[lo as usize..hi as usize]);
            }
            if out.len() as u64 != end - offset {
                tracing::error!(ino = ino.0, offset, "chunks do not cover the read: EIO");
                metrics.fuse_reads.with_label_values(&["error"]).inc();
                return reply.error(Errno::EIO);
            }
            metrics.fuse_reads.with_label_values(&["ok"]).inc();
            metrics.fuse_read_bytes.inc_by(out.len() as u64);
            metrics
                .fuse_read_seconds
                .with_label_values(&["chunks"])
                .observe(started.elapsed().as_secs_f64());
            reply.data(&out);
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Ok(n) if n.kind == NodeKind::Dir => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if let Err(e) = self.node(ino) {
            return reply.error(e);
        }
        let parent = self.index.parent(ino.0).unwrap_or(ino.0);
        let dots = [(OsStr::new("."), ino.0), (OsStr::new(".."), parent)];
        let entries = dots.into_iter().chain(self.index.children(ino.0));
        for (i, (name, child)) in entries.enumerate().skip(offset as usize) {
            let kind = self
                .index
                .node(child)
                .map_or(FileType::Directory, |n| file_type(n.kind));
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        if let Err(e) = self.node(ino) {
            return reply.error(e);
        }
        let parent = self.index.parent(ino.0).unwrap_or(ino.0);
        let dots = [(OsStr::new("."), ino.0), (OsStr::new(".."), parent)];
        let entries = dots.into_iter().chain(self.index.children(ino.0));
        for (i, (name, child)) in entries.enumerate().skip(offset as usize) {
            let Some(n) = self.index.node(child) else {
                continue;
            };
            if reply.add(
                INodeNo(child),
                (i + 1) as u64,
                name,
                &self.ttl,
                &attr(child, n),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stats = self.index.stats();
        let blocks = stats.total_file_bytes.div_ceil(u64::from(BLOCK_SIZE));
        reply.statfs(blocks, 0, 0, stats.nodes, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.node(ino) {
            Ok(n) => match n.xattrs.get(name) {
                Some(v) => xattr_reply(reply, size, v),
                None => reply.error(Errno::ENODATA),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
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

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permission checks are done by the kernel (default_permissions).
        match self.node(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Read-only: nothing buffered to flush. Answering keeps close(2) from logging ENOSYS.
        reply.ok();
    }
}
