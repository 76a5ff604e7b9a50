//! Unpacking an ordinary layer (gzip, zstd or plain tar) into a snapshot directory the way
//! containerd's overlayfs applier does, so layers without a TOC also come through the piece
//! store and P2P instead of containerd's own download.
//!
//! OCI whiteouts become overlayfs ones (`.wh.NAME` → a 0/0 character device, `.wh..wh..opq` →
//! the opaque xattr); hardlinks, symlinks, devices, fifos, ownership, set-id bits, xattrs
//! (except `trusted.*`, which containerd refuses too) and times are kept.
//!
//! The archive is hostile until its digest is checked, and it is unpacked while it streams, so
//! the unpacker is confined ([`super::confined`]): paths resolve inside the snapshot directory
//! (a symlink in a path resolves against it, as in containerd), the last component is never
//! followed, attributes are set through descriptors of the inode the entry made, directory
//! attributes at the end are applied only if the very directory is still at its path, names
//! with `..` and empty or dot whiteouts are refused, hardlinks must name an entry already in
//! the directory, and bytes and entries are bounded ([`UnpackLimits`]).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};

use super::confined::{c_name, clear_at, kind_at, relative, Root, Slot};
pub use crate::config::UnpackLimits;

/// Why a layer could not be unpacked; each names the tar entry when there is one.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive is malformed or truncated.
    #[error("corrupt layer archive{}: {source}", entry_of(.entry))]
    Corrupt {
        /// The entry being read, if the archive got that far.
        entry: Option<String>,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// An entry is not usable as it stands.
    #[error("corrupt layer archive: entry {entry:?}: {reason}")]
    BadEntry {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry would escape the snapshot directory.
    #[error("layer entry {0:?} escapes the layer root (refused)")]
    Escapes(String),
    /// The layer unpacks to more than a limit allows.
    #[error("layer exceeds unpack.{limit} ({max}) at entry {entry:?}; raise it in the daemon config if the image is trusted")]
    Limit {
        /// The config key.
        limit: &'static str,
        /// Its value.
        max: u64,
        /// The entry that went over.
        entry: String,
    },
    /// Disk I/O failed.
    #[error("cannot unpack {path}: {source}")]
    Io {
        /// The entry.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn entry_of(entry: &Option<String>) -> String {
    entry
        .as_ref()
        .map(|e| format!(" at entry {e:?}"))
        .unwrap_or_default()
}

fn corrupt(entry: Option<&Path>) -> impl FnOnce(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Corrupt {
        entry: entry.map(|p| p.display().to_string()),
        source,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn nix_io(path: &Path) -> impl FnOnce(nix::Error) -> UnpackError + '_ {
    move |e| UnpackError::Io {
        path: path.display().to_string(),
        source: std::io::Error::from(e),
    }
}

/// The decompressing reader for a blob, by its magic bytes.
fn decompress<'a, R: std::io::BufRead + 'a>(
    mut blob: R,
) -> Result<Box<dyn Read + 'a>, UnpackError> {
    let head = blob.fill_buf().map_err(corrupt(None))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(blob)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(
            zstd::stream::read::Decoder::with_buffer(blob).map_err(corrupt(None))?,
        ))
    } else {
        Ok(Box::new(blob))
    }
}

/// Sets xattr `name` on the inode `fd` refers to.
fn set_xattr(fd: &OwnedFd, entry: &Path, name: &str, value: &[u8]) -> Result<(), UnpackError> {
    let cn = CString::new(name).map_err(|_| UnpackError::BadEntry {
        entry: entry.display().to_string(),
        reason: "NUL in an xattr name",
    })?;
    // SAFETY: an open descriptor, a valid C string and a buffer of the length passed.
    let r = unsafe {
        libc::fsetxattr(
            super::confined::raw(fd),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(UnpackError::Io {
            path: format!("{} (xattr {name})", entry.display()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[derive(Clone)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// Owner, mode (after chown, which clears set-id bits) and times, through the inode's own
/// descriptor.
fn apply_attrs_fd(fd: &OwnedFd, entry: &Path, a: &Attrs) -> Result<(), UnpackError> {
    fchown(fd, Some(Uid::from_raw(a.uid)), Some(Gid::from_raw(a.gid))).map_err(nix_io(entry))?;
    fchmod(fd, Mode::from_bits_truncate(a.mode & 0o7777)).map_err(nix_io(entry))?;
    let t = TimeSpec::new(a.mtime, 0);
    futimens(fd, &t, &t).map_err(nix_io(entry))
}

/// The same for a symlink or device node just made at `slot` (no descriptor can be opened
/// on them without side effects); nothing else can have replaced it since.
fn apply_attrs_at(slot: &Slot, entry: &Path, a: &Attrs, symlink: bool) -> Result<(), UnpackError> {
    let (dir, name) = (slot.dir.as_fd(), slot.name.as_c_str());
    let owner = (Some(Uid::from_raw(a.uid)), Some(Gid::from_raw(a.gid)));
    fchownat(dir, name, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(nix_io(entry))?;
    if !symlink {
        let mode = Mode::from_bits_truncate(a.mode & 0o7777);
        fchmodat(dir, name, mode, FchmodatFlags::NoFollowSymlink)
            .or_else(|e| match e {
                // Older kernels lack fchmodat2; the node is not a symlink, so following is moot.
                nix::Error::EOPNOTSUPP | nix::Error::ENOSYS => {
                    fchmodat(dir, name, mode, FchmodatFlags::FollowSymlink)
                }
                e => Err(e),
            })
            .map_err(nix_io(entry))?;
    }
    let t = TimeSpec::new(a.mtime, 0);
    utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(nix_io(entry))
}

/// What an entry says about itself, read before its data.
struct Entry {
    rel: PathBuf,
    kind: tar::EntryType,
    /// Its data's length (a PAX `size` record's when there is one, as the tar crate reads).
    size: u64,
    header: tar::Header,
    attrs: Attrs,
    xattrs: Vec<(String, Vec<u8>)>,
    link: Option<PathBuf>,
}

/// The entry's cleaned path, kind, attributes, xattrs (not `trusted.*`) and link target.
fn read_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Entry, UnpackError> {
    let raw = entry.path().map_err(corrupt(None))?.into_owned();
    let rel = relative(&raw).ok_or_else(|| UnpackError::Escapes(raw.display().to_string()))?;
    let header = entry.header().clone();
    let size = entry.size();
    let attrs = Attrs {
        mode: header.mode().map_err(corrupt(Some(&rel)))?,
        // Empty numeric fields read as 0, as Go's archive/tar does.
        uid: header.uid().unwrap_or(0) as u32,
        gid: header.gid().unwrap_or(0) as u32,
        mtime: header.mtime().unwrap_or(0) as i64,
    };
    let xattrs = match entry.pax_extensions() {
        Ok(Some(exts)) => exts
            .filter_map(Result::ok)
            .filter_map(|e| {
                let k = e.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_owned();
                (!k.starts_with("trusted.")).then(|| (k, e.value_bytes().to_vec()))
            })
            .collect(),
        _ => Vec::new(),
    };
    let link = entry
        .link_name()
        .map_err(corrupt(Some(&rel)))?
        .map(|l| l.into_owned());
    Ok(Entry {
        rel,
        size,
        kind: header.entry_type(),
        header,
        attrs,
        xattrs,
        link,
    })
}

/// Applies `.wh..wh..opq` (opaque directory) and `.wh.NAME` (deleted file); false if the
/// entry is not a whiteout. Other `.wh..wh.` names are metadata and skipped, as containerd
/// does; a whiteout of nothing, `.` or `..` is refused.
fn whiteout(root: &Root, rel: &Path, opaque_xattr: &str) -> Result<bool, UnpackError> {
    let name = rel.file_name().unwrap_or_default().as_bytes();
    let parent = rel.parent().unwrap_or(Path::new(""));
    if name == b".wh..wh..opq" {
        let dir = root.dir(parent).map_err(io(rel))?;
        set_xattr(&dir, rel, opaque_xattr, b"y")?;
        return Ok(true);
    }
    if name.starts_with(b".wh..wh.") {
        return Ok(true);
    }
    let Some(hidden) = name.strip_prefix(b".wh.") else {
        return Ok(false);
    };
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        return Err(UnpackError::BadEntry {
            entry: rel.display().to_string(),
            reason: "a whiteout must name a file",
        });
    }
    let slot = root
        .slot(&parent.join(OsStr::from_bytes(hidden)))
        .map_err(io(rel))?;
    clear_at(slot.dir.as_fd(), &slot.name, false).map_err(io(rel))?;
    mknodat(
        slot.dir.as_fd(),
        slot.name.as_c_str(),
        SFlag::S_IFCHR,
        Mode::empty(),
        0,
    )
    .map_err(nix_io(rel))?;
    Ok(true)
}

/// The entry's link target, which it must have.
fn link_target<'a>(e: &'a Entry, what: &'static str) -> Result<&'a Path, UnpackError> {
    e.link.as_deref().ok_or_else(|| UnpackError::BadEntry {
        entry: e.rel.display().to_string(),
        reason: what,
    })
}

/// A hardlink to an earlier entry of this layer (never a directory, never outside).
fn hard_link(root: &Root, slot: &Slot, e: &Entry) -> Result<(), UnpackError> {
    let raw = link_target(e, "a hardlink without a target")?;
    let outside = || {
        UnpackError::Escapes(format!(
            "{} (hardlink to {}, which this layer does not hold)",
            e.rel.display(),
            raw.display()
        ))
    };
    let target = relative(raw).ok_or_else(outside)?;
    let tname = c_name(target.file_name().ok_or_else(outside)?).map_err(io(&e.rel))?;
    let tdir = root
        .open_in(
            target.parent().unwrap_or(Path::new("")),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
        )
        .map_err(|_| outside())?;
    match kind_at(tdir.as_fd(), &tname).map_err(io(&e.rel))? {
        Some(k) if k != SFlag::S_IFDIR => {}
        _ => return Err(outside()),
    }
    clear_at(slot.dir.as_fd(), &slot.name, false).map_err(io(&e.rel))?;
    linkat(
        tdir.as_fd(),
        tname.as_c_str(),
        slot.dir.as_fd(),
        slot.name.as_c_str(),
        AtFlags::empty(),
    )
    .map_err(nix_io(&e.rel))
}

/// A character or block device, or a fifo.
fn special(slot: &Slot, e: &Entry) -> Result<(), UnpackError> {
    clear_at(slot.dir.as_fd(), &slot.name, false).map_err(io(&e.rel))?;
    let perms = Mode::from_bits_truncate(e.attrs.mode & 0o777);
    let (kind, dev) = match e.kind {
        tar::EntryType::Fifo => (SFlag::S_IFIFO, 0),
        kind => {
            let major = e.header.device_major().ok().flatten().unwrap_or(0);
            let minor = e.header.device_minor().ok().flatten().unwrap_or(0);
            let t = if kind == tar::EntryType::Char {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            (
                t,
                nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
            )
        }
    };
    mknodat(slot.dir.as_fd(), slot.name.as_c_str(), kind, perms, dev).map_err(nix_io(&e.rel))?;
    apply_attrs_at(slot, &e.rel, &e.attrs, false)
}

/// Creates a regular file exclusively (never through a symlink) and writes its data.
fn regular<R: Read>(
    slot: &Slot,
    e: &Entry,
    data: &mut tar::Entry<'_, R>,
) -> Result<(), UnpackError> {
    clear_at(slot.dir.as_fd(), &slot.name, false).map_err(io(&e.rel))?;
    let fd = nix::fcntl::openat(
        slot.dir.as_fd(),
        slot.name.as_c_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(nix_io(&e.rel))?;
    let mut f = File::from(fd);
    std::io::copy(data, &mut f).map_err(corrupt(Some(&e.rel)))?;
    let fd = OwnedFd::from(f);
    apply_attrs_fd(&fd, &e.rel, &e.attrs)?;
    apply_xattrs(&fd, e);
    Ok(())
}

/// The entry's xattrs on `fd`; ones the filesystem refuses are logged and skipped.
fn apply_xattrs(fd: &OwnedFd, e: &Entry) {
    for (k, v) in &e.xattrs {
        if let Err(err) = set_xattr(fd, &e.rel, k, v) {
            tracing::warn!(error = %err, "ignored an xattr the filesystem refuses");
        }
    }
}

/// A directory (kept if one is there); its attributes are applied at the end.
fn directory(root: &Root, slot: &Slot, e: &Entry) -> Result<(), UnpackError> {
    clear_at(slot.dir.as_fd(), &slot.name, true).map_err(io(&e.rel))?;
    if kind_at(slot.dir.as_fd(), &slot.name)
        .map_err(io(&e.rel))?
        .is_none()
    {
        mkdirat(
            slot.dir.as_fd(),
            slot.name.as_c_str(),
            Mode::from_bits_truncate(0o700),
        )
        .map_err(nix_io(&e.rel))?;
    }
    let fd = root.dir(&e.rel).map_err(io(&e.rel))?;
    apply_xattrs(&fd, e);
    Ok(())
}

/// Writes one (non-whiteout) entry; false if its kind is skipped.
fn write_entry<R: Read>(
    root: &Root,
    e: &Entry,
    data: &mut tar::Entry<'_, R>,
    dirs: &mut Vec<(PathBuf, Attrs)>,
) -> Result<bool, UnpackError> {
    use tar::EntryType as T;
    if !matches!(
        e.kind,
        T::Directory
            | T::Regular
            | T::Continuous
            | T::Symlink
            | T::Link
            | T::Char
            | T::Block
            | T::Fifo
    ) {
        // PAX/GNU headers are consumed by the tar crate; anything else is skipped like
        // containerd does.
        return Ok(false);
    }
    let slot = root.slot(&e.rel).map_err(io(&e.rel))?;
    match e.kind {
        T::Directory => {
            directory(root, &slot, e)?;
            dirs.push((e.rel.clone(), e.attrs.clone()));
        }
        T::Regular | T::Continuous => regular(&slot, e, data)?,
        T::Symlink => {
            let target = link_target(e, "a symlink without a target")?;
            clear_at(slot.dir.as_fd(), &slot.name, false).map_err(io(&e.rel))?;
            symlinkat(target, slot.dir.as_fd(), slot.name.as_c_str()).map_err(nix_io(&e.rel))?;
            apply_attrs_at(&slot, &e.rel, &e.attrs, true)?;
        }
        T::Link => hard_link(root, &slot, e)?,
        _ => special(&slot, e)?,
    }
    Ok(true)
}

/// Counts what an entry adds against the limits.
struct Budget {
    limits: UnpackLimits,
    bytes: u64,
    entries: u64,
}

impl Budget {
    fn take(&mut self, e: &Entry) -> Result<(), UnpackError> {
        let over = |limit, max| UnpackError::Limit {
            limit,
            max,
            entry: e.rel.display().to_string(),
        };
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(over("max_entries", self.limits.max_entries));
        }
        // Every entry's data counts (read or skipped), at the length the tar reader uses.
        self.bytes = self.bytes.saturating_add(e.size);
        if self.bytes > self.limits.max_bytes {
            return Err(over("max_bytes", self.limits.max_bytes));
        }
        Ok(())
    }
}

/// Directory attributes last, deepest first, so creating children does not change them; a
/// directory a later entry replaced (its path now a symlink or a file) is left alone.
fn finish_dirs(root: &Root, dirs: &[(PathBuf, Attrs)]) -> Result<(), UnpackError> {
    for (rel, a) in dirs.iter().rev() {
        match root.open_exact_dir(rel) {
            Ok(fd) => apply_attrs_fd(&fd, rel, a)?,
            Err(e) => {
                tracing::debug!(dir = %rel.display(), error = %e, "directory replaced by a later entry")
            }
        }
    }
    Ok(())
}

/// Most bytes the tar reader may take between two entries: their headers and extensions (PAX
/// records, GNU long names), which it holds in memory whole. containerd's applier (Go's
/// archive/tar) refuses extension headers over 1 MiB as well.
const MAX_HEADER_BYTES: u64 = (1 << 20) + (64 << 10);

/// The layer stream as the tar reader sees it: while it looks for the next entry, at most
/// [`MAX_HEADER_BYTES`] (`budget`); while an entry's data is read, no bound here (the data
/// is counted against `max_bytes`).
struct HeaderGuard<R> {
    inner: R,
    budget: std::rc::Rc<std::cell::Cell<Option<u64>>>,
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(left) = self.budget.get() {
            let left = left.checked_sub(n as u64).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "an entry's tar headers and extensions (PAX, GNU long names) exceed {MAX_HEADER_BYTES} bytes"
                    ),
                )
            })?;
            self.budget.set(Some(left));
        }
        Ok(n)
    }
}

/// Unpacks `blob` (a gzip, zstd or plain layer tar) into `root`, which must exist and be
/// empty, within `limits`. Blocking; run it off the async workers.
pub fn unpack(
    blob: impl Read,
    root: &Path,
    opaque_xattr: &str,
    limits: &UnpackLimits,
) -> Result<u64, UnpackError> {
    let root = Root::open(root).map_err(io(root))?;
    let budget_left = std::rc::Rc::new(std::cell::Cell::new(None));
    let mut archive = tar::Archive::new(HeaderGuard {
        inner: decompress(BufReader::with_capacity(1 << 20, blob))?,
        budget: budget_left.clone(),
    });
    let mut dirs: Vec<(PathBuf, Attrs)> = Vec::new();
    let mut budget = Budget {
        limits: *limits,
        bytes: 0,
        entries: 0,
    };
    let mut entries_done = 0u64;
    let mut entries = archive.entries().map_err(corrupt(None))?;
    loop {
        budget_left.set(Some(MAX_HEADER_BYTES));
        let next = entries.next();
        budget_left.set(None);
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(corrupt(None))?;
        let e = read_entry(&mut entry)?;
        budget.take(&e)?;
        let is_root = e.rel.as_os_str().is_empty();
        if !is_root
            && !whiteout(&root, &e.rel, opaque_xattr)?
            && write_entry(&root, &e, &mut entry, &mut dirs)?
        {
            entries_done += 1;
        }
        // Data nobody read (a whiteout's, a link's) is skipped here, not as header bytes.
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(corrupt(Some(&e.rel)))?;
    }
    finish_dirs(&root, &dirs)?;
    Ok(entries_done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn file_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn entries_whiteouts_and_attributes_land_like_overlayfs_expects() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (chown, mknod)"
        );
        let blob = layer(|b| {
            let mut h = header(tar::EntryType::Directory, 0o1777, 0);
            b.append_data(&mut h, "tmp/", std::io::empty()).unwrap();
            file_entry(b, "bin/suid", b"x", 0o4755);
            let mut h = header(tar::EntryType::Regular, 0o640, 3);
            h.set_uid(1234);
            h.set_gid(5678);
            b.append_data(&mut h, "owned", &b"abc"[..]).unwrap();
            let mut h = header(tar::EntryType::Link, 0o644, 0);
            b.append_link(&mut h, "hard", "owned").unwrap();
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, "link", "/etc/passwd").unwrap();
            let mut h = header(tar::EntryType::Char, 0o666, 0);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            b.append_data(&mut h, "null", std::io::empty()).unwrap();
            let mut h = header(tar::EntryType::Fifo, 0o644, 0);
            b.append_data(&mut h, "fifo", std::io::empty()).unwrap();
            b.append_pax_extensions([
                ("SCHILY.xattr.user.demo", &b"hi"[..]),
                ("SCHILY.xattr.trusted.x", &b"no"[..]),
            ])
            .unwrap();
            file_entry(b, "x", b"x", 0o644);
            file_entry(b, "gone/.wh.old", b"", 0o644);
            file_entry(b, "opq/.wh..wh..opq", b"", 0o644);
            file_entry(b, &format!("{}/long", "d".repeat(120)), b"long", 0o644);
        });
        let dir = tempfile::Builder::new().tempdir_in("/var/tmp").unwrap();
        let n = unpack(
            &blob[..],
            dir.path(),
            "trusted.overlay.opaque",
            &UnpackLimits::default(),
        )
        .unwrap();
        assert!(n >= 8);
        let md = |p: &str| std::fs::symlink_metadata(dir.path().join(p)).unwrap();
        assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
        assert_eq!(md("bin/suid").mode() & 0o7777, 0o4755);
        assert_eq!(
            (
                md("owned").uid(),
                md("owned").gid(),
                md("owned").mode() & 0o777
            ),
            (1234, 5678, 0o640)
        );
        assert_eq!(md("hard").ino(), md("owned").ino());
        assert_eq!(
            std::fs::read_link(dir.path().join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(
            md("null").file_type().is_char_device()
                && md("null").rdev() == nix::sys::stat::makedev(1, 3)
        );
        assert!(md("fifo").file_type().is_fifo());
        let wh = md("gone/old");
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "whiteout is a 0/0 char device"
        );
        let mut buf = [0u8; 8];
        let p = CString::new(dir.path().join("opq").as_os_str().as_bytes()).unwrap();
        let name = CString::new("trusted.overlay.opaque").unwrap();
        // SAFETY: valid C strings and buffer.
        let len = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(&buf[..len.max(0) as usize], b"y");
        assert_eq!(md("x").mtime(), 1_700_000_000);
        assert_eq!(
            std::fs::read(dir.path().join(format!("{}/long", "d".repeat(120)))).unwrap(),
            b"long"
        );
    }

    /// A file and a directory outside the root that hostile layers aim at, and what they were.
    struct Victims {
        file: PathBuf,
        dir: PathBuf,
        before: Vec<(u32, u32, u64, Vec<u8>, usize)>,
    }

    impl Victims {
        fn new(base: &Path) -> Victims {
            let dir = base.join("host");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("secret");
            std::fs::write(&file, b"host secret").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            let mut v = Victims {
                file,
                dir,
                before: Vec::new(),
            };
            v.before = v.state();
            v
        }

        /// Mode, owner, link count, bytes and number of xattrs of both.
        fn state(&self) -> Vec<(u32, u32, u64, Vec<u8>, usize)> {
            [&self.file, &self.dir]
                .iter()
                .map(|p| {
                    let m = std::fs::symlink_metadata(p).unwrap();
                    let bytes = if m.is_file() {
                        std::fs::read(p).unwrap()
                    } else {
                        Vec::new()
                    };
                    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
                    // SAFETY: a valid C string; a null buffer asks for the size only.
                    let xattrs = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
                    (m.mode(), m.uid(), m.nlink(), bytes, xattrs.max(0) as usize)
                })
                .collect()
        }
    }

    fn symlink_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, path, target).unwrap();
    }

    fn hardlink_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        b.append_link(&mut h, path, target).unwrap();
    }

    /// Every way a layer has been seen to reach outside its directory: each is refused with an
    /// error naming the entry, or confined to the root; either way the victims outside keep
    /// their mode, owner, link count, bytes and xattrs.
    #[test]
    fn hostile_layers_change_nothing_outside_the_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (chown, mknod)"
        );
        let base = tempfile::Builder::new().tempdir_in("/var/tmp").unwrap();
        let v = Victims::new(base.path());
        let (file, dir) = (v.file.to_str().unwrap(), v.dir.to_str().unwrap());
        let suid_dir_then_symlink = layer(|b| {
            let mut h = header(tar::EntryType::Directory, 0o4777, 0);
            b.append_data(&mut h, "d/", std::io::empty()).unwrap();
            symlink_entry(b, "d", file);
        });
        let hardlink_through_symlink = layer(|b| {
            symlink_entry(b, "s", dir);
            b.append_pax_extensions([("SCHILY.xattr.user.pwn", &b"1"[..])])
                .unwrap();
            hardlink_entry(b, "h", "s/secret");
        });
        // (name, layer, Some(error text) if refused, None if confined)
        let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
            (
                "dot-dot name",
                layer(|b| {
                    let mut h = header(tar::EntryType::Regular, 0o644, 1);
                    h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../host/pwn!");
                    h.set_cksum();
                    b.append(&h, &b"x"[..]).unwrap();
                }),
                Some("../host/pwn!"),
            ),
            (
                "set-uid directory replaced by a symlink to a host file",
                suid_dir_then_symlink,
                None,
            ),
            (
                "write through a symlink to a host directory",
                layer(|b| {
                    symlink_entry(b, "s", dir);
                    file_entry(b, "s/secret", b"pwned", 0o4777);
                }),
                Some("s/secret"),
            ),
            (
                "hardlink through a symlink, with an xattr",
                hardlink_through_symlink,
                Some("h (hardlink"),
            ),
            (
                "hardlink to an absolute host path",
                layer(|b| hardlink_entry(b, "h", file)),
                Some("h (hardlink"),
            ),
            (
                "hardlink climbing out",
                layer(|b| hardlink_entry(b, "h", "../host/secret")),
                Some("h (hardlink"),
            ),
            (
                "file over a symlink to a host file",
                layer(|b| {
                    symlink_entry(b, "f", file);
                    file_entry(b, "f", b"pwned", 0o4777);
                }),
                None,
            ),
            (
                "device over a symlink to a host file",
                layer(|b| {
                    symlink_entry(b, "n", file);
                    let mut h = header(tar::EntryType::Char, 0o4777, 0);
                    b.append_data(&mut h, "n", std::io::empty()).unwrap();
                }),
                None,
            ),
            (
                "climbing symlink as a parent",
                layer(|b| {
                    symlink_entry(b, "up", "../../../../../../..");
                    file_entry(b, &format!("up{file}"), b"pwned", 0o644);
                }),
                None,
            ),
            (
                "opaque marker through a symlinked directory",
                layer(|b| {
                    symlink_entry(b, "o", dir);
                    file_entry(b, "o/.wh..wh..opq", b"", 0o644);
                }),
                Some("o/.wh..wh..opq"),
            ),
            (
                "whiteout of a host file through a symlink",
                layer(|b| {
                    symlink_entry(b, "w", dir);
                    file_entry(b, "w/.wh.secret", b"", 0o644);
                }),
                Some("w/.wh.secret"),
            ),
            (
                "whiteout of ..",
                layer(|b| file_entry(b, ".wh...", b"", 0o644)),
                Some(".wh..."),
            ),
            (
                "whiteout of .",
                layer(|b| file_entry(b, "sub/.wh..", b"", 0o644)),
                Some("sub/.wh.."),
            ),
            (
                "whiteout of nothing",
                layer(|b| file_entry(b, ".wh.", b"", 0o644)),
                Some(".wh."),
            ),
        ];
        for (what, blob, refused) in cases {
            let root = base.path().join("root");
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir(&root).unwrap();
            let got = unpack(
                &blob[..],
                &root,
                "trusted.overlay.opaque",
                &UnpackLimits::default(),
            );
            match (refused, &got) {
                (Some(entry), Err(e)) => {
                    assert!(
                        e.to_string().contains(entry),
                        "{what}: {e} does not name {entry}"
                    )
                }
                (None, Ok(_)) => {}
                (want, got) => panic!("{what}: expected refused={want:?}, got {got:?}"),
            }
            assert_eq!(v.state(), v.before, "{what} changed a host file");
            assert_eq!(
                std::fs::read_dir(&v.dir).unwrap().count(),
                1,
                "{what} added a host file"
            );
        }
    }

    /// Limits stop a tar bomb (bytes) and an inode flood (entries), naming the entry.
    #[test]
    fn limits_stop_bombs() {
        let dir = tempfile::Builder::new().tempdir_in("/var/tmp").unwrap();
        let limits = UnpackLimits {
            max_bytes: 1 << 20,
            max_entries: 100,
        };
        let bomb = layer(|b| file_entry(b, "zeros", &vec![0u8; 2 << 20], 0o644));
        assert!(bomb.len() < 64 << 10, "it compresses well");
        let e = unpack(&bomb[..], dir.path(), "trusted.overlay.opaque", &limits).unwrap_err();
        assert!(
            matches!(&e, UnpackError::Limit { limit: "max_bytes", entry, .. } if entry == "zeros"),
            "{e}"
        );
        let flood = layer(|b| (0..200).for_each(|i| file_entry(b, &format!("f{i}"), b"", 0o644)));
        let root = dir.path().join("flood");
        std::fs::create_dir(&root).unwrap();
        let e = unpack(&flood[..], &root, "trusted.overlay.opaque", &limits).unwrap_err();
        assert!(
            e.to_string().contains("max_entries") && e.to_string().contains("f100"),
            "{e}"
        );
        // A PAX `size` record is the length the tar reader uses: it is what counts.
        let pax_sized = layer(|b| {
            b.append_pax_extensions([("size", &b"2097152"[..])])
                .unwrap();
            let mut h = header(tar::EntryType::Regular, 0o644, 0);
            h.set_path("paxsized").unwrap();
            h.set_cksum();
            b.append(&h, &vec![1u8; 2 << 20][..]).unwrap();
        });
        let root = dir.path().join("pax-size");
        std::fs::create_dir(&root).unwrap();
        let e = unpack(&pax_sized[..], &root, "trusted.overlay.opaque", &limits).unwrap_err();
        assert!(
            matches!(&e, UnpackError::Limit { limit: "max_bytes", entry, .. } if entry == "paxsized"),
            "{e}"
        );
        // An extension header is held in memory whole by the tar reader: bounded before.
        let huge_pax = layer(|b| {
            b.append_pax_extensions([("comment", &vec![b'A'; 4 << 20][..])])
                .unwrap();
            file_entry(b, "after", b"x", 0o644);
        });
        let root = dir.path().join("pax-huge");
        std::fs::create_dir(&root).unwrap();
        let e = unpack(&huge_pax[..], &root, "trusted.overlay.opaque", &limits).unwrap_err();
        assert!(e.to_string().contains("extensions"), "{e}");
        assert!(!root.join("after").exists());
        // Truncated archives are an error, not a partial success.
        let good = layer(|b| file_entry(b, "f", &vec![7u8; 100_000], 0o644));
        let root = dir.path().join("trunc");
        std::fs::create_dir(&root).unwrap();
        assert!(unpack(
            &good[..good.len() / 2],
            &root,
            "trusted.overlay.opaque",
            &UnpackLimits::default()
        )
        .is_err());
    }
}
