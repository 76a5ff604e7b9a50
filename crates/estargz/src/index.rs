//! The layer's file tree, built from a TOC and validated: inodes, directories, hardlinks,
//! whiteouts in overlayfs form, chunk maps with compressed ranges, and the prefetch landmark.
//!
//! The tree is what a FUSE filesystem serves, so building it rejects anything that could let a
//! hostile TOC confuse it: `..` components, duplicate paths, chunks that do not tile their file,
//! chunk ranges outside the data area, unverifiable file data.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::error::{Error, Result};
use crate::time::parse_rfc3339;
use crate::toc::{Toc, TocEntry};

/// Landmark file placed after the prioritized files of a layer.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Landmark file saying the layer has no prioritized files.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Type of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Character device (also overlayfs whiteouts, 0:0).
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
}

/// One contiguous piece of a regular file, stored in one compressed member/frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the chunk in the (uncompressed) file.
    pub file_offset: u64,
    /// Uncompressed length.
    pub len: u64,
    /// Start of the compressed member/frame in the blob.
    pub compressed_offset: u64,
    /// End of the compressed bytes to read (start of the next member, or the TOC).
    pub compressed_end: u64,
    /// Uncompressed bytes to skip from the member start.
    pub inner_offset: u64,
    /// sha256 of the chunk's uncompressed bytes.
    pub digest: [u8; 32],
}

/// A file, directory or other node of the layer.
#[derive(Debug, Clone)]
pub struct Node {
    /// Type.
    pub kind: NodeKind,
    /// Permission bits including setuid/setgid/sticky (no type bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file.
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Symlink target.
    pub link_target: Option<OsString>,
    /// Extended attributes.
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// Link count.
    pub nlink: u32,
    /// Chunks of a regular file, in file order, tiling `[0, size)`.
    pub chunks: Vec<Chunk>,
}

impl Node {
    fn new(kind: NodeKind, mode: u32) -> Node {
        Node {
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: UNIX_EPOCH,
            dev_major: 0,
            dev_minor: 0,
            link_target: None,
            xattrs: BTreeMap::new(),
            nlink: 1,
            chunks: Vec::new(),
        }
    }
}

/// What the layer says about prefetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// Files before this compressed offset were prioritized: prefetch `[0, end)`.
    Landmark {
        /// Compressed offset of the landmark file.
        end: u64,
    },
    /// The layer says: no prefetch.
    NoPrefetch,
    /// No landmark.
    Unspecified,
}

/// Options for building an index.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Xattr marking an opaque directory for overlayfs (`trusted.overlay.opaque`, or
    /// `user.overlay.opaque` when overlay is mounted with `userxattr`).
    pub opaque_xattr: String,
    /// Accept file data that has no digest (it cannot be verified). Off by default.
    pub allow_unverified_data: bool,
    /// Most inodes the layer may have, implicit parent directories included (each component
    /// of a deep path is one, so a TOC's size alone does not bound them).
    pub max_nodes: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            opaque_xattr: "trusted.overlay.opaque".into(),
            allow_unverified_data: false,
            max_nodes: 4_000_000,
        }
    }
}

/// Totals of a layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexStats {
    /// Inodes.
    pub nodes: u64,
    /// Sum of regular file sizes.
    pub total_file_bytes: u64,
}

/// The validated tree of one layer. Inode numbers start at [`LayerIndex::ROOT`].
#[derive(Debug)]
pub struct LayerIndex {
    nodes: Vec<Node>,
    children: Vec<Vec<(OsString, u64)>>,
    parents: Vec<u64>,
    prefetch: Prefetch,
    stats: IndexStats,
}

fn bad(name: &str, reason: impl Into<String>) -> Error {
    Error::BadEntry {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// Splits a TOC path into components; rejects `..` and NUL.
fn components(name: &str) -> Result<Vec<&str>> {
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(bad(name, "path escapes the layer root (`..`)")),
            c if c.contains('\0') => return Err(bad(name, "path contains a NUL byte")),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn parse_digest(name: &str, d: &str) -> Result<[u8; 32]> {
    let hex_part = d
        .strip_prefix("sha256:")
        .ok_or_else(|| bad(name, format!("unsupported digest {d:?} (only sha256)")))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out)
        .map_err(|_| bad(name, format!("malformed digest {d:?}")))?;
    Ok(out)
}

struct Builder {
    nodes: Vec<Node>,
    children: Vec<BTreeMap<OsString, u64>>,
    parents: Vec<u64>,
    explicit: HashSet<u64>,
    whiteouts: Vec<(u64, OsString, Node)>,
    raw_chunks: Vec<RawChunk>,
    prefetch: Prefetch,
    /// Compressed offsets where members start (files and chunks), to bound each chunk.
    data_offsets: Vec<u64>,
    /// The regular file the next `chunk` entries belong to.
    last_reg: Option<(u64, String)>,
    toc_offset: u64,
    max_nodes: usize,
}

struct RawChunk {
    ino: u64,
    name: String,
    offset: u64,
    inner_offset: u64,
    file_offset: u64,
    size: u64,
    digest: Option<String>,
    end_offset: u64,
}

/// The node kind a TOC entry type names (hardlinks and chunks are handled apart).
fn node_kind(e: &TocEntry) -> Result<NodeKind> {
    Ok(match e.kind.as_str() {
        "dir" => NodeKind::Dir,
        "reg" => NodeKind::File,
        "symlink" => NodeKind::Symlink,
        "char" => NodeKind::CharDevice,
        "block" => NodeKind::BlockDevice,
        "fifo" => NodeKind::Fifo,
        other => return Err(bad(&e.name, format!("unknown entry type {other:?}"))),
    })
}

impl Builder {
    fn new(toc_offset: u64, max_nodes: usize) -> Builder {
        let mut b = Builder {
            nodes: Vec::new(),
            children: Vec::new(),
            parents: Vec::new(),
            explicit: HashSet::new(),
            whiteouts: Vec::new(),
            raw_chunks: Vec::new(),
            prefetch: Prefetch::Unspecified,
            data_offsets: Vec::new(),
            last_reg: None,
            toc_offset,
            max_nodes,
        };
        b.add_node(Node::new(NodeKind::Dir, 0o755), LayerIndex::ROOT);
        b
    }

    fn add_node(&mut self, node: Node, parent: u64) -> u64 {
        self.nodes.push(node);
        self.children.push(BTreeMap::new());
        self.parents.push(parent);
        self.nodes.len() as u64
    }

    fn node_mut(&mut self, ino: u64) -> &mut Node {
        &mut self.nodes[(ino - 1) as usize]
    }

    fn kind_of(&self, ino: u64) -> NodeKind {
        self.nodes[(ino - 1) as usize].kind
    }

    /// `name` under `parent` is `ino`.
    fn link(&mut self, parent: u64, name: &str, ino: u64) {
        self.children[(parent - 1) as usize].insert(OsString::from(name), ino);
    }

    /// The entry `name` in directory `dir`, if any.
    fn child(&self, dir: u64, name: &str) -> Option<u64> {
        self.children[(dir - 1) as usize]
            .get(OsStr::new(name))
            .copied()
    }

    /// The entry at `path` (from the root), if any. Walks the tree one component at a time,
    /// so resolving a path costs its length, not its length squared.
    fn resolve(&self, path: &[&str]) -> Option<u64> {
        path.iter()
            .try_fold(LayerIndex::ROOT, |dir, c| self.child(dir, c))
    }

    /// Refuses one more inode than `max_nodes`.
    fn room_for_node(&self, name: &str) -> Result<()> {
        if self.nodes.len() >= self.max_nodes {
            return Err(bad(
                name,
                format!("the layer has more than {} inodes", self.max_nodes),
            ));
        }
        Ok(())
    }

    /// The directory at `path`, creating implicit parents (0755) as needed.
    fn ensure_dir(&mut self, name: &str, path: &[&str]) -> Result<u64> {
        let mut ino = LayerIndex::ROOT;
        for (i, c) in path.iter().enumerate() {
            ino = match self.child(ino, c) {
                Some(d) if self.kind_of(d) == NodeKind::Dir => d,
                Some(_) => {
                    return Err(bad(
                        name,
                        format!("parent {:?} is not a directory", path[..=i].join("/")),
                    ))
                }
                None => {
                    self.room_for_node(name)?;
                    let d = self.add_node(Node::new(NodeKind::Dir, 0o755), ino);
                    self.link(ino, c, d);
                    d
                }
            };
        }
        Ok(ino)
    }

    /// A `chunk` entry: the next piece of the last regular file.
    fn add_chunk(&mut self, e: &TocEntry) -> Result<()> {
        let Some((ino, reg_name)) = self.last_reg.clone() else {
            return Err(bad(&e.name, "chunk entry without a preceding regular file"));
        };
        let cleaned = components(&e.name)?.join("/");
        if !e.name.is_empty() && cleaned != reg_name {
            return Err(bad(
                &e.name,
                format!("chunk entry follows file {reg_name:?}, not this path"),
            ));
        }
        if e.offset >= self.toc_offset {
            return Err(bad(&e.name, "chunk offset is beyond the data area"));
        }
        self.data_offsets.push(e.offset);
        self.raw_chunks.push(RawChunk {
            ino,
            name: reg_name,
            offset: e.offset,
            inner_offset: e.inner_offset,
            file_offset: e.chunk_offset,
            size: e.chunk_size,
            digest: (!e.chunk_digest.is_empty()).then(|| e.chunk_digest.clone()),
            end_offset: e.end_offset,
        });
        Ok(())
    }

    /// Any entry but a chunk.
    fn add_entry(&mut self, e: &TocEntry, opts: &IndexOptions) -> Result<()> {
        self.last_reg = None;
        let path = components(&e.name)?;
        if e.kind == "reg" && e.size > 0 {
            if e.offset >= self.toc_offset {
                return Err(bad(&e.name, "file data offset is beyond the data area"));
            }
            self.data_offsets.push(e.offset);
        }
        let Some((&base, dir_path)) = path.split_last() else {
            // The root itself.
            if e.kind != "dir" {
                return Err(bad(&e.name, "the layer root must be a directory"));
            }
            return apply_attrs(self.node_mut(LayerIndex::ROOT), e, opts);
        };
        if dir_path.is_empty() && (base == PREFETCH_LANDMARK || base == NO_PREFETCH_LANDMARK) {
            self.prefetch = if base == PREFETCH_LANDMARK {
                Prefetch::Landmark { end: e.offset }
            } else {
                Prefetch::NoPrefetch
            };
            return Ok(());
        }
        let parent = self.ensure_dir(&e.name, dir_path)?;
        if base == OPAQUE_WHITEOUT {
            let key = OsString::from(opts.opaque_xattr.clone());
            self.node_mut(parent).xattrs.insert(key, b"y".to_vec());
            return Ok(());
        }
        if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
            return self.add_whiteout(e, parent, hidden);
        }
        if let Some(existing) = self.child(parent, base) {
            return self.revisit(e, existing, opts);
        }
        if e.kind == "hardlink" {
            return self.add_hardlink(e, parent, base);
        }
        self.add_node_entry(e, parent, base, &path, opts)
    }

    /// `.wh.NAME`: hides NAME of lower layers (applied once the whole TOC is read).
    fn add_whiteout(&mut self, e: &TocEntry, parent: u64, hidden: &str) -> Result<()> {
        if hidden.is_empty() {
            return Err(bad(&e.name, "whiteout of an empty name"));
        }
        let mut w = Node::new(NodeKind::CharDevice, 0);
        w.uid = e.uid;
        w.gid = e.gid;
        w.mtime = parse_rfc3339(&e.modtime).unwrap_or(UNIX_EPOCH);
        self.whiteouts.push((parent, OsString::from(hidden), w));
        Ok(())
    }

    /// A path seen before: only an implicit directory may be given its attributes now.
    fn revisit(&mut self, e: &TocEntry, existing: u64, opts: &IndexOptions) -> Result<()> {
        let implicit_dir =
            !self.explicit.contains(&existing) && self.kind_of(existing) == NodeKind::Dir;
        if implicit_dir && e.kind == "dir" {
            apply_attrs(self.node_mut(existing), e, opts)?;
            self.explicit.insert(existing);
            return Ok(());
        }
        Err(bad(&e.name, "duplicate path in the TOC"))
    }

    /// A hardlink to an earlier non-directory entry.
    fn add_hardlink(&mut self, e: &TocEntry, parent: u64, base: &str) -> Result<()> {
        let target = components(&e.link_name)?;
        let tino = self.resolve(&target).ok_or_else(|| {
            bad(
                &e.name,
                format!(
                    "hardlink target {:?} is not earlier in the layer",
                    e.link_name
                ),
            )
        })?;
        if self.kind_of(tino) == NodeKind::Dir {
            return Err(bad(&e.name, "hardlink to a directory"));
        }
        self.node_mut(tino).nlink += 1;
        self.link(parent, base, tino);
        Ok(())
    }

    /// A new directory, file, symlink, device or fifo.
    fn add_node_entry(
        &mut self,
        e: &TocEntry,
        parent: u64,
        base: &str,
        path: &[&str],
        opts: &IndexOptions,
    ) -> Result<()> {
        let kind = node_kind(e)?;
        let mut node = Node::new(kind, 0);
        apply_attrs(&mut node, e, opts)?;
        match kind {
            NodeKind::Symlink => {
                if e.link_name.is_empty() {
                    return Err(bad(&e.name, "symlink without a target"));
                }
                node.link_target = Some(OsString::from(&e.link_name));
            }
            NodeKind::CharDevice | NodeKind::BlockDevice => {
                node.dev_major = e.dev_major;
                node.dev_minor = e.dev_minor;
            }
            NodeKind::File => node.size = e.size,
            _ => {}
        }
        self.room_for_node(&e.name)?;
        let cleaned = path.join("/");
        let ino = self.add_node(node, parent);
        self.link(parent, base, ino);
        self.explicit.insert(ino);
        if kind == NodeKind::File {
            self.last_reg = Some((ino, cleaned.clone()));
            if e.size > 0 {
                self.add_first_chunk(e, ino, cleaned);
            }
        }
        Ok(())
    }

    /// A regular file's first (or only) chunk, described by the file entry itself.
    fn add_first_chunk(&mut self, e: &TocEntry, ino: u64, name: String) {
        let unchunked = e.chunk_size == 0 || e.chunk_size >= e.size;
        let digest = if !e.chunk_digest.is_empty() {
            Some(e.chunk_digest.clone())
        } else if unchunked && !e.digest.is_empty() {
            Some(e.digest.clone())
        } else {
            None
        };
        self.raw_chunks.push(RawChunk {
            ino,
            name,
            offset: e.offset,
            inner_offset: e.inner_offset,
            file_offset: 0,
            size: e.chunk_size,
            digest,
            end_offset: e.end_offset,
        });
    }

    /// Whiteouts hide same-named entries of lower layers, unless this layer has one too.
    fn apply_whiteouts(&mut self) -> Result<()> {
        for (parent, name, node) in std::mem::take(&mut self.whiteouts) {
            if self.children[(parent - 1) as usize].contains_key(&name) {
                continue;
            }
            self.room_for_node(&name.to_string_lossy())?;
            let ino = self.add_node(node, parent);
            self.children[(parent - 1) as usize].insert(name, ino);
        }
        Ok(())
    }

    /// Chunk ranges: a member ends where the next distinct member starts, or at the TOC.
    fn resolve_chunks(&mut self, opts: &IndexOptions) -> Result<()> {
        let toc_offset = self.toc_offset;
        self.data_offsets.sort_unstable();
        self.data_offsets.dedup();
        for rc in std::mem::take(&mut self.raw_chunks) {
            let next = match self.data_offsets.binary_search(&rc.offset) {
                Ok(i) => self.data_offsets.get(i + 1).copied().unwrap_or(toc_offset),
                Err(_) => toc_offset,
            };
            let end = if rc.end_offset > rc.offset && rc.end_offset <= toc_offset {
                rc.end_offset
            } else {
                next
            };
            let digest = match &rc.digest {
                Some(d) => parse_digest(&rc.name, d)?,
                None if opts.allow_unverified_data => [0u8; 32],
                None => {
                    return Err(bad(
                        &rc.name,
                        "file data has no chunkDigest, so it cannot be verified",
                    ))
                }
            };
            self.node_mut(rc.ino).chunks.push(Chunk {
                file_offset: rc.file_offset,
                len: rc.size,
                compressed_offset: rc.offset,
                compressed_end: end,
                inner_offset: rc.inner_offset,
                digest,
            });
        }
        Ok(())
    }

    /// Chunks must tile each file exactly; a size of 0 means "to the next chunk / the end".
    fn check_tiling(&mut self) -> Result<IndexStats> {
        let mut stats = IndexStats::default();
        for ino in 1..=self.nodes.len() as u64 {
            let n = self.node_mut(ino);
            if n.kind == NodeKind::File {
                tile(ino, n)?;
                // Sizes are the TOC's word: two near 2^64 must not overflow the total.
                stats.total_file_bytes = stats.total_file_bytes.saturating_add(n.size);
            }
        }
        stats.nodes = self.nodes.len() as u64;
        Ok(stats)
    }

    /// Link counts of directories: 2 + subdirectories.
    fn count_dir_links(&mut self) {
        for ino in 1..=self.nodes.len() as u64 {
            if self.kind_of(ino) != NodeKind::Dir {
                continue;
            }
            let subdirs = self.children[(ino - 1) as usize]
                .values()
                .filter(|c| self.kind_of(**c) == NodeKind::Dir)
                .count() as u32;
            self.node_mut(ino).nlink = 2 + subdirs;
        }
    }

    fn finish(self, stats: IndexStats) -> LayerIndex {
        LayerIndex {
            children: self
                .children
                .into_iter()
                .map(|m| m.into_iter().collect())
                .collect(),
            nodes: self.nodes,
            parents: self.parents,
            prefetch: self.prefetch,
            stats,
        }
    }
}

/// Sorts file `n`'s chunks and checks they tile `[0, size)`, filling in open-ended lengths.
fn tile(ino: u64, n: &mut Node) -> Result<()> {
    let size = n.size;
    n.chunks.sort_by_key(|c| c.file_offset);
    let count = n.chunks.len();
    let mut pos = 0u64;
    for i in 0..count {
        let next_start = if i + 1 < count {
            n.chunks[i + 1].file_offset
        } else {
            size
        };
        let c = &mut n.chunks[i];
        if c.file_offset != pos {
            return Err(bad(
                &format!("inode {ino}"),
                format!(
                    "chunks do not tile the file: expected a chunk at {pos}, found {}",
                    c.file_offset
                ),
            ));
        }
        if c.len == 0 || i + 1 == count {
            c.len = next_start.saturating_sub(c.file_offset);
        }
        if c.len == 0 || c.file_offset.checked_add(c.len) != Some(next_start) {
            return Err(bad(
                &format!("inode {ino}"),
                format!(
                    "chunks do not tile the file: the chunk at {} has size {} but the next one starts at {next_start}",
                    c.file_offset, c.len
                ),
            ));
        }
        pos = next_start;
    }
    if size > 0 && pos != size {
        return Err(bad(
            &format!("inode {ino}"),
            "file of non-zero size has no data",
        ));
    }
    Ok(())
}

impl LayerIndex {
    /// Inode number of the root directory.
    pub const ROOT: u64 = 1;

    /// Builds and validates the tree of a layer. `toc_offset` bounds the data area. The
    /// steps: read every entry (chunks onto their file), apply whiteouts, bound and verify
    /// chunk ranges, check that chunks tile each file, count directory links.
    pub fn build(toc: &Toc, toc_offset: u64, opts: &IndexOptions) -> Result<LayerIndex> {
        let mut b = Builder::new(toc_offset, opts.max_nodes);
        for e in &toc.entries {
            if e.kind == "chunk" {
                b.add_chunk(e)?;
            } else {
                b.add_entry(e, opts)?;
            }
        }
        b.apply_whiteouts()?;
        b.resolve_chunks(opts)?;
        let stats = b.check_tiling()?;
        b.count_dir_links();
        Ok(b.finish(stats))
    }

    /// A node by inode number.
    pub fn node(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let list = self.children.get(parent.checked_sub(1)? as usize)?;
        list.binary_search_by(|(n, _)| n.as_os_str().cmp(name))
            .ok()
            .map(|i| list[i].1)
    }

    /// Children of a directory, sorted by name.
    pub fn children(&self, ino: u64) -> impl Iterator<Item = (&OsStr, u64)> + '_ {
        ino.checked_sub(1)
            .and_then(|i| self.children.get(i as usize))
            .into_iter()
            .flatten()
            .map(|(n, c)| (n.as_os_str(), *c))
    }

    /// Parent directory of a directory (the root is its own parent).
    pub fn parent(&self, ino: u64) -> Option<u64> {
        ino.checked_sub(1)
            .and_then(|i| self.parents.get(i as usize))
            .copied()
    }

    /// Chunks of a regular file overlapping `range` (uncompressed file offsets).
    pub fn chunks_for(&self, ino: u64, range: Range<u64>) -> &[Chunk] {
        let Some(n) = self.node(ino) else { return &[] };
        if range.start >= range.end {
            return &[];
        }
        let chunks = &n.chunks;
        let first = chunks.partition_point(|c| c.file_offset + c.len <= range.start);
        let last = chunks.partition_point(|c| c.file_offset < range.end);
        if first >= last {
            return &[];
        }
        &chunks[first..last]
    }

    /// The layer's prefetch landmark.
    pub fn prefetch(&self) -> Prefetch {
        self.prefetch
    }

    /// Totals.
    pub fn stats(&self) -> IndexStats {
        self.stats
    }

    /// Number of inodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the index has only its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }
}

fn apply_attrs(n: &mut Node, e: &crate::toc::TocEntry, _opts: &IndexOptions) -> Result<()> {
    n.mode = e.mode & 0o7777;
    n.uid = e.uid;
    n.gid = e.gid;
    n.mtime = parse_rfc3339(&e.modtime).unwrap_or(UNIX_EPOCH);
    for (k, v) in &e.xattrs {
        let value = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|_| bad(&e.name, format!("xattr {k:?} is not base64")))?;
        if k.is_empty() || k.contains('\0') {
            return Err(bad(&e.name, "empty or NUL xattr name"));
        }
        // containerd refuses `trusted.*` ("admin") xattrs from layer archives; an unpacked
        // layer never has them, so a lazy one must not either.
        if k.starts_with("trusted.") {
            continue;
        }
        n.xattrs.insert(OsString::from(k), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::footer::{locate_toc, LayerFormat, FOOTER_READ_SIZE};
    use crate::testutil::{build, Built, Ent};
    use crate::toc::{decode_toc, verify_toc_digest, Limits};
    use crate::{decode_chunk, Error};
    use serde_json::json;

    const FORMATS: [LayerFormat; 2] = [LayerFormat::Estargz, LayerFormat::ZstdChunked];

    fn open(b: &Built) -> Result<(LayerIndex, LayerFormat)> {
        let size = b.blob.len() as u64;
        let tail = &b.blob[(size - FOOTER_READ_SIZE.min(size)) as usize..];
        let loc = locate_toc(size, tail)?;
        let toc_bytes = &b.blob[loc.toc_offset as usize..(loc.toc_offset + loc.toc_len) as usize];
        let decoded = decode_toc(&loc, toc_bytes, &Limits::default(), Some(&b.toc_digest))?;
        let idx = LayerIndex::build(&decoded.toc, loc.toc_offset, &IndexOptions::default())?;
        Ok((idx, loc.format))
    }

    fn path(idx: &LayerIndex, p: &str) -> u64 {
        let mut ino = LayerIndex::ROOT;
        for c in p.split('/').filter(|c| !c.is_empty()) {
            ino = idx
                .lookup(ino, OsStr::new(c))
                .unwrap_or_else(|| panic!("{p}: no {c}"));
        }
        ino
    }

    fn read_file(idx: &LayerIndex, fmt: LayerFormat, blob: &[u8], ino: u64) -> Vec<u8> {
        let n = idx.node(ino).unwrap();
        let mut out = Vec::new();
        for c in idx.chunks_for(ino, 0..n.size) {
            let bytes = &blob[c.compressed_offset as usize..c.compressed_end as usize];
            out.extend(decode_chunk(fmt, bytes, c).unwrap());
        }
        out
    }

    fn sample() -> Vec<u8> {
        // xorshift: no period shorter than the file, so no two chunks are alike.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..9 * 1024 * 1024 + 123)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn round_trip_of_every_kind_of_entry() {
        let big = sample();
        let long = format!("dir/{}/{}", "d".repeat(120), "ü-ñame-файл-".repeat(10));
        for fmt in FORMATS {
            let b = build(
                fmt,
                &[
                    Ent::Dir(".", 0o755),
                    Ent::Dir("bin/", 0o755),
                    Ent::File("bin/tool", b"#!/bin/sh\necho hi\n", 0o4755),
                    Ent::File("data/big.bin", &big, 0o644),
                    Ent::File("empty", b"", 0o600),
                    Ent::File(&long, b"long path", 0o644),
                    Ent::Symlink("bin/link", "../data/big.bin"),
                    Ent::Hardlink("other/hard", "bin/tool"),
                    Ent::Char("dev/null", 1, 3),
                    Ent::Fifo("run/fifo"),
                    Ent::Dir("tmp", 0o1777),
                    Ent::Packed(vec![("small/a", b"aaaa"), ("small/b", b"bbbbbb")]),
                    Ent::Raw(
                        json!({"name": "x", "type": "reg", "size": 2, "offset": 0, "chunkDigest": crate::toc::sha256_digest(b"#!"), "xattrs": {"user.note": "aGk=", "trusted.admin": "aGk="}}),
                    ),
                ],
                4 << 20,
                |_| {},
            );
            let (idx, f) = open(&b).unwrap();
            let tool = path(&idx, "bin/tool");
            let n = idx.node(tool).unwrap();
            assert_eq!(
                (n.kind, n.mode, n.uid, n.gid, n.nlink),
                (NodeKind::File, 0o4755, 1000, 1001, 2)
            );
            assert_eq!(read_file(&idx, f, &b.blob, tool), b"#!/bin/sh\necho hi\n");
            assert_eq!(path(&idx, "other/hard"), tool, "hardlinks share the inode");
            let bigino = path(&idx, "data/big.bin");
            assert_eq!(idx.node(bigino).unwrap().chunks.len(), 3);
            assert_eq!(read_file(&idx, f, &b.blob, bigino), big);
            // A read in the middle touches only the chunks it overlaps.
            assert_eq!(
                idx.chunks_for(bigino, (4 << 20) - 1..(4 << 20) + 1).len(),
                2
            );
            assert_eq!(idx.chunks_for(bigino, 5 << 20..6 << 20).len(), 1);
            assert!(idx.chunks_for(bigino, 100..100).is_empty());
            assert_eq!(idx.node(path(&idx, "empty")).unwrap().size, 0);
            assert_eq!(read_file(&idx, f, &b.blob, path(&idx, &long)), b"long path");
            let l = idx.node(path(&idx, "bin/link")).unwrap();
            assert_eq!(
                l.link_target.as_deref(),
                Some(OsStr::new("../data/big.bin"))
            );
            let d = idx.node(path(&idx, "dev/null")).unwrap();
            assert_eq!(
                (d.kind, d.dev_major, d.dev_minor),
                (NodeKind::CharDevice, 1, 3)
            );
            assert_eq!(
                idx.node(path(&idx, "run/fifo")).unwrap().kind,
                NodeKind::Fifo
            );
            assert_eq!(idx.node(path(&idx, "tmp")).unwrap().mode, 0o1777);
            assert_eq!(
                read_file(&idx, f, &b.blob, path(&idx, "small/b")),
                b"bbbbbb"
            );
            assert_eq!(read_file(&idx, f, &b.blob, path(&idx, "small/a")), b"aaaa");
            let x = idx.node(path(&idx, "x")).unwrap();
            assert_eq!(x.xattrs.get(OsStr::new("user.note")).unwrap(), b"hi");
            assert!(
                !x.xattrs.contains_key(OsStr::new("trusted.admin")),
                "containerd drops trusted.* xattrs"
            );
            // Implicit parents exist, are 0755 and counted.
            let run = idx.node(path(&idx, "run")).unwrap();
            assert_eq!((run.kind, run.mode), (NodeKind::Dir, 0o755));
            let names: Vec<_> = idx
                .children(LayerIndex::ROOT)
                .map(|(n, _)| n.to_owned())
                .collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "children are sorted");
            assert_eq!(idx.parent(path(&idx, "bin")), Some(LayerIndex::ROOT));
            assert_eq!(idx.prefetch(), Prefetch::Unspecified);
        }
    }

    #[test]
    fn whiteouts_opaque_dirs_and_landmarks() {
        for fmt in FORMATS {
            let b = build(
                fmt,
                &[
                    Ent::File("prio", b"read first", 0o644),
                    Ent::File(PREFETCH_LANDMARK, &[0x0f], 0o644),
                    Ent::File(".wh.gone", b"", 0o644),
                    Ent::File("etc/.wh.old", b"", 0o644),
                    Ent::File("opq/.wh..wh..opq", b"", 0o644),
                    Ent::File("opq/new", b"new", 0o644),
                    Ent::File("keep/.wh.back", b"", 0o644),
                    Ent::File(
                        "keep/back",
                        b"a file recreated in the same layer wins",
                        0o644,
                    ),
                ],
                4 << 20,
                |_| {},
            );
            let (idx, _) = open(&b).unwrap();
            let prio = &idx.node(path(&idx, "prio")).unwrap().chunks[0];
            assert!(
                matches!(idx.prefetch(), Prefetch::Landmark { end } if end >= prio.compressed_end)
            );
            assert!(idx
                .lookup(LayerIndex::ROOT, OsStr::new(PREFETCH_LANDMARK))
                .is_none());
            let gone = idx.node(path(&idx, "gone")).unwrap();
            assert_eq!(
                (gone.kind, gone.dev_major, gone.dev_minor),
                (NodeKind::CharDevice, 0, 0)
            );
            assert!(idx
                .lookup(LayerIndex::ROOT, OsStr::new(".wh.gone"))
                .is_none());
            assert_eq!(
                idx.node(path(&idx, "etc/old")).unwrap().kind,
                NodeKind::CharDevice
            );
            let opq = idx.node(path(&idx, "opq")).unwrap();
            assert_eq!(
                opq.xattrs
                    .get(OsStr::new("trusted.overlay.opaque"))
                    .unwrap(),
                b"y"
            );
            assert!(idx
                .lookup(path(&idx, "opq"), OsStr::new(".wh..wh..opq"))
                .is_none());
            assert_eq!(
                idx.node(path(&idx, "keep/back")).unwrap().kind,
                NodeKind::File
            );
        }
    }

    #[test]
    fn no_prefetch_landmark() {
        let b = build(
            LayerFormat::Estargz,
            &[Ent::File(NO_PREFETCH_LANDMARK, &[0x0f], 0o644)],
            4 << 20,
            |_| {},
        );
        assert_eq!(open(&b).unwrap().0.prefetch(), Prefetch::NoPrefetch);
    }

    fn build_err(entries: &[Ent<'_>], tamper: impl FnOnce(&mut serde_json::Value)) -> Error {
        let b = build(LayerFormat::Estargz, entries, 4 << 20, tamper);
        open(&b).unwrap_err()
    }

    #[test]
    fn hostile_paths_are_rejected() {
        for name in ["../etc/passwd", "a/../../b", "/../x"] {
            let e = build_err(&[Ent::File(name, b"x", 0o644)], |_| {});
            assert!(e.to_string().contains("escapes"), "{name}: {e}");
        }
        let e = build_err(
            &[Ent::File("a", b"x", 0o644), Ent::File("./a", b"y", 0o644)],
            |_| {},
        );
        assert!(e.to_string().contains("duplicate"), "{e}");
        let e = build_err(
            &[Ent::File("a", b"x", 0o644), Ent::File("a/b", b"y", 0o644)],
            |_| {},
        );
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = build_err(&[Ent::Hardlink("h", "missing")], |_| {});
        assert!(e.to_string().contains("hardlink target"), "{e}");
        // Absolute paths are taken relative to the layer root, like tar does.
        let b = build(
            LayerFormat::Estargz,
            &[Ent::File("/abs/file", b"x", 0o644)],
            4 << 20,
            |_| {},
        );
        let (idx, _) = open(&b).unwrap();
        path(&idx, "abs/file");
    }

    /// Found by fuzzing: a 32 KB TOC with one 16,000-component path took over 10 s (each
    /// parent was looked up by its whole path); now resolving costs the path's length, and the
    /// implicit directories a deep path makes count against `max_nodes`.
    #[test]
    fn deep_paths_cost_their_length_and_count_as_inodes() {
        let toc = |name: String| Toc {
            version: 1,
            entries: vec![
                TocEntry {
                    name: name.clone(),
                    kind: "fifo".into(),
                    ..TocEntry::default()
                },
                TocEntry {
                    name: format!("{name}-link"),
                    kind: "hardlink".into(),
                    link_name: name,
                    ..TocEntry::default()
                },
            ],
        };
        let deep = toc(format!("{}f", "a/".repeat(200_000)));
        let started = std::time::Instant::now();
        let idx = LayerIndex::build(&deep, 1, &IndexOptions::default()).unwrap();
        assert_eq!(idx.len(), 1 + 200_000 + 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let opts = IndexOptions {
            max_nodes: 1000,
            ..IndexOptions::default()
        };
        let e = LayerIndex::build(&deep, 1, &opts).unwrap_err();
        assert!(e.to_string().contains("more than 1000 inodes"), "{e}");
        let shallow = toc(format!("{}f", "a/".repeat(998)));
        assert_eq!(LayerIndex::build(&shallow, 1, &opts).unwrap().len(), 1000);
    }

    #[test]
    fn malformed_entries_are_rejected() {
        type Tamper = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(&str, Tamper)> = vec![
            ("version", Box::new(|t| t["version"] = json!(2))),
            (
                "unknown entry type",
                Box::new(|t| t["entries"][0]["type"] = json!("socket")),
            ),
            (
                "beyond the data area",
                Box::new(|t| t["entries"][0]["offset"] = json!(1u64 << 40)),
            ),
            (
                "cannot be verified",
                Box::new(|t| {
                    t["entries"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("chunkDigest");
                    t["entries"][0].as_object_mut().unwrap().remove("digest");
                }),
            ),
            (
                "malformed digest",
                Box::new(|t| t["entries"][0]["chunkDigest"] = json!("sha256:zz")),
            ),
            (
                "not base64",
                Box::new(|t| t["entries"][0]["xattrs"] = json!({"user.a": "!!"})),
            ),
            (
                "invalid JSON",
                Box::new(|t| t["entries"][0]["size"] = json!("big")),
            ),
        ];
        for (want, tamper) in cases {
            let e = build_err(&[Ent::File("f", b"data", 0o644)], tamper);
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        let e = build_err(
            &[Ent::Raw(
                json!({"name": "c", "type": "chunk", "offset": 0, "chunkOffset": 5}),
            )],
            |_| {},
        );
        assert!(e.to_string().contains("without a preceding"), "{e}");
        // A chunk that leaves a gap in its file.
        let big = sample();
        let e = build_err(&[Ent::File("big", &big, 0o644)], |t| {
            t["entries"][1]["chunkOffset"] = json!(5 << 20)
        });
        assert!(e.to_string().contains("tile"), "{e}");
    }

    /// Found by fuzzing: file sizes and chunk sizes near 2^64 overflowed the index's sums
    /// (a panic in debug builds, a wrapped value in release ones).
    #[test]
    fn sizes_near_2_pow_64_do_not_overflow() {
        let digest = format!("sha256:{}", "0".repeat(64));
        let entry =
            |name: &str, kind: &str, size: u64, chunk_offset: u64, chunk_size: u64| TocEntry {
                name: name.into(),
                kind: kind.into(),
                size,
                chunk_offset,
                chunk_size,
                chunk_digest: digest.clone(),
                ..TocEntry::default()
            };
        let huge = u64::MAX - 1;
        let two_huge_files = Toc {
            version: 1,
            entries: vec![entry("a", "reg", huge, 0, 0), entry("b", "reg", huge, 0, 0)],
        };
        let idx = LayerIndex::build(&two_huge_files, 10, &IndexOptions::default()).unwrap();
        assert_eq!(idx.stats().total_file_bytes, u64::MAX);
        let overflowing_chunk = Toc {
            version: 1,
            entries: vec![
                entry("f", "reg", 100, 0, 10),
                entry("f", "chunk", 0, 10, u64::MAX),
                entry("f", "chunk", 0, 20, 0),
            ],
        };
        let e = LayerIndex::build(&overflowing_chunk, 10, &IndexOptions::default()).unwrap_err();
        assert!(e.to_string().contains("tile"), "{e}");
    }

    #[test]
    fn toc_digest_and_truncation_and_limits() {
        let b = build(
            LayerFormat::Estargz,
            &[Ent::File("f", b"data", 0o644)],
            4 << 20,
            |_| {},
        );
        let size = b.blob.len() as u64;
        let loc = locate_toc(size, &b.blob[(size - FOOTER_READ_SIZE) as usize..]).unwrap();
        let toc = &b.blob[loc.toc_offset as usize..(loc.toc_offset + loc.toc_len) as usize];
        let d = decode_toc(&loc, toc, &Limits::default(), None).unwrap();
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            verify_toc_digest(&d, &wrong),
            Err(Error::TocDigestMismatch { .. })
        ));
        // Truncated or corrupted TOC bytes.
        assert!(decode_toc(&loc, &toc[..toc.len() - 5], &Limits::default(), None).is_err());
        let mut garbled = toc.to_vec();
        garbled[20] ^= 0xff;
        assert!(decode_toc(&loc, &garbled, &Limits::default(), None).is_err());
        // Limits.
        let tiny = Limits {
            max_toc_json: 10,
            ..Limits::default()
        };
        assert!(matches!(
            decode_toc(&loc, toc, &tiny, None),
            Err(Error::TocTooLarge { .. })
        ));
        let few = Limits {
            max_entries: 0,
            ..Limits::default()
        };
        assert!(matches!(
            decode_toc(&loc, toc, &few, None),
            Err(Error::TocTooLarge { .. })
        ));
        // The digest is checked before the JSON is parsed (so before the entry limit).
        assert!(matches!(
            decode_toc(&loc, toc, &few, Some(&wrong)),
            Err(Error::TocDigestMismatch { .. })
        ));
        assert!(decode_toc(&loc, toc, &Limits::default(), Some(&d.json_digest)).is_ok());
    }

    #[test]
    fn tampered_chunks_never_decode() {
        let big = sample();
        for fmt in FORMATS {
            let b = build(fmt, &[Ent::File("big", &big, 0o644)], 4 << 20, |_| {});
            let (idx, f) = open(&b).unwrap();
            let c = idx.node(path(&idx, "big")).unwrap().chunks[1].clone();
            let mut bytes =
                b.blob[c.compressed_offset as usize..c.compressed_end as usize].to_vec();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
            assert!(
                decode_chunk(f, &bytes, &c).is_err(),
                "flipped byte must fail"
            );
            // Bytes that decompress fine but are not the chunk: another chunk's member.
            let other = &idx.node(path(&idx, "big")).unwrap().chunks[0];
            let mut fake = c.clone();
            fake.compressed_offset = other.compressed_offset;
            fake.compressed_end = other.compressed_end;
            fake.inner_offset = other.inner_offset;
            fake.len = other.len;
            let bytes = &b.blob[other.compressed_offset as usize..other.compressed_end as usize];
            let r = decode_chunk(f, bytes, &fake);
            assert!(
                matches!(r, Err(Error::ChunkDigestMismatch { .. })),
                "{fmt:?}: {r:?}"
            );
            assert!(
                decode_chunk(f, &bytes[..bytes.len() - 1], other).is_err(),
                "short input"
            );
        }
    }
}
