//! Reading the mount table and detaching mounts under a directory.
//!
//! Used at start-up to clear stale FUSE and overlay mounts a killed daemon left behind, and by
//! `Cleanup`/`Remove` to make sure nothing is mounted in a directory before it is deleted.

use std::path::{Path, PathBuf};

/// Mount points listed in `/proc/self/mountinfo` that are `dir` or below it, deepest first.
pub fn mounts_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    Ok(out)
}

/// The device (`major:minor`) and filesystem type of the topmost mount exactly at `point`.
pub fn mount_at(point: &Path) -> std::io::Result<Option<(String, String)>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        let at = PathBuf::from(unescape(fields.get(4)?));
        let fstype = fields.get(sep + 1)?;
        let device = fields.get(2)?;
        (at == point).then(|| (device.to_string(), fstype.to_string()))
    }))
}

/// Detaches (lazily unmounts) every mount at or below `dir`, deepest first.
pub fn detach_all_under(dir: &Path) -> std::io::Result<usize> {
    detach_all_under_except(dir, &[])
}

/// Like [`detach_all_under`], but mounts exactly at one of `keep` stay.
pub fn detach_all_under_except(dir: &Path, keep: &[PathBuf]) -> std::io::Result<usize> {
    let mut n = 0;
    // A mount may be stacked several times on one point; loop until nothing is left.
    for _ in 0..8 {
        let mounts: Vec<PathBuf> = mounts_under(dir)?
            .into_iter()
            .filter(|m| !keep.contains(m))
            .collect();
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            match nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::warn!(mount = %m.display(), error = %e, "cannot detach stale mount")
                }
            }
        }
    }
    Ok(n)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_sequences() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn the_root_mount_has_a_device_and_type() {
        let (dev, fstype) = mount_at(Path::new("/")).unwrap().expect("/ is mounted");
        assert!(dev.contains(':'), "{dev}");
        assert!(!fstype.is_empty());
        assert!(mount_at(Path::new("/surely/not/a/mount"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn proc_root_is_listed() {
        let m = mounts_under(Path::new("/")).unwrap();
        assert!(m.iter().any(|p| p == Path::new("/")));
    }
}
