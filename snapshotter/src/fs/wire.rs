//! The FUSE kernel protocol (`linux/fuse.h`), as much of it as a read-only filesystem needs:
//! request parsing and reply encoding, with no I/O.
//!
//! Every request is checked against its length before a field is read: a short or malformed
//! request is an error the session answers with `EIO`, never a panic. Integers are in the
//! machine's byte order, as the kernel writes them.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Protocol major version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// Newest protocol minor version we speak (7.40 adds `FUSE_NOTIFY_RESEND`).
pub const KERNEL_MINOR: u32 = 40;
/// Oldest minor version we accept: 7.36 has the 64-bit INIT flags; every struct we encode has
/// its current size since then.
pub const MIN_KERNEL_MINOR: u32 = 36;

/// Bytes of `fuse_in_header`.
pub const IN_HEADER_LEN: usize = 40;
/// Bytes of `fuse_out_header`.
pub const OUT_HEADER_LEN: usize = 16;
/// Bit the kernel sets in `unique` of a request it resends.
pub const UNIQUE_RESEND: u64 = 1 << 63;

/// Opcodes we tell apart.
#[allow(missing_docs)]
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const READLINK: u32 = 5;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const ACCESS: u32 = 34;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const READDIRPLUS: u32 = 44;
    /// Requests that change the filesystem; answered `EROFS`.
    pub const WRITES: [u32; 14] = [4, 6, 8, 9, 10, 11, 12, 13, 16, 21, 24, 35, 43, 45];
}

/// INIT flags (`flags | flags2 << 32`).
#[allow(missing_docs)]
pub mod init_flag {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const HAS_RESEND: u64 = 1 << 39;
}

/// `FOPEN_KEEP_CACHE`: the page cache stays valid across opens.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `FUSE_NOTIFY_RESEND`.
pub const NOTIFY_RESEND: i32 = 7;

/// A request that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed FUSE request: {0}")]
pub struct Malformed(pub &'static str);

/// Reads fields of a request body front to back.
pub struct Body<'a> {
    rest: &'a [u8],
}

impl<'a> Body<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Body<'a> {
        Body { rest: bytes }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if self.rest.len() < n {
            return Err(Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// The next `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, Malformed> {
        let b = self.take(4, what)?;
        Ok(u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    }

    /// The next `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, Malformed> {
        let b = self.take(8, what)?;
        Ok(u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), Malformed> {
        self.take(n, what).map(|_| ())
    }

    /// A NUL-terminated name.
    pub fn name(&mut self) -> Result<&'a OsStr, Malformed> {
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(Malformed("name without NUL"))?;
        let name = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        Ok(OsStr::from_bytes(name))
    }
}

/// `fuse_in_header`.
#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    /// Length of the whole request.
    pub len: u32,
    /// What is asked.
    pub opcode: u32,
    /// Request id, echoed in the reply.
    pub unique: u64,
    /// The inode the request is about.
    pub nodeid: u64,
}

impl InHeader {
    /// Parses the header of `request` and returns it with the body.
    pub fn parse(request: &[u8]) -> Result<(InHeader, &[u8]), Malformed> {
        let mut b = Body::new(request);
        let len = b.u32("header")?;
        let opcode = b.u32("header")?;
        let unique = b.u64("header")?;
        let nodeid = b.u64("header")?;
        b.skip(IN_HEADER_LEN - 24, "header")?;
        if len as usize != request.len() {
            return Err(Malformed("length in header differs from bytes read"));
        }
        Ok((
            InHeader {
                len,
                opcode,
                unique,
                nodeid,
            },
            &request[IN_HEADER_LEN..],
        ))
    }
}

/// `fuse_init_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InitIn {
    /// Kernel's major version.
    pub major: u32,
    /// Kernel's minor version.
    pub minor: u32,
    /// Kernel's read-ahead limit.
    pub max_readahead: u32,
    /// What the kernel supports (`flags | flags2 << 32`).
    pub flags: u64,
}

impl InitIn {
    /// Parses an INIT body.
    pub fn parse(body: &[u8]) -> Result<InitIn, Malformed> {
        let mut b = Body::new(body);
        let major = b.u32("init")?;
        let minor = b.u32("init")?;
        let max_readahead = b.u32("init")?;
        let low = b.u32("init")?;
        let high = if u64::from(low) & init_flag::INIT_EXT != 0 {
            b.u32("init flags2")?
        } else {
            0
        };
        Ok(InitIn {
            major,
            minor,
            max_readahead,
            flags: u64::from(low) | (u64::from(high) << 32),
        })
    }
}

/// Our answer to INIT (`fuse_init_out`): what the connection runs with for its whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InitOut {
    /// Minor version agreed on.
    pub minor: u32,
    /// Read-ahead limit.
    pub max_readahead: u32,
    /// Flags agreed on.
    pub flags: u64,
    /// Background request limit.
    pub max_background: u16,
    /// Congestion threshold.
    pub congestion_threshold: u16,
    /// Largest write.
    pub max_write: u32,
    /// Timestamp granularity, ns.
    pub time_gran: u32,
    /// Largest request in pages.
    pub max_pages: u16,
}

impl InitOut {
    /// The reply bytes (64-byte `fuse_init_out`).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(64);
        o.extend_from_slice(&KERNEL_VERSION.to_ne_bytes());
        o.extend_from_slice(&self.minor.to_ne_bytes());
        o.extend_from_slice(&self.max_readahead.to_ne_bytes());
        o.extend_from_slice(&(self.flags as u32).to_ne_bytes());
        o.extend_from_slice(&self.max_background.to_ne_bytes());
        o.extend_from_slice(&self.congestion_threshold.to_ne_bytes());
        o.extend_from_slice(&self.max_write.to_ne_bytes());
        o.extend_from_slice(&self.time_gran.to_ne_bytes());
        o.extend_from_slice(&self.max_pages.to_ne_bytes());
        o.extend_from_slice(&0u16.to_ne_bytes()); // map_alignment
        o.extend_from_slice(&((self.flags >> 32) as u32).to_ne_bytes());
        o.resize(64, 0); // max_stack_depth, request_timeout, unused
        o
    }
}

/// A file type, as in `st_mode`'s `S_IFMT` bits.
pub type Mode = u32;

/// `fuse_attr`, the attributes the kernel caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    /// Inode number (= node id).
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Nanoseconds of `mtime`.
    pub mtime_nsec: u32,
    /// Type and permission bits.
    pub mode: Mode,
    /// Links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of a device node.
    pub rdev: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

impl Attr {
    /// Appends the 88-byte `fuse_attr`; atime and ctime are the mtime.
    pub fn encode_into(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(&self.ino.to_ne_bytes());
        o.extend_from_slice(&self.size.to_ne_bytes());
        o.extend_from_slice(&self.blocks.to_ne_bytes());
        for _ in 0..3 {
            o.extend_from_slice(&(self.mtime as u64).to_ne_bytes());
        }
        for _ in 0..3 {
            o.extend_from_slice(&self.mtime_nsec.to_ne_bytes());
        }
        for v in [
            self.mode,
            self.nlink,
            self.uid,
            self.gid,
            self.rdev,
            self.blksize,
            0,
        ] {
            o.extend_from_slice(&v.to_ne_bytes());
        }
    }
}

/// A validity period as the kernel wants it: seconds and nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Ttl {
    /// Whole seconds.
    pub secs: u64,
    /// Nanoseconds.
    pub nsecs: u32,
}

impl From<std::time::Duration> for Ttl {
    fn from(d: std::time::Duration) -> Ttl {
        Ttl {
            secs: d.as_secs(),
            nsecs: d.subsec_nanos(),
        }
    }
}

/// Appends `fuse_entry_out` (128 bytes).
pub fn entry_out(o: &mut Vec<u8>, attr: &Attr, ttl: Ttl) {
    o.extend_from_slice(&attr.ino.to_ne_bytes());
    o.extend_from_slice(&0u64.to_ne_bytes()); // generation
    o.extend_from_slice(&ttl.secs.to_ne_bytes());
    o.extend_from_slice(&ttl.secs.to_ne_bytes());
    o.extend_from_slice(&ttl.nsecs.to_ne_bytes());
    o.extend_from_slice(&ttl.nsecs.to_ne_bytes());
    attr.encode_into(o);
}

/// `fuse_attr_out` (104 bytes).
pub fn attr_out(attr: &Attr, ttl: Ttl) -> Vec<u8> {
    let mut o = Vec::with_capacity(104);
    o.extend_from_slice(&ttl.secs.to_ne_bytes());
    o.extend_from_slice(&ttl.nsecs.to_ne_bytes());
    o.extend_from_slice(&0u32.to_ne_bytes());
    attr.encode_into(&mut o);
    o
}

/// `fuse_open_out` with a zero handle: handles carry no state.
pub fn open_out(open_flags: u32) -> Vec<u8> {
    let mut o = Vec::with_capacity(16);
    o.extend_from_slice(&0u64.to_ne_bytes());
    o.extend_from_slice(&open_flags.to_ne_bytes());
    o.extend_from_slice(&0u32.to_ne_bytes());
    o
}

/// `fuse_getxattr_out`: the size a value or list needs.
pub fn xattr_size_out(size: u32) -> Vec<u8> {
    let mut o = Vec::with_capacity(8);
    o.extend_from_slice(&size.to_ne_bytes());
    o.extend_from_slice(&0u32.to_ne_bytes());
    o
}

/// Filesystem totals for `fuse_statfs_out` (80 bytes).
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    /// Blocks in all.
    pub blocks: u64,
    /// Inodes in all.
    pub files: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
}

impl StatFs {
    /// The reply bytes; nothing is free on a read-only layer.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(80);
        for v in [self.blocks, 0, 0, self.files, 0] {
            o.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [self.bsize, self.namelen, self.bsize] {
            o.extend_from_slice(&v.to_ne_bytes());
        }
        o.resize(80, 0);
        o
    }
}

fn dirent_len(name: &OsStr) -> usize {
    (24 + name.len()).next_multiple_of(8)
}

/// Appends a `fuse_dirent` if it fits in `max` bytes in all; false when it does not.
pub fn push_dirent(
    o: &mut Vec<u8>,
    max: usize,
    ino: u64,
    off: u64,
    typ: u32,
    name: &OsStr,
) -> bool {
    if o.len() + dirent_len(name) > max {
        return false;
    }
    push_dirent_body(o, ino, off, typ, name);
    true
}

fn push_dirent_body(o: &mut Vec<u8>, ino: u64, off: u64, typ: u32, name: &OsStr) {
    let start = o.len();
    o.extend_from_slice(&ino.to_ne_bytes());
    o.extend_from_slice(&off.to_ne_bytes());
    o.extend_from_slice(&(name.len() as u32).to_ne_bytes());
    o.extend_from_slice(&typ.to_ne_bytes());
    o.extend_from_slice(name.as_bytes());
    o.resize(start + dirent_len(name), 0);
}

/// Appends a `fuse_direntplus` (entry, then dirent) if it fits in `max` bytes; false when not.
/// `attr` is `None` for an entry the kernel must not cache (node id 0).
pub fn push_direntplus(
    o: &mut Vec<u8>,
    max: usize,
    entry: (&Attr, Ttl),
    off: u64,
    name: &OsStr,
) -> bool {
    if o.len() + 128 + dirent_len(name) > max {
        return false;
    }
    let (attr, ttl) = entry;
    entry_out(o, attr, ttl);
    push_dirent_body(o, attr.ino, off, attr.mode >> 12, name);
    true
}

/// The 16-byte reply header.
pub fn out_header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&((IN_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        r.extend_from_slice(&opcode.to_ne_bytes());
        r.extend_from_slice(&unique.to_ne_bytes());
        r.extend_from_slice(&nodeid.to_ne_bytes());
        r.resize(IN_HEADER_LEN, 0);
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn header_and_name_parse() {
        let r = request(op::LOOKUP, 7, 1, b"etc\0");
        let (h, body) = InHeader::parse(&r).unwrap();
        assert_eq!((h.opcode, h.unique, h.nodeid), (op::LOOKUP, 7, 1));
        assert_eq!(Body::new(body).name().unwrap(), "etc");
    }

    #[test]
    fn short_or_lying_requests_are_refused() {
        assert!(InHeader::parse(&[0u8; 10]).is_err());
        let mut r = request(op::GETATTR, 1, 1, &[]);
        r.push(0); // one byte more than the header says
        assert!(InHeader::parse(&r).is_err());
        assert!(Body::new(b"no-nul").name().is_err());
        assert!(Body::new(&[1, 2]).u32("x").is_err());
        assert!(InitIn::parse(&[0u8; 12]).is_err());
    }

    #[test]
    fn init_reads_flags2_only_with_init_ext() {
        let mut body = Vec::new();
        for v in [7u32, 44, 1 << 20, init_flag::INIT_EXT as u32, 1 << 7] {
            body.extend_from_slice(&v.to_ne_bytes());
        }
        let init = InitIn::parse(&body).unwrap();
        assert_eq!(init.flags & init_flag::HAS_RESEND, init_flag::HAS_RESEND);
        body[12..16].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(InitIn::parse(&body).unwrap().flags, 0);
    }

    #[test]
    fn struct_sizes_match_the_kernel() {
        let a = Attr::default();
        let mut e = Vec::new();
        entry_out(&mut e, &a, Ttl { secs: 1, nsecs: 0 });
        assert_eq!(e.len(), 128);
        assert_eq!(attr_out(&a, Ttl { secs: 1, nsecs: 0 }).len(), 104);
        assert_eq!(open_out(0).len(), 16);
        let init = InitOut {
            minor: 40,
            max_readahead: 0,
            flags: 0,
            max_background: 0,
            congestion_threshold: 0,
            max_write: 0,
            time_gran: 0,
            max_pages: 0,
        };
        assert_eq!(init.encode().len(), 64);
        let s = StatFs {
            blocks: 0,
            files: 0,
            bsize: 0,
            namelen: 0,
        };
        assert_eq!(s.encode().len(), 80);
    }

    #[test]
    fn dirents_are_padded_and_bounded() {
        let mut o = Vec::new();
        assert!(push_dirent(&mut o, 64, 2, 1, 4, OsStr::new("a")));
        assert_eq!(o.len(), 32);
        assert!(!push_dirent(
            &mut o,
            64,
            3,
            2,
            4,
            OsStr::new("a-longer-name")
        ));
        assert_eq!(o.len(), 32);
        let a = Attr {
            ino: 5,
            mode: 0o040755,
            ..Attr::default()
        };
        let mut p = Vec::new();
        assert!(push_direntplus(
            &mut p,
            4096,
            (&a, Ttl { secs: 1, nsecs: 0 }),
            1,
            OsStr::new("d")
        ));
        assert_eq!(p.len(), 128 + 32);
        assert_eq!(
            u32::from_ne_bytes(p[128 + 20..128 + 24].try_into().unwrap()),
            4
        );
    }
}
