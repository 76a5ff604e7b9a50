//! A directory tree an untrusted archive writes into, and nothing outside it: every path is
//! resolved by the kernel with `openat2(RESOLVE_IN_ROOT)`, so `..`, absolute symlinks and
//! symlinks pointing out resolve inside the root (as containerd's applier resolves them), and
//! every change is made relative to a descriptor of the entry's parent directory, never
//! through a path that a later entry could redirect. The last component of a path is never
//! followed.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Mode of directories created because an entry needs them as parents (as containerd).
const PARENT_MODE: u32 = 0o755;

/// The root of an unpack.
pub struct Root {
    fd: OwnedFd,
}

/// A parent directory and the last component of a path in it.
pub struct Slot {
    /// The parent directory.
    pub dir: OwnedFd,
    /// The entry's own name in it (no `/`, never `.` or `..`).
    pub name: CString,
}

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}

impl Root {
    /// Opens `path`, which must be a directory.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Root { fd })
    }

    /// The root directory itself.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens `rel` inside the root, its symlinks resolved inside the root; `flags` are added to
    /// `O_CLOEXEC`. An empty `rel` is the root.
    pub fn open_in(&self, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
        let path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(self.fd.as_fd(), path, how).map_err(|e| {
            if e == Errno::ENOSYS {
                io::Error::other(
                    "this kernel lacks openat2 (Linux 5.6+); layers cannot be unpacked safely here",
                )
            } else {
                errno(e)
            }
        })
    }

    /// The directory exactly at `rel`: no symlink anywhere on the way (`O_NOFOLLOW` and
    /// `RESOLVE_NO_SYMLINKS`), for attributes applied after later entries may have moved it.
    pub fn open_exact_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        openat2(self.fd.as_fd(), rel, how).map_err(errno)
    }

    /// The directory `rel` (inside the root), created with its missing parents (mode 0755).
    /// A component that exists and is not a directory is an error (`ENOTDIR`).
    pub fn dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        let dir_flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY;
        match self.open_in(rel, dir_flags) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            other => return other,
        }
        let mut cur = self.open_in(Path::new(""), dir_flags)?;
        let mut walked = PathBuf::new();
        for c in rel.components() {
            walked.push(c);
            match self.open_in(&walked, dir_flags) {
                Ok(fd) => cur = fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    // Created in the directory reached so far, by its name only.
                    // (EEXIST: a symlink to a directory the root lacks; opening it fails.)
                    match mkdirat(
                        cur.as_fd(),
                        c.as_os_str(),
                        Mode::from_bits_truncate(PARENT_MODE),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(errno(e)),
                    }
                    cur = self.open_in(&walked, dir_flags)?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(cur)
    }

    /// The parent directory of `rel` (created if missing) and `rel`'s last component.
    pub fn slot(&self, rel: &Path) -> io::Result<Slot> {
        let name = rel
            .file_name()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok(Slot {
            dir: self.dir(parent)?,
            name: c_name(name)?,
        })
    }
}

/// `name` as a C string; NUL is refused.
pub fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a file name"))
}

/// What is at `name` in `dir`, not following a symlink; `None` if nothing.
pub fn kind_at(dir: BorrowedFd<'_>, name: &CString) -> io::Result<Option<SFlag>> {
    match fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// Removes whatever is at `name` in `dir` (a directory with everything under it), unless it
/// is a directory and `keep_dir`. Never follows a symlink.
pub fn clear_at(dir: BorrowedFd<'_>, name: &CString, keep_dir: bool) -> io::Result<()> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(SFlag::S_IFDIR) if keep_dir => Ok(()),
        Some(SFlag::S_IFDIR) => {
            remove_tree(dir, name)?;
            unlinkat(dir, name.as_c_str(), UnlinkatFlags::RemoveDir).map_err(errno)
        }
        Some(_) => unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir).map_err(errno),
    }
}

/// Empties the directory `name` in `dir`, depth first, through descriptors only.
fn remove_tree(dir: BorrowedFd<'_>, name: &CString) -> io::Result<()> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let sub = openat2(dir, name.as_c_str(), how).map_err(errno)?;
    let names: Vec<CString> = {
        let listing = nix::dir::Dir::from_fd(sub.try_clone()?).map_err(errno)?;
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(errno)?;
            let n = entry.file_name();
            if n.to_bytes() != b"." && n.to_bytes() != b".." {
                names.push(n.to_owned());
            }
        }
        names
    };
    for n in names {
        clear_at(sub.as_fd(), &n, false)?;
    }
    Ok(())
}

/// `path` as a relative path with `.` and leading `/` dropped; `None` if it has `..` (tar
/// entry names must not climb, even though the root would contain them).
pub fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The raw descriptor, for the few libc calls nix does not wrap (xattrs).
pub fn raw(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root_and_the_last_component_is_not_followed() {
        let dir = tempfile::Builder::new().tempdir_in("/var/tmp").unwrap();
        let (root_path, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(&root_path).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root_path.join("abs")).unwrap();
        std::os::unix::fs::symlink("/", root_path.join("slash")).unwrap();
        std::os::unix::fs::symlink("../../..", root_path.join("up")).unwrap();
        let root = Root::open(&root_path).unwrap();
        // Through a symlink to "/" and one that climbs: both land inside the root.
        root.dir(Path::new("slash/a")).unwrap();
        root.dir(Path::new("up/b")).unwrap();
        assert!(root_path.join("a").is_dir() && root_path.join("b").is_dir());
        // A symlink to a host directory the root lacks is an error, not a way out.
        assert!(root.dir(Path::new("abs/c")).is_err());
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing outside"
        );
        // The last component: a symlink is removed, not followed.
        let slot = root.slot(Path::new("abs")).unwrap();
        assert_eq!(
            kind_at(slot.dir.as_fd(), &slot.name).unwrap(),
            Some(SFlag::S_IFLNK)
        );
        clear_at(slot.dir.as_fd(), &slot.name, false).unwrap();
        assert!(outside.exists() && !root_path.join("abs").exists());
        assert_eq!(relative(Path::new("/a/./b")), Some(PathBuf::from("a/b")));
        assert_eq!(relative(Path::new("a/../b")), None);
    }
}
