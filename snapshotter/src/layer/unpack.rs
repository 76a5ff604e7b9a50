//! Unpacking an ordinary layer (gzip, zstd or plain tar) into a snapshot directory the way
//! containerd's overlayfs applier does, so layers without a TOC also come through the piece
//! store and P2P instead of containerd's own download.
//!
//! OCI whiteouts become overlayfs ones (`.wh.NAME` → a 0/0 character device, `.wh..wh..opq` →
//! the opaque xattr); hardlinks, symlinks, devices, fifos, ownership, set-id bits, xattrs
//! (except `trusted.*`, which containerd refuses too) and times are kept. Entries that would
//! land outside the directory — `..` components, hardlinks to outside, paths through a symlink
//! — are refused, and the whole layer with them (containerd then unpacks it itself).

use std::ffi::{CString, OsStr};
use std::io::{BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{mkfifo, Gid, Uid};

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

/// A path inside the layer, with `.` and leading `/` removed; `..` is refused.
fn clean(path: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Escapes(path.display().to_string()))
            }
        }
    }
    Ok(out)
}

/// Creates the parents of `rel` under `root`, refusing to go through a symlink.
fn parents(root: &Path, rel: &Path) -> Result<(), UnpackError> {
    let mut cur = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::Escapes(rel.display().to_string()))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => std::fs::remove_file(&cur).map_err(io(&cur))?,
                Err(_) => {}
            }
            if !cur.exists() {
                std::fs::create_dir(&cur).map_err(io(&cur))?;
            }
        }
    }
    Ok(())
}

/// Removes whatever is at `p` (not following symlinks), unless it is a directory and `keep_dir`.
fn clear(p: &Path, keep_dir: bool) -> Result<(), UnpackError> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).map_err(io(p)),
        Ok(_) => std::fs::remove_file(p).map_err(io(p)),
        Err(_) => Ok(()),
    }
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> Result<(), UnpackError> {
    let bad = |reason| UnpackError::BadEntry {
        entry: p.display().to_string(),
        reason,
    };
    let cp = CString::new(p.as_os_str().as_bytes()).map_err(|_| bad("NUL in its path"))?;
    let cn = CString::new(name).map_err(|_| bad("NUL in an xattr name"))?;
    // SAFETY: valid C strings and a buffer of the length passed.
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(UnpackError::Io {
            path: format!("{} (xattr {name})", p.display()),
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

fn apply_attrs(p: &Path, a: &Attrs, symlink: bool) -> Result<(), UnpackError> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        p,
        Some(Uid::from_raw(a.uid)),
        Some(Gid::from_raw(a.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(nix_io(p))?;
    if !symlink {
        // After chown, which clears set-id bits.
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(a.mode & 0o7777))
            .map_err(io(p))?;
    }
    let t = TimeSpec::new(a.mtime, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(nix_io(p))
}

/// What an entry says about itself, read before its data.
struct Entry {
    rel: PathBuf,
    kind: tar::EntryType,
    header: tar::Header,
    attrs: Attrs,
    xattrs: Vec<(String, Vec<u8>)>,
    link: Option<PathBuf>,
}

/// The entry's cleaned path, kind, attributes, xattrs (not `trusted.*`) and link target.
fn read_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Entry, UnpackError> {
    let raw = entry.path().map_err(corrupt(None))?.into_owned();
    let rel = clean(&raw)?;
    let header = entry.header().clone();
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
        kind: header.entry_type(),
        header,
        attrs,
        xattrs,
        link,
    })
}

/// Applies `.wh..wh..opq` (opaque directory) and `.wh.NAME` (deleted file); false if the
/// entry is not a whiteout.
fn whiteout(root: &Path, rel: &Path, opaque_xattr: &str) -> Result<bool, UnpackError> {
    let name = rel.file_name().unwrap_or_default().as_bytes();
    let dir_of = rel
        .parent()
        .map(|p| root.join(p))
        .unwrap_or_else(|| root.to_path_buf());
    if name == b".wh..wh..opq" {
        set_xattr(&dir_of, opaque_xattr, b"y")?;
        return Ok(true);
    }
    let Some(hidden) = name.strip_prefix(b".wh.") else {
        return Ok(false);
    };
    let target = dir_of.join(OsStr::from_bytes(hidden));
    clear(&target, false)?;
    mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0).map_err(nix_io(&target))?;
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
fn hard_link(root: &Path, dest: &Path, e: &Entry) -> Result<(), UnpackError> {
    let target = clean(link_target(e, "a hardlink without a target")?)?;
    let src = root.join(&target);
    match std::fs::symlink_metadata(&src) {
        Ok(m) if !m.is_dir() => {}
        _ => {
            return Err(UnpackError::Escapes(format!(
                "{} (hardlink to {} outside this layer)",
                e.rel.display(),
                target.display()
            )))
        }
    }
    clear(dest, false)?;
    std::fs::hard_link(&src, dest).map_err(io(dest))
}

/// A character or block device, or a fifo.
fn special(dest: &Path, e: &Entry) -> Result<(), UnpackError> {
    clear(dest, false)?;
    let perms = Mode::from_bits_truncate(e.attrs.mode & 0o777);
    if e.kind == tar::EntryType::Fifo {
        mkfifo(dest, perms).map_err(nix_io(dest))?;
    } else {
        let major = e.header.device_major().ok().flatten().unwrap_or(0);
        let minor = e.header.device_minor().ok().flatten().unwrap_or(0);
        let t = if e.kind == tar::EntryType::Char {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        let dev = nix::sys::stat::makedev(u64::from(major), u64::from(minor));
        mknod(dest, t, perms, dev).map_err(nix_io(dest))?;
    }
    apply_attrs(dest, &e.attrs, false)
}

/// Writes one (non-whiteout) entry at `dest`; false if its kind is skipped.
fn write_entry<R: Read>(
    root: &Path,
    dest: &Path,
    e: &Entry,
    data: &mut tar::Entry<'_, R>,
    dirs: &mut Vec<(PathBuf, Attrs)>,
) -> Result<bool, UnpackError> {
    match e.kind {
        tar::EntryType::Directory => {
            clear(dest, true)?;
            if !dest.exists() {
                std::fs::create_dir(dest).map_err(io(dest))?;
            }
            dirs.push((dest.to_owned(), e.attrs.clone()));
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            clear(dest, false)?;
            let mut f = std::fs::File::create(dest).map_err(io(dest))?;
            std::io::copy(data, &mut f).map_err(corrupt(Some(&e.rel)))?;
            apply_attrs(dest, &e.attrs, false)?;
        }
        tar::EntryType::Symlink => {
            let target = link_target(e, "a symlink without a target")?;
            clear(dest, false)?;
            symlink(target, dest).map_err(io(dest))?;
            apply_attrs(dest, &e.attrs, true)?;
        }
        tar::EntryType::Link => hard_link(root, dest, e)?,
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => special(dest, e)?,
        // PAX/GNU headers are consumed by the tar crate; anything else is skipped like
        // containerd does.
        _ => return Ok(false),
    }
    Ok(true)
}

/// Unpacks `blob` (a gzip, zstd or plain layer tar) into `root`, which must exist and be
/// empty. Blocking; run it off the async workers.
pub fn unpack(blob: impl Read, root: &Path, opaque_xattr: &str) -> Result<u64, UnpackError> {
    let mut archive = tar::Archive::new(decompress(BufReader::with_capacity(1 << 20, blob))?);
    let mut dirs: Vec<(PathBuf, Attrs)> = Vec::new();
    let mut entries_done = 0u64;
    for entry in archive.entries().map_err(corrupt(None))? {
        let mut entry = entry.map_err(corrupt(None))?;
        let e = read_entry(&mut entry)?;
        if e.rel.as_os_str().is_empty() {
            continue;
        }
        parents(root, &e.rel)?;
        if whiteout(root, &e.rel, opaque_xattr)? {
            continue;
        }
        let dest = root.join(&e.rel);
        if !write_entry(root, &dest, &e, &mut entry, &mut dirs)? {
            continue;
        }
        for (k, v) in &e.xattrs {
            if let Err(err) = set_xattr(&dest, k, v) {
                tracing::warn!(error = %err, "ignored an xattr the filesystem refuses");
            }
        }
        entries_done += 1;
    }
    // Directory attributes last, deepest first, so creating children does not change them.
    for (d, a) in dirs.iter().rev() {
        apply_attrs(d, a, false)?;
    }
    Ok(entries_done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

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

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
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
            file(b, "bin/suid", b"x", 0o4755);
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
            file(b, "x", b"x", 0o644);
            file(b, "gone/.wh.old", b"", 0o644);
            file(b, "opq/.wh..wh..opq", b"", 0o644);
            file(b, &format!("{}/long", "d".repeat(120)), b"long", 0o644);
        });
        let dir = tempfile::Builder::new().tempdir_in("/var/tmp").unwrap();
        let n = unpack(&blob[..], dir.path(), "trusted.overlay.opaque").unwrap();
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

    #[test]
    fn escaping_entries_are_refused() {
        let dir = tempfile::Builder::new().tempdir_in("/var/tmp").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = dir.path().join("root");
        for (what, blob) in [
            (
                "dot-dot",
                layer(|b| {
                    let mut h = header(tar::EntryType::Regular, 0o644, 1);
                    h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../outside/x");
                    h.set_cksum();
                    b.append(&h, &b"x"[..]).unwrap();
                }),
            ),
            (
                "through a symlink",
                layer(|b| {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    b.append_link(&mut h, "evil", outside.to_str().unwrap())
                        .unwrap();
                    file(b, "evil/x", b"x", 0o644);
                }),
            ),
            (
                "hardlink outside",
                layer(|b| {
                    let mut h = header(tar::EntryType::Link, 0o644, 0);
                    b.append_link(&mut h, "h", "missing/elsewhere").unwrap();
                }),
            ),
        ] {
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir(&root).unwrap();
            let e = unpack(&blob[..], &root, "trusted.overlay.opaque").unwrap_err();
            assert!(matches!(e, UnpackError::Escapes(_)), "{what}: {e}");
            assert!(!outside.join("x").exists(), "{what} wrote outside");
        }
        // Truncated archives are an error, not a partial success.
        let good = layer(|b| file(b, "f", &vec![7u8; 100_000], 0o644));
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::create_dir(&root).unwrap();
        assert!(unpack(&good[..good.len() / 2], &root, "trusted.overlay.opaque").is_err());
    }
}
