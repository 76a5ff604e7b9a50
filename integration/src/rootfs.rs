//! Canonical listings of a root filesystem (what a container sees) and their differences.
//!
//! A listing has, per path: type, permission bits (incl. set-id and sticky), uid, gid, size,
//! SHA-256 of regular files, symlink targets, device numbers, `user.*`/`trusted.*` xattrs, and
//! which paths share an inode (hardlink groups). Mount points other than the root (a
//! container's /proc, /dev, /sys) are skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// The listing of a tree: relative path → description.
pub type Listing = BTreeMap<String, String>;

fn xattrs(path: &Path) -> Vec<(String, String)> {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in paths");
    let mut names = vec![0u8; 4096];
    // SAFETY: valid C string and buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let name_s = String::from_utf8_lossy(name).into_owned();
        if !(name_s.starts_with("user.") || name_s.starts_with("trusted."))
            || name_s.starts_with("trusted.overlay.")
        {
            continue;
        }
        let cname = CString::new(name).expect("no NUL");
        let mut val = vec![0u8; 65536];
        // SAFETY: as above.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        if len >= 0 {
            out.push((name_s, hex::encode(&val[..len as usize])));
        }
    }
    out.sort();
    out
}

fn file_hash(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Lists the tree at `root`, skipping `skip` (absolute paths inside the tree, e.g. "/proc").
pub fn list(root: &Path, skip: &BTreeSet<String>) -> Result<Listing> {
    let mut out = Listing::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let key = format!("/{}", rel.display());
        if !rel.as_os_str().is_empty() && skip.contains(&key) {
            continue;
        }
        let md = std::fs::symlink_metadata(&abs)?;
        let ft = md.file_type();
        let perm = md.mode() & 0o7777;
        let mut d = format!("mode={perm:o} uid={} gid={}", md.uid(), md.gid());
        if ft.is_dir() {
            d = format!("dir {d}");
            let mut children: Vec<_> = std::fs::read_dir(&abs)?.collect::<std::io::Result<_>>()?;
            children.sort_by_key(|e| e.file_name());
            for c in children {
                stack.push(rel.join(c.file_name()));
            }
        } else if ft.is_file() {
            let hash = file_hash(&abs).with_context(|| format!("read {}", abs.display()))?;
            d = format!("file {d} size={} sha256={hash}", md.len());
            if md.nlink() > 1 {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(key.clone());
            }
        } else if ft.is_symlink() {
            d = format!("symlink -> {}", std::fs::read_link(&abs)?.display());
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() { "char" } else { "block" };
            d = format!(
                "{kind} {d} rdev={}:{}",
                libc::major(md.rdev()),
                libc::minor(md.rdev())
            );
        } else if ft.is_fifo() {
            d = format!("fifo {d}");
        } else {
            d = format!("other {d}");
        }
        for (k, v) in xattrs(&abs) {
            d.push_str(&format!(" xattr:{k}={v}"));
        }
        out.insert(key, d);
    }
    for mut group in inodes.into_values().filter(|g| g.len() > 1) {
        group.sort();
        let joined = group.join(",");
        for p in &group {
            if let Some(d) = out.get_mut(p) {
                d.push_str(&format!(" links=[{joined}]"));
            }
        }
    }
    Ok(out)
}

/// The listing of the tree at `root`, skipping every mount point below `root` (as seen in
/// this process's mount namespace): the walk never crosses into another filesystem mounted
/// inside the tree.
pub fn list_tree(root: &Path) -> Result<Listing> {
    let root = root
        .canonicalize()
        .with_context(|| format!("resolve {}", root.display()))?;
    let skip = crate::procs::mounts_under(&root)
        .into_iter()
        .filter_map(|p| {
            let rel = Path::new(&p).strip_prefix(&root).ok()?.to_str()?.to_owned();
            (!rel.is_empty()).then(|| format!("/{rel}"))
        })
        .collect();
    list(&root, &skip)
}

/// The root filesystem of a running process (a container's init), without its mounts (its
/// /proc, /dev, /sys, ...).
pub fn list_process_root(pid: u32) -> Result<Listing> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("read the mounts of process {pid} (has it exited?)"))?;
    let skip: BTreeSet<String> = crate::procs::mount_points(&mountinfo)
        .into_iter()
        .filter(|p| p != "/")
        .collect();
    list(Path::new(&format!("/proc/{pid}/root")), &skip)
}

/// `listing` without the xattrs whose name starts with `prefix` (e.g. `"trusted."`), to
/// compare with an unpacker known not to restore them.
pub fn without_xattrs(listing: &Listing, prefix: &str) -> Listing {
    let drop = format!("xattr:{prefix}");
    listing
        .iter()
        .map(|(p, d)| {
            let kept: Vec<&str> = d.split(' ').filter(|t| !t.starts_with(&drop)).collect();
            (p.clone(), kept.join(" "))
        })
        .collect()
}

/// Human-readable differences, empty when equal.
pub fn diff(expected: &Listing, actual: &Listing) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => out.push(format!("missing {p}: {e}")),
            Some(a) if a != e => {
                out.push(format!("differs {p}:\n    expected {e}\n    actual   {a}"))
            }
            _ => {}
        }
    }
    for (p, a) in actual {
        if !expected.contains_key(p) {
            out.push(format!("unexpected {p}: {a}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattrs_of_one_namespace_can_be_left_out() {
        let mut l = Listing::new();
        l.insert(
            "/f".into(),
            "file mode=644 xattr:trusted.a=01 xattr:user.b=02".into(),
        );
        let w = without_xattrs(&l, "trusted.");
        assert_eq!(w["/f"], "file mode=644 xattr:user.b=02");
    }

    #[test]
    fn differences_in_any_attribute_are_reported() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir(d.join("dir")).unwrap();
            std::fs::write(d.join("dir/f"), b"same").unwrap();
            std::fs::hard_link(d.join("dir/f"), d.join("h")).unwrap();
            std::os::unix::fs::symlink("dir/f", d.join("l")).unwrap();
        }
        let none = BTreeSet::new();
        assert!(diff(
            &list(a.path(), &none).unwrap(),
            &list(b.path(), &none).unwrap()
        )
        .is_empty());

        std::fs::write(b.path().join("dir/f"), b"diff").unwrap();
        let d = diff(
            &list(a.path(), &none).unwrap(),
            &list(b.path(), &none).unwrap(),
        );
        assert_eq!(d.len(), 2, "content change shows on both links: {d:?}");

        std::fs::write(b.path().join("dir/f"), b"same").unwrap();
        std::fs::remove_file(b.path().join("h")).unwrap();
        std::fs::copy(b.path().join("dir/f"), b.path().join("h")).unwrap();
        let d = diff(
            &list(a.path(), &none).unwrap(),
            &list(b.path(), &none).unwrap(),
        );
        assert!(!d.is_empty(), "a broken hardlink must show");

        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            b.path().join("dir"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .unwrap();
        let d = diff(
            &list(a.path(), &none).unwrap(),
            &list(b.path(), &none).unwrap(),
        );
        assert!(d.iter().any(|l| l.contains("/dir")), "{d:?}");
        let skip: BTreeSet<String> = ["/dir".to_string()].into();
        assert!(!list(a.path(), &skip).unwrap().contains_key("/dir/f"));
    }
}
