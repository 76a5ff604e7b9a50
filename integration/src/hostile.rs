//! Hostile layers: tar archives no well-behaved writer makes (names with `..` or a leading
//! `/`, PAX records on any entry, headers that lie about their size), OCI images built from
//! such raw tars, and the state of the host files a hostile layer aims at (mode, owner, link
//! count, times, xattrs, bytes), so a test can tell that nothing outside a snapshot changed.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::oci::BuiltImage;

/// Modification time of every entry [`RawTar`] writes (unless told otherwise).
pub const MTIME: u64 = 1_700_000_000;

/// A layer tar written entry by entry, names and link targets copied verbatim into the GNU
/// header (no check for `..` or a leading `/`; at most 100 bytes each, or use
/// [`RawTar::gnu_long_name`]).
pub struct RawTar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for RawTar {
    fn default() -> Self {
        RawTar::new()
    }
}

fn copy_field(field: &mut [u8], value: &str) -> Result<()> {
    let v = value.as_bytes();
    if v.len() > field.len() {
        bail!(
            "{value:?} is longer than the {}-byte header field",
            field.len()
        );
    }
    field.fill(0);
    field[..v.len()].copy_from_slice(v);
    Ok(())
}

impl RawTar {
    /// An empty archive.
    pub fn new() -> RawTar {
        RawTar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// A GNU header of `kind` for `name` (and `link`), root-owned, [`MTIME`], checksummed.
    pub fn header(
        kind: tar::EntryType,
        name: &str,
        link: &str,
        mode: u32,
        size: u64,
    ) -> Result<tar::Header> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size);
        h.set_mtime(MTIME);
        let gnu = h.as_gnu_mut().context("a GNU header")?;
        copy_field(&mut gnu.name, name)?;
        copy_field(&mut gnu.linkname, link)?;
        h.set_cksum();
        Ok(h)
    }

    /// Appends `h` (re-checksummed) and `data`, padded to a block. The header's size is not
    /// checked against the data: a header may lie.
    pub fn entry(&mut self, mut h: tar::Header, data: &[u8]) -> Result<&mut Self> {
        h.set_cksum();
        self.b.append(&h, data)?;
        Ok(self)
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<&mut Self> {
        let h = Self::header(tar::EntryType::Regular, path, "", mode, data.len() as u64)?;
        self.entry(h, data)
    }

    /// A directory with owner and modification time.
    pub fn dir_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> Result<&mut Self> {
        let mut h = Self::header(tar::EntryType::Directory, path, "", mode, 0)?;
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        self.entry(h, &[])
    }

    /// A root-owned directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self> {
        self.dir_owned(path, mode, 0, 0, MTIME)
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let h = Self::header(tar::EntryType::Symlink, path, target, 0o777, 0)?;
        self.entry(h, &[])
    }

    /// A hard link.
    pub fn hardlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let h = Self::header(tar::EntryType::Link, path, target, 0o644, 0)?;
        self.entry(h, &[])
    }

    /// A device node or fifo (`kind` `Char`, `Block` or `Fifo`).
    pub fn node(
        &mut self,
        kind: tar::EntryType,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self> {
        let mut h = Self::header(kind, path, "", mode, 0)?;
        h.set_device_major(major)?;
        h.set_device_minor(minor)?;
        self.entry(h, &[])
    }

    /// PAX records for the next entry (`path`, `linkpath`, `size`, `SCHILY.xattr.NAME`, ...).
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> Result<&mut Self> {
        self.b.append_pax_extensions(records.iter().copied())?;
        Ok(self)
    }

    /// An xattr for the next entry (a `SCHILY.xattr.` PAX record).
    pub fn xattr(&mut self, name: &str, value: &[u8]) -> Result<&mut Self> {
        let key = format!("SCHILY.xattr.{name}");
        self.pax(&[(key.as_str(), value)])
    }

    /// A GNU long-name record: `name` becomes the next entry's path, whatever its header says.
    pub fn gnu_long_name(&mut self, name: &str) -> Result<&mut Self> {
        let mut data = name.as_bytes().to_vec();
        data.push(0);
        let h = Self::header(
            tar::EntryType::GNULongName,
            "././@LongLink",
            "",
            0o644,
            data.len() as u64,
        )?;
        self.entry(h, &data)
    }

    /// The archive so far without its end-of-archive blocks, to be concatenated with others
    /// ([`finish_tar`]).
    pub fn body(self) -> Result<Vec<u8>> {
        let mut tar = self.b.into_inner()?;
        // The builder ends an archive with exactly two zero blocks.
        tar.truncate(tar.len() - 1024);
        Ok(tar)
    }
}

/// A complete archive of `bodies` (from [`RawTar::body`]) one after the other.
pub fn finish_tar(bodies: &[&[u8]]) -> Vec<u8> {
    let mut out: Vec<u8> = bodies.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// One PAX record `"<len> key=value\n"`, its length counting itself (for hand-made PAX
/// headers of any size).
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

pub use crate::oci::build_image_from_tars;

/// Pushes every `(image, reference)` with [`crate::oci::push`], `parallel` at a time.
pub fn push_all(images: &[(BuiltImage, String)], parallel: usize) -> Result<()> {
    for chunk in images.chunks(parallel.max(1)) {
        std::thread::scope(|s| {
            let pushes: Vec<_> = chunk
                .iter()
                .map(|(img, r)| {
                    s.spawn(move || crate::oci::push(img, r).with_context(|| format!("push {r}")))
                })
                .collect();
            pushes
                .into_iter()
                .try_for_each(|p| p.join().expect("push thread"))
        })?;
    }
    Ok(())
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("NUL in {}", p.display()))
}

/// Sets xattr `name` on `path` itself (not following a symlink).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let (p, n) = (c_path(path)?, CString::new(name)?);
    // SAFETY: valid C strings and a buffer of the length passed.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setxattr {name} on {}", path.display()));
    }
    Ok(())
}

/// Every xattr of `path` itself (not following a symlink), sorted by name.
pub fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let p = c_path(path)?;
    // SAFETY: a valid C string; a null buffer asks for the size only.
    let len = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("listxattr {}", path.display()));
    }
    let mut names = vec![0u8; len as usize];
    // SAFETY: a valid C string and a buffer of the length passed.
    let len = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("listxattr {}", path.display()));
    }
    names.truncate(len as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let n = CString::new(name)?;
        let mut value = vec![0u8; 64 << 10];
        // SAFETY: valid C strings and a buffer of the length passed.
        let got = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if got < 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| {
                format!(
                    "getxattr {} on {}",
                    String::from_utf8_lossy(name),
                    path.display()
                )
            });
        }
        value.truncate(got as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out.sort();
    Ok(out)
}

/// What a host path holds: its inode's metadata (change time included, which moves on any
/// chmod, chown, link or xattr change), its xattrs and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// The path.
    pub path: PathBuf,
    /// Inode number.
    pub ino: u64,
    /// File type and mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Status change time (seconds, nanoseconds).
    pub ctime: (i64, i64),
    /// Every xattr, sorted.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// A file's bytes, a directory's sorted names, a symlink's target.
    pub content: Vec<Vec<u8>>,
}

impl HostState {
    /// The state of `path` itself (a symlink is not followed).
    pub fn of(path: &Path) -> Result<HostState> {
        let m = std::fs::symlink_metadata(path).with_context(|| format!("{}", path.display()))?;
        let content = if m.is_file() {
            vec![std::fs::read(path)?]
        } else if m.is_dir() {
            let mut names: Vec<Vec<u8>> = std::fs::read_dir(path)?
                .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
                .collect::<std::io::Result<_>>()?;
            names.sort();
            names
        } else if m.file_type().is_symlink() {
            vec![std::fs::read_link(path)?.as_os_str().as_bytes().to_vec()]
        } else {
            Vec::new()
        };
        Ok(HostState {
            path: path.to_owned(),
            ino: m.ino(),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            nlink: m.nlink(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            xattrs: xattrs(path)?,
            content,
        })
    }
}

/// The peak resident set size of process `pid` in bytes (`VmHWM`), if it runs.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// Resets the peak resident set size of process `pid` to its current one (`clear_refs` 5).
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("reset the peak RSS of {pid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_names_and_lying_headers_reach_the_archive_as_written() {
        let mut t = RawTar::new();
        t.file("../up", b"x", 0o644).unwrap();
        t.symlink("/abs", "/etc/passwd").unwrap();
        t.pax(&[("size", b"3")]).unwrap();
        let h = RawTar::header(tar::EntryType::Regular, "paxsized", "", 0o644, 0).unwrap();
        t.entry(h, b"abc").unwrap();
        t.gnu_long_name("long/../name").unwrap();
        t.file("short", b"", 0o644).unwrap();
        let body = t.body().unwrap();
        let tar = finish_tar(&[&body]);
        let mut a = tar::Archive::new(tar.as_slice());
        let got: Vec<(String, u64)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().display().to_string(), e.size())
            })
            .collect();
        assert_eq!(
            got,
            [
                ("../up".to_owned(), 1),
                ("/abs".to_owned(), 0),
                ("paxsized".to_owned(), 3),
                ("long/../name".to_owned(), 0)
            ]
        );
        for s in ["a", "ab", &"x".repeat(200)] {
            let r = pax_record("k", s.as_bytes());
            let n: usize = String::from_utf8_lossy(&r)
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(n, r.len());
        }
    }

    #[test]
    fn host_state_sees_xattrs_and_metadata() {
        let dir = tempfile::Builder::new().tempdir_in("/var/tmp").unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"bytes").unwrap();
        let before = HostState::of(&f).unwrap();
        set_xattr(&f, "user.t", b"v").unwrap();
        let after = HostState::of(&f).unwrap();
        assert_eq!(after.xattrs, [("user.t".to_owned(), b"v".to_vec())]);
        assert_ne!(before, after);
        assert_eq!(after.content, [b"bytes".to_vec()]);
        assert_eq!(HostState::of(dir.path()).unwrap().content, [b"f".to_vec()]);
    }
}
