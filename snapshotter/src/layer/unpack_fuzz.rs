//! Fuzzing the confined unpacker with generated hostile layers and mutations of them.
//!
//! Each case is a tar stream (plain, gzip or zstd) of entries drawn from a grammar of what
//! hostile layers do: `..`, absolute and dot paths, symlinks and hardlinks aimed at a victim
//! directory and file outside the root (directly, by climbing, through other symlinks),
//! whiteouts of odd names, opaque markers, devices, fifos, set-id modes, huge ids, PAX records
//! (path, linkpath, size, xattrs, times) and GNU long names, sizes that lie; then, sometimes,
//! byte-level mutations of the tar or of the compressed stream.
//!
//! Properties, for every case: `unpack` returns (no panic, within the time bound); the
//! victims outside the root keep their mode, owner, link count, times, bytes and xattrs, and
//! nothing is added next to them or to the root; file bytes in the root stay within
//! `max_bytes` and a success reports at most `max_entries` entries.
//!
//! `DRAGONFLY_FUZZ_SECS=60 cargo test --release -p dragonfly-snapshotter --lib layer::unpack_fuzz -- --nocapture`
//! runs it for a minute (see `scripts/bench.sh fuzz`). Best run as root (owners, devices and
//! `trusted.*` xattrs are then really applied).

use std::collections::HashSet;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dragonfly_fuzzkit::{mutate_bytes, Fuzz, Rng};

use super::unpack::{unpack, UnpackLimits};

/// The victims and the directory the roots are made in.
struct Arena {
    base: tempfile::TempDir,
    file: PathBuf,
    dir: PathBuf,
    before: Vec<Snapshot>,
}

/// What must not change about a victim.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    mtime: i64,
    ino: u64,
    bytes: Vec<u8>,
    xattrs: Vec<u8>,
}

fn snapshot(p: &Path) -> Snapshot {
    let m = std::fs::symlink_metadata(p).unwrap();
    let bytes = if m.is_file() {
        std::fs::read(p).unwrap()
    } else {
        let mut names: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        names.sort();
        names.join(&b'/')
    };
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut xattrs = vec![0u8; 4096];
    // SAFETY: a valid C string and a buffer of the length passed.
    let n = unsafe { libc::llistxattr(c.as_ptr(), xattrs.as_mut_ptr().cast(), xattrs.len()) };
    xattrs.truncate(n.max(0) as usize);
    Snapshot {
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        nlink: m.nlink(),
        mtime: m.mtime(),
        ino: m.ino(),
        bytes,
        xattrs,
    }
}

impl Arena {
    fn new() -> Arena {
        let base = tempfile::Builder::new()
            .prefix("dragonfly-unpack-fuzz")
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = base.path().join("host");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, b"host secret").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let before = vec![snapshot(&file), snapshot(&dir)];
        Arena {
            base,
            file,
            dir,
            before,
        }
    }

    fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }

    fn check_victims(&self) {
        let now = vec![snapshot(&self.file), snapshot(&self.dir)];
        assert_eq!(now, self.before, "a victim outside the root changed");
        let mut names: Vec<_> = std::fs::read_dir(self.base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["host", "root"],
            "something appeared next to the root"
        );
    }
}

/// Makes every directory under `p` writable and removes it all (never following symlinks).
fn wipe(p: &Path) {
    fn open_up(p: &Path) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return;
        };
        if m.is_dir() {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    if std::fs::symlink_metadata(p).is_ok() {
        open_up(p);
        std::fs::remove_dir_all(p).unwrap_or_else(|e| panic!("cannot remove {}: {e}", p.display()));
    }
}

/// Bytes of the regular files under `p` (each inode once), not following symlinks.
fn file_bytes(p: &Path, seen: &mut HashSet<u64>) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.is_dir() {
            total += file_bytes(&e.path(), seen);
        } else if m.is_file() && seen.insert(m.ino()) {
            total += m.size();
        }
    }
    total
}

/// A raw tar header: any name bytes (no validation, so `..` and the like go in as they are).
fn header(kind: tar::EntryType, name: &[u8], link: &[u8], size: u64, rng: &mut Rng) -> [u8; 512] {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    let mode = *rng.pick(&[0o644, 0o755, 0o4755, 0o7777, 0o1777, 0, 0o600]);
    h.set_mode(mode);
    let id = |rng: &mut Rng| *rng.pick(&[0u64, 0, 1000, 65534, 0xffff_ffff, 1 << 40]);
    let (uid, gid) = (id(rng), id(rng));
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(*rng.pick(&[0, 1_700_000_000, u32::MAX as u64, 1 << 33]));
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        let _ = h.set_device_major(*rng.pick(&[0, 1]));
        let _ = h.set_device_minor(*rng.pick(&[0, 3, 5]));
    }
    {
        let gnu = h.as_gnu_mut().unwrap();
        let n = name.len().min(100);
        gnu.name = [0; 100];
        gnu.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        gnu.linkname = [0; 100];
        gnu.linkname[..l].copy_from_slice(&link[..l]);
    }
    h.set_cksum();
    *h.as_bytes()
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// An extension entry (PAX records, a GNU long name or link) carrying `data`.
fn extension(out: &mut Vec<u8>, kind: tar::EntryType, data: &[u8], rng: &mut Rng) {
    out.extend_from_slice(&header(kind, b"././@LongLink", b"", data.len() as u64, rng));
    out.extend_from_slice(data);
    pad(out);
}

const COMPONENTS: &[&str] = &[
    "a",
    "b",
    "s",
    "up",
    "d",
    ".",
    "",
    ".wh.a",
    ".wh.s",
    ".wh..wh..opq",
    ".wh..wh.plnk",
    "host",
    "secret",
    "root",
];

/// Components refused wherever they are (each ends the unpack, so they are rare).
const REFUSED: &[&str] = &["..", ".wh.", ".wh..", ".wh..."];

fn path(rng: &mut Rng) -> Vec<u8> {
    let n = rng.between(1, 4);
    let mut p: Vec<&str> = (0..n).map(|_| *rng.pick(COMPONENTS)).collect();
    if rng.chance(0.02) {
        let i = rng.below(n);
        p[i] = *rng.pick(REFUSED);
    }
    if rng.chance(0.05) {
        p.push("x".repeat(rng.between(90, 300)).leak());
    }
    let mut s = p.join("/");
    match rng.below(10) {
        0 => s.insert(0, '/'),
        1 => s.insert_str(0, "./"),
        2 => s.push('/'),
        _ => {}
    }
    s.into_bytes()
}

fn link_target(rng: &mut Rng, arena: &Arena) -> Vec<u8> {
    let file = arena.file.to_str().unwrap();
    let dir = arena.dir.to_str().unwrap();
    let climbing = format!("{}{}", "../".repeat(rng.between(1, 12)), &file[1..]);
    let choices = [
        file.to_string(),
        dir.to_string(),
        "../host/secret".into(),
        "../host".into(),
        "..".into(),
        "../..".into(),
        climbing,
        "/".into(),
        ".".into(),
        "a".into(),
        "a/b".into(),
        "s/secret".into(),
        "up/secret".into(),
        String::new(),
    ];
    if rng.chance(0.3) {
        path(rng)
    } else {
        rng.pick(&choices).clone().into_bytes()
    }
}

/// A generated layer: a tar stream of hostile entries.
fn layer_tar(rng: &mut Rng, arena: &Arena) -> Vec<u8> {
    use tar::EntryType as T;
    let mut out = Vec::new();
    // Names of the files so far (what a hardlink may name).
    let mut made: Vec<Vec<u8>> = Vec::new();
    let entries = rng.between(1, 24);
    for _ in 0..entries {
        let kind = *rng.pick(&[
            T::Regular,
            T::Regular,
            T::Directory,
            T::Directory,
            T::Symlink,
            T::Symlink,
            T::Link,
            T::Link,
            T::Char,
            T::Block,
            T::Fifo,
            T::Continuous,
            T::XGlobalHeader,
            T::new(b'Z'),
        ]);
        let kind = if rng.chance(0.003) {
            T::GNUSparse
        } else {
            kind
        };
        let name = path(rng);
        // A hardlink out of the layer ends the unpack, so most name earlier entries.
        let link = if kind == T::Link && !made.is_empty() && rng.chance(0.8) {
            rng.pick(&made).clone()
        } else if matches!(kind, T::Symlink | T::Link) {
            link_target(rng, arena)
        } else {
            Vec::new()
        };
        if rng.chance(0.15) {
            let mut records = Vec::new();
            for _ in 0..rng.between(1, 3) {
                let (key, value): (&str, Vec<u8>) = match rng.below(9) {
                    0 => ("path", path(rng)),
                    1 => ("linkpath", link_target(rng, arena)),
                    2 => (
                        "size",
                        rng.pick(&["0", "1", "99999999", "-1", "x"])
                            .as_bytes()
                            .to_vec(),
                    ),
                    3 => ("SCHILY.xattr.user.fuzz", b"1".to_vec()),
                    4 => ("SCHILY.xattr.trusted.overlay.opaque", b"y".to_vec()),
                    5 => ("SCHILY.xattr.security.capability", vec![1, 0, 0, 2]),
                    6 => (
                        "uid",
                        rng.pick(&["0", "4294967296", "-5"]).as_bytes().to_vec(),
                    ),
                    7 => (
                        "mtime",
                        rng.pick(&["1e99", "-1", "1.5"]).as_bytes().to_vec(),
                    ),
                    _ => ("SCHILY.xattr.", b"v".to_vec()),
                };
                records.extend(pax_record(key, &value));
            }
            extension(&mut out, T::XHeader, &records, rng);
        }
        if name.len() > 100 || rng.chance(0.05) {
            let mut long = name.clone();
            long.push(0);
            extension(&mut out, T::GNULongName, &long, rng);
        }
        if link.len() > 100 {
            let mut long = link.clone();
            long.push(0);
            extension(&mut out, T::GNULongLink, &long, rng);
        }
        let data_len = if matches!(kind, T::Regular | T::Continuous) {
            match rng.below(20) {
                0 => rng.between(60_000, 300_000),
                _ => rng.small_len(4000),
            }
        } else {
            0
        };
        let claimed = if rng.chance(0.03) {
            data_len as u64 + rng.between(1, 5000) as u64
        } else {
            data_len as u64
        };
        if matches!(kind, T::Regular | T::Fifo | T::Symlink) {
            made.push(name.clone());
        }
        out.extend_from_slice(&header(kind, &name, &link, claimed, rng));
        out.extend((0..data_len).map(|i| (i % 251) as u8));
        pad(&mut out);
    }
    if rng.chance(0.9) {
        out.extend_from_slice(&[0u8; 1024]);
    }
    out
}

fn compress(rng: &mut Rng, tar: &[u8]) -> Vec<u8> {
    match rng.below(5) {
        0 | 1 => tar.to_vec(),
        2 | 3 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap()
        }
        _ => zstd::encode_all(tar, 1).unwrap(),
    }
}

fn limits_for(blob: &[u8]) -> UnpackLimits {
    let h = blob.iter().take(4096).fold(blob.len() as u64, |h, &b| {
        h.wrapping_mul(31).wrapping_add(b as u64)
    });
    UnpackLimits {
        max_bytes: [1 << 10, 64 << 10, 1 << 20, 16 << 20][(h % 4) as usize],
        max_entries: [4, 16, 1000][((h / 4) % 3) as usize],
    }
}

/// Cases unpacked whole, entries they wrote, cases refused.
static DEPTH: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

#[test]
fn fuzz_unpack() {
    let arena = Arena::new();
    let dict: &[&[u8]] = &[b"..", b"/", b"ustar", b"././@LongLink", b".wh.", b"path="];
    Fuzz::new("unpack")
        .cases(300)
        .timeout(Duration::from_secs(20))
        .run(
            |rng| {
                let mut tar = layer_tar(rng, &arena);
                if rng.chance(0.3) {
                    let n = tar.len();
                    mutate_bytes(rng, &mut tar, dict, &[], Some((0, n.min(2048))));
                }
                let mut blob = compress(rng, &tar);
                if rng.chance(0.1) {
                    mutate_bytes(rng, &mut blob, &[], &[], None);
                }
                blob
            },
            |blob| {
                let root = arena.root();
                wipe(&root);
                std::fs::create_dir(&root).unwrap();
                let limits = limits_for(blob);
                let got = unpack(blob, &root, "trusted.overlay.opaque", &limits);
                arena.check_victims();
                let bytes = file_bytes(&root, &mut HashSet::new());
                assert!(
                    bytes <= limits.max_bytes,
                    "{bytes} bytes of files unpacked, over max_bytes {} ({got:?})",
                    limits.max_bytes
                );
                match got {
                    Ok(n) => {
                        assert!(n <= limits.max_entries, "{n} entries, over max_entries");
                        DEPTH[0].fetch_add(1, Ordering::Relaxed);
                        DEPTH[1].fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if std::env::var("FUZZ_DEBUG").is_ok() {
                            eprintln!("ERR {e}");
                        }
                        DEPTH[2].fetch_add(1, Ordering::Relaxed);
                    }
                }
            },
        );
    let [ok, entries, refused] = DEPTH.each_ref().map(|d| d.load(Ordering::Relaxed));
    println!(
        "fuzz unpack: reached: {ok} layers unpacked ({entries} entries written), {refused} refused"
    );
}
