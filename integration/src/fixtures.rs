//! The fixture images, built once per machine state and pushed into each test's registry.
//!
//! * `kinds` — built with `umoci` from a busybox-static root filesystem over four layers, so
//!   the layer tars come from a real image tool, not from our code: busybox and applet symlinks;
//!   every kind of entry (a 6 MiB pseudo-random file, empty files, files and a dir owned by
//!   1234:5678, setuid and sticky modes, `user.*` and `trusted.*` xattrs, a char device 1:3, a
//!   fifo, hardlinks, absolute and relative symlinks, a path over 100 bytes, a non-ASCII name);
//!   deletions (whiteouts of a lower file and a lower symlink) and changed files; and, added
//!   verbatim with `umoci raw add-layer` because umoci itself never writes one, an opaque dir
//!   replacing a lower dir.
//! * `large` — busybox plus a 40 MiB pseudo-random file next to a small one (laziness tests),
//!   built with [`crate::oci`].
//!
//! Built OCI layouts are cached under `/var/tmp/dfly-fixtures/<name>-<key>`, where the key
//! hashes this module's and `oci`'s source and `/bin/busybox`, so a changed builder rebuilds;
//! a file lock makes concurrent test processes build each fixture once. [`publish`] pushes a
//! fixture as OCI gzip with `skopeo` and converts it to eStargz (optionally with a prefetch
//! landmark) and zstd:chunked with `ctr-remote image convert`.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::containerd::Containerd;
use crate::oci::{build_image, layer_tar, push, read_layout, BuiltImage, Entry};
use crate::procs::run;

/// Size of `/data/big.bin` in the `kinds` fixture.
pub const KINDS_BIG_LEN: usize = 6 << 20;
/// Seed of `/data/big.bin` in the `kinds` fixture.
pub const KINDS_BIG_SEED: u64 = 1;
/// Size of `/data/huge.bin` in the `large` fixture.
pub const LARGE_HUGE_LEN: usize = 40 << 20;
/// Seed of `/data/huge.bin` in the `large` fixture.
pub const LARGE_HUGE_SEED: u64 = 7;

/// Size of `/data/restart.bin` in the `restart` fixture.
pub const RESTART_LEN: usize = 512 << 20;
/// Seed of `/data/restart.bin` in the `restart` fixture.
pub const RESTART_SEED: u64 = 11;

/// Hex sha256 of `/data/huge.bin` in the `large` fixture (what `sha256sum` in a container of
/// it prints).
pub fn large_huge_sha256() -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(random_bytes(
        LARGE_HUGE_LEN,
        LARGE_HUGE_SEED,
    )))
}

/// Deterministic pseudo-random bytes (xorshift; no short period, so chunks differ).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A long path (> 100 bytes, beyond ustar's name field), relative to the root.
pub fn long_path() -> String {
    format!("deep/{}/{}/file.txt", "d".repeat(60), "e".repeat(60))
}

/// The non-ASCII file name of the `kinds` fixture, relative to the root.
pub const UNICODE_PATH: &str = "data/ünïcødé-файл.txt";

/// Busybox applets linked in `/bin`.
const APPLETS: [&str; 9] = [
    "sh",
    "sleep",
    "cat",
    "ls",
    "sha256sum",
    "stat",
    "head",
    "true",
    "echo",
];

/// The `kinds` fixture (built on first use, then cached).
pub fn kinds() -> Result<BuiltImage> {
    cached("kinds", build_kinds)
}

/// The `large` fixture (built on first use, then cached).
pub fn large() -> Result<BuiltImage> {
    cached("large", build_large)
}

/// The `restart` fixture: busybox and a 512 MiB random `/data/restart.bin` (built on first
/// use, then cached).
pub fn restart() -> Result<BuiltImage> {
    cached("restart", build_restart)
}

/// Returns the cached layout of fixture `name`, building it with `build` when missing.
fn cached(name: &str, build: fn(&Path) -> Result<()>) -> Result<BuiltImage> {
    static BUILT: OnceLock<Mutex<HashMap<String, BuiltImage>>> = OnceLock::new();
    // One build at a time in this process; other processes wait on the file lock.
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(img) = built.get(name) {
        return Ok(img.clone());
    }
    let base = Path::new("/var/tmp/dfly-fixtures");
    std::fs::create_dir_all(base).with_context(|| format!("create {}", base.display()))?;
    let lock = std::fs::File::create(base.join(format!("{name}.lock")))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock the fixture cache")?;
    let key = cache_key()?;
    let layout = base.join(format!("{name}-{key}"));
    if !layout.join("complete").exists() {
        // Older versions of this fixture are stale.
        for e in std::fs::read_dir(base)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("{name}-")) && e.path() != layout {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = base.join(format!("{name}-{key}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        build(&tmp.join("layout")).with_context(|| format!("build fixture {name}"))?;
        std::fs::rename(&tmp, &layout)?;
        std::fs::write(layout.join("complete"), b"")?;
    }
    let img = read_layout(&layout.join("layout"))?;
    built.insert(name.to_owned(), img.clone());
    Ok(img)
}

/// Hash of the builders' source and of the busybox binary.
fn cache_key() -> Result<String> {
    let busybox = std::fs::read("/bin/busybox")
        .context("read /bin/busybox (apt-get install busybox-static)")?;
    let mut h = Sha256::new();
    h.update(include_str!("fixtures.rs"));
    h.update(include_str!("oci.rs"));
    h.update(&busybox);
    Ok(hex::encode(h.finalize())[..16].to_owned())
}

fn umoci(args: &[&str]) -> Result<String> {
    run(Command::new("umoci").args(args))
}

/// One `umoci repack` layer: a fresh `umoci unpack` of `image` (a second repack of the same
/// bundle would not produce a new layer), `change` applied to the root filesystem, repack.
fn umoci_layer(layout: &Path, change: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let bundle = layout.with_extension("bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    let image = format!("{}:latest", layout.display());
    let b = bundle.to_str().context("UTF-8 path")?;
    umoci(&["unpack", "--image", &image, b])?;
    change(&bundle.join("rootfs"))?;
    umoci(&["repack", "--image", &image, b])?;
    std::fs::remove_dir_all(&bundle)?;
    Ok(())
}

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) -> Result<PathBuf> {
    let p = root.join(rel);
    std::fs::write(&p, data).with_context(|| format!("write {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(p)
}

fn mkdir(root: &Path, rel: &str, mode: u32) -> Result<PathBuf> {
    let p = root.join(rel);
    std::fs::create_dir_all(&p).with_context(|| format!("mkdir {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(p)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())?;
    let n = CString::new(name)?;
    // SAFETY: valid C strings and a buffer of the given length.
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
        bail!(
            "setxattr {name} on {}: {} (the fixture dir must be on a filesystem with xattrs)",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn build_kinds(layout: &Path) -> Result<()> {
    let l = layout.to_str().context("UTF-8 path")?;
    let image = format!("{l}:latest");
    umoci(&["init", "--layout", l])?;
    umoci(&["new", "--image", &image])?;

    // 1: busybox.
    umoci_layer(layout, |root| {
        mkdir(root, "bin", 0o755)?;
        mkdir(root, "etc", 0o755)?;
        mkdir(root, "tmp", 0o1777)?;
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .context("copy /bin/busybox (apt-get install busybox-static)")?;
        std::fs::set_permissions(root.join("bin/busybox"), PermissionsExt::from_mode(0o755))?;
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
        }
        write(
            root,
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nuser:x:1234:5678::/:/bin/sh\n",
            0o644,
        )?;
        write(root, "etc/group", b"root:x:0:\nusers:x:5678:\n", 0o644)?;
        Ok(())
    })?;

    // 2: every kind of entry.
    umoci_layer(layout, |root| {
        mkdir(root, "data", 0o755)?;
        write(
            root,
            "data/big.bin",
            &random_bytes(KINDS_BIG_LEN, KINDS_BIG_SEED),
            0o644,
        )?;
        write(root, "data/empty", b"", 0o644)?;
        write(root, "data/empty2", b"", 0o600)?;
        let owned = write(root, "data/owned", b"owned by 1234:5678\n", 0o640)?;
        std::os::unix::fs::lchown(&owned, Some(1234), Some(5678))?;
        let dir = mkdir(root, "data/owned-dir", 0o750)?;
        write(root, "data/owned-dir/inside", b"in a dir of 1234\n", 0o644)?;
        std::os::unix::fs::lchown(&dir, Some(1234), Some(5678))?;
        // chown clears set-id bits: set the mode last.
        let suid = write(root, "data/setuid", b"#!/bin/sh\necho suid\n", 0o755)?;
        std::os::unix::fs::lchown(&suid, Some(1234), Some(5678))?;
        std::fs::set_permissions(&suid, PermissionsExt::from_mode(0o6755))?;
        mkdir(root, "data/sticky", 0o1777)?;
        let x = write(root, "data/xattr", b"has xattrs\n", 0o644)?;
        set_xattr(&x, "user.demo", b"hello")?;
        set_xattr(&x, "trusted.demo", b"secret")?;
        set_xattr(&root.join("data/sticky"), "user.dir", b"on a dir")?;
        nix::sys::stat::mknod(
            &root.join("data/null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .context("mknod data/null (needs root)")?;
        std::fs::set_permissions(root.join("data/null"), PermissionsExt::from_mode(0o666))?;
        nix::unistd::mkfifo(
            &root.join("data/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )?;
        std::fs::set_permissions(root.join("data/fifo"), PermissionsExt::from_mode(0o644))?;
        write(root, "data/hard1", b"linked twice\n", 0o644)?;
        std::fs::hard_link(root.join("data/hard1"), root.join("data/hard2"))?;
        std::os::unix::fs::symlink("/etc/passwd", root.join("data/abs-link"))?;
        std::os::unix::fs::symlink("../etc/passwd", root.join("data/rel-link"))?;
        std::os::unix::fs::symlink("missing", root.join("data/dangling"))?;
        let long = long_path();
        let (long_dir, _) = long.rsplit_once('/').context("long path has dirs")?;
        mkdir(root, long_dir, 0o755)?;
        write(root, &long, b"at the end of a long path\n", 0o644)?;
        write(root, UNICODE_PATH, "non-ASCII name\n".as_bytes(), 0o644)?;
        mkdir(root, "opq", 0o755)?;
        write(root, "opq/old1", b"hidden by an opaque dir above\n", 0o644)?;
        write(root, "opq/old2", b"hidden too\n", 0o644)?;
        write(root, "data/gone", b"deleted above\n", 0o644)?;
        Ok(())
    })?;

    // 3: deletions and changes.
    umoci_layer(layout, |root| {
        std::fs::remove_file(root.join("data/gone"))?;
        std::fs::remove_file(root.join("bin/ls"))?;
        write(
            root,
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n",
            0o644,
        )?;
        write(root, "data/layer3.txt", b"from the top layer\n", 0o600)?;
        Ok(())
    })?;

    // 4: an opaque dir (umoci writes per-file whiteouts, never an opaque marker).
    let tar = layer_tar(&[
        Entry::dir("opq", 0o700),
        Entry::opaque("opq"),
        Entry::file("opq/new", b"the only file of opq now\n".to_vec(), 0o644),
    ])?;
    let tar_path = layout.with_extension("opaque.tar");
    std::fs::write(&tar_path, tar)?;
    umoci(&[
        "raw",
        "add-layer",
        "--image",
        &image,
        tar_path.to_str().context("UTF-8 path")?,
    ])?;
    std::fs::remove_file(&tar_path)?;
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/bin",
        "--config.cmd",
        "/bin/sh",
    ])?;
    // umoci keeps older manifests and layers around: collect them.
    umoci(&["gc", "--layout", l])?;
    Ok(())
}

/// Busybox and its applets, /etc basics, as tar entries.
fn busybox_entries() -> Result<Vec<Entry>> {
    let busybox = std::fs::read("/bin/busybox")
        .context("read /bin/busybox (apt-get install busybox-static)")?;
    let mut e = vec![
        Entry::dir("bin", 0o755),
        Entry::dir("etc", 0o755),
        Entry::dir("tmp", 0o1777),
        Entry::file("bin/busybox", busybox, 0o755),
        Entry::file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        Entry::file("etc/group", "root:x:0:\n", 0o644),
    ];
    for applet in APPLETS {
        e.push(Entry::Symlink {
            path: format!("bin/{applet}"),
            target: "busybox".into(),
        });
    }
    Ok(e)
}

fn build_large(layout: &Path) -> Result<()> {
    busybox_and_data(
        layout,
        vec![
            ("huge.bin", random_bytes(LARGE_HUGE_LEN, LARGE_HUGE_SEED)),
            ("small.txt", b"a small file next to a huge one\n".to_vec()),
        ],
    )
}

fn build_restart(layout: &Path) -> Result<()> {
    busybox_and_data(
        layout,
        vec![("restart.bin", random_bytes(RESTART_LEN, RESTART_SEED))],
    )
}

/// An image of two layers: busybox, then `/data` holding `files` (name, bytes; 0644).
fn busybox_and_data(layout: &Path, files: Vec<(&str, Vec<u8>)>) -> Result<()> {
    let mut data = vec![Entry::dir("data", 0o755)];
    data.extend(
        files
            .into_iter()
            .map(|(name, bytes)| Entry::file(&format!("data/{name}"), bytes, 0o644)),
    );
    build_image(layout, &[busybox_entries()?, data], &["/bin/sh"])?;
    Ok(())
}

/// Unpacks `image` with `umoci unpack` into `bundle` (which must not exist) and returns its
/// root filesystem: an independent unpacker to check containerd's against.
pub fn umoci_unpack(image: &BuiltImage, bundle: &Path) -> Result<PathBuf> {
    umoci(&[
        "unpack",
        "--image",
        &format!("{}:latest", image.layout.display()),
        bundle.to_str().context("UTF-8 path")?,
    ])?;
    Ok(bundle.join("rootfs"))
}

/// The three references [`publish`] pushes.
#[derive(Debug, Clone)]
pub struct Published {
    /// `REGISTRY/REPO:gzip`, the image as built.
    pub gzip: String,
    /// `REGISTRY/REPO:estargz`.
    pub estargz: String,
    /// `REGISTRY/REPO:zstdchunked`.
    pub zstdchunked: String,
}

impl Published {
    /// `[gzip, estargz, zstdchunked]`.
    pub fn refs(&self) -> [String; 3] {
        [
            self.gzip.clone(),
            self.estargz.clone(),
            self.zstdchunked.clone(),
        ]
    }
}

/// Pushes `image` as `REPO:gzip` and converts it to `REPO:estargz` and `REPO:zstdchunked`
/// with `ctr-remote image convert` in `containerd`'s content store. `record` lists files
/// (relative to the root) to prioritize: the eStargz variant then carries a
/// `.prefetch.landmark` (`--estargz-record-in`, a file of JSON lines
/// `{"path", "manifestDigest", "layerIndex"}` as stargz-snapshotter's recorder writes them).
/// The images are then removed from containerd and its content pruned, so later pulls go to
/// the registry.
pub fn publish(
    containerd: &Containerd,
    registry: &str,
    repo: &str,
    image: &BuiltImage,
    record: &[&str],
) -> Result<Published> {
    let p = Published {
        gzip: format!("{registry}/{repo}:gzip"),
        estargz: format!("{registry}/{repo}:estargz"),
        zstdchunked: format!("{registry}/{repo}:zstdchunked"),
    };
    push(image, &p.gzip)?;
    containerd.ctr(&["image", "pull", "--plain-http", &p.gzip])?;
    let mut args = vec!["image", "convert", "--oci", "--estargz"];
    let record_file = containerd.dir.join(format!("{repo}.record.json"));
    if !record.is_empty() {
        let lines: Vec<String> = record
            .iter()
            .map(|path| {
                serde_json::json!({
                    "path": path,
                    "manifestDigest": image.manifest,
                    "layerIndex": image.layers.len() - 1,
                })
                .to_string()
            })
            .collect();
        std::fs::write(&record_file, lines.join("\n") + "\n")?;
        args.push("--estargz-record-in");
        args.push(record_file.to_str().context("UTF-8 path")?);
    }
    args.extend([p.gzip.as_str(), p.estargz.as_str()]);
    containerd.ctr_remote(&args)?;
    containerd.ctr_remote(&[
        "image",
        "convert",
        "--oci",
        "--zstdchunked",
        &p.gzip,
        &p.zstdchunked,
    ])?;
    for r in [&p.estargz, &p.zstdchunked] {
        push_retrying(containerd, r)?;
    }
    // Forget the images and (garbage collection done synchronously) their content: later
    // pulls must go to the registry.
    for r in [&p.estargz, &p.zstdchunked, &p.gzip] {
        containerd.ctr(&["image", "rm", "--sync", r])?;
    }
    Ok(p)
}

/// Pushes `image` as `REPO:gzip`, converts it to `REPO:estargz` only (big fixtures: one
/// conversion instead of two) and pushes that; returns the eStargz reference. As with
/// [`publish`], containerd forgets both afterwards.
pub fn publish_estargz(
    containerd: &Containerd,
    registry: &str,
    repo: &str,
    image: &BuiltImage,
) -> Result<String> {
    let gzip = format!("{registry}/{repo}:gzip");
    let estargz = format!("{registry}/{repo}:estargz");
    push(image, &gzip)?;
    containerd.ctr(&["image", "pull", "--plain-http", &gzip])?;
    containerd.ctr_remote(&["image", "convert", "--oci", "--estargz", &gzip, &estargz])?;
    push_retrying(containerd, &estargz)?;
    for r in [&estargz, &gzip] {
        containerd.ctr(&["image", "rm", "--sync", r])?;
    }
    Ok(estargz)
}

/// The `restart` fixture as `REPO:estargz` in `registry`. Converting 512 MiB takes minutes,
/// so the first call keeps a copy of the registry's storage after publishing
/// (`/var/tmp/dfly-fixtures/restart-published-KEY`), and later calls copy it into the
/// registry's (empty) storage instead: the storage holds no addresses.
pub fn publish_restart(
    containerd: &Containerd,
    registry: &crate::registry::Registry,
    repo: &str,
) -> Result<String> {
    let base = Path::new("/var/tmp/dfly-fixtures");
    std::fs::create_dir_all(base)?;
    let lock = std::fs::File::create(base.join("restart-published.lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock the published fixture cache")?;
    let cache = base.join(format!("restart-published-{repo}-{}", cache_key()?));
    let estargz = format!("{}/{repo}:estargz", registry.addr);
    if cache.join("complete").exists() {
        copy_tree(&cache.join("data"), &registry.data)?;
        return Ok(estargz);
    }
    let published = publish_estargz(containerd, &registry.addr, repo, &restart()?)?;
    let tmp = cache.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    copy_tree(&registry.data, &tmp.join("data"))?;
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::rename(&tmp, &cache)?;
    std::fs::write(cache.join("complete"), b"")?;
    Ok(published)
}

/// `cp -a SRC/. DST/` (DST created).
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    let mut from = src.as_os_str().to_owned();
    from.push("/.");
    run(Command::new("cp").arg("-a").arg(from).arg(dst))?;
    Ok(())
}

/// `ctr image push` to docker-registry now and then fails with "unexpected EOF" on a loaded
/// machine; a push is idempotent, so it is tried again before giving up.
fn push_retrying(containerd: &Containerd, r: &str) -> Result<()> {
    let mut attempt = 0;
    loop {
        match containerd.ctr(&["image", "push", "--plain-http", r, r]) {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 2 => {
                attempt += 1;
                eprintln!("push of {r} failed ({e:#}); retrying");
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The manifest of `reference` (plain-HTTP registry), fetched with `skopeo inspect --raw`.
pub fn manifest(reference: &str) -> Result<serde_json::Value> {
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}")))?;
    serde_json::from_str(&raw).with_context(|| format!("manifest of {reference} is not JSON"))
}

/// The layer descriptors `(digest, size, mediaType, annotations)` of `reference`.
pub fn layers(reference: &str) -> Result<Vec<(String, u64, String, serde_json::Value)>> {
    let m = manifest(reference)?;
    let layers = m["layers"]
        .as_array()
        .with_context(|| format!("manifest of {reference} has no layers: {m}"))?;
    Ok(layers
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap_or_default().to_owned(),
                l["size"].as_u64().unwrap_or(0),
                l["mediaType"].as_str().unwrap_or_default().to_owned(),
                l["annotations"].clone(),
            )
        })
        .collect())
}

/// The TOC (`stargz.index.json`) of an eStargz blob, found by decompressing the whole blob
/// (eStargz is a valid tar.gz whose last entry is the TOC).
pub fn estargz_toc(blob: &[u8]) -> Result<serde_json::Value> {
    let mut a = tar::Archive::new(flate2::read::MultiGzDecoder::new(blob));
    for e in a.entries().context("read the eStargz blob as tar.gz")? {
        let mut e = e?;
        if e.path()?.to_str() == Some("stargz.index.json") {
            return serde_json::from_reader(&mut e).context("parse stargz.index.json");
        }
    }
    bail!("no stargz.index.json in the blob: not eStargz")
}

/// Compressed offsets `[start, end)` of each chunk of `name` in an eStargz blob (from its
/// TOC), so a test can corrupt bytes inside one chunk.
pub fn estargz_chunks(blob: &[u8], name: &str) -> Result<Vec<(u64, u64)>> {
    let toc = estargz_toc(blob)?;
    let entries = toc["entries"].as_array().context("TOC has no entries")?;
    // A chunk's compressed bytes end where the next entry with a payload starts.
    let offsets: Vec<u64> = {
        let mut o: Vec<u64> = entries
            .iter()
            .filter_map(|e| e["offset"].as_u64())
            .filter(|o| *o > 0)
            .collect();
        o.sort_unstable();
        o.dedup();
        o
    };
    let mut out = Vec::new();
    for e in entries {
        let is_chunk = matches!(e["type"].as_str(), Some("reg" | "chunk"));
        if e["name"].as_str() != Some(name) || !is_chunk {
            continue;
        }
        let Some(start) = e["offset"].as_u64().filter(|o| *o > 0) else {
            continue;
        };
        let end = offsets
            .iter()
            .copied()
            .find(|o| *o > start)
            .unwrap_or(blob.len() as u64);
        out.push((start, end));
    }
    anyhow::ensure!(!out.is_empty(), "{name} has no chunks in the TOC");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_deterministic_and_seeded() {
        assert_eq!(random_bytes(1000, 1), random_bytes(1000, 1));
        assert_ne!(random_bytes(1000, 1), random_bytes(1000, 2));
        let b = random_bytes(1 << 16, 1);
        assert_ne!(b[..4096], b[4096..8192], "no short period");
        assert!(long_path().len() > 100);
    }
}
