//! The fixture images: a busybox-static root filesystem plus layers that exercise every kind
//! of entry a lazy filesystem must get right, pushed as OCI gzip and converted with
//! `ctr-remote` to eStargz and zstd:chunked.

use std::path::Path;

use anyhow::{Context, Result};

use crate::containerd::Containerd;
use crate::oci::{build_image, push, BuiltImage, Entry};

/// Deterministic pseudo-random bytes (no short period, so chunks differ).
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

/// A long path (> 100 bytes, beyond ustar's name field).
pub fn long_path() -> String {
    format!("deep/{}/{}/file.txt", "d".repeat(60), "e".repeat(60))
}

/// Busybox and its applets, /etc basics.
fn busybox_layer() -> Result<Vec<Entry>> {
    let busybox =
        std::fs::read("/bin/busybox").context("read /bin/busybox (apt install busybox-static)")?;
    let mut e = vec![
        Entry::dir("bin", 0o755),
        Entry::dir("etc", 0o755),
        Entry::dir("tmp", 0o1777),
        Entry::file("bin/busybox", busybox, 0o755),
        Entry::file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1234:5678::/:/bin/sh\n",
            0o644,
        ),
        Entry::file("etc/group", "root:x:0:\nusers:x:5678:\n", 0o644),
    ];
    for applet in [
        "sh",
        "sleep",
        "cat",
        "ls",
        "sha256sum",
        "stat",
        "head",
        "true",
        "echo",
    ] {
        e.push(Entry::Symlink {
            path: format!("bin/{applet}"),
            target: "busybox".into(),
        });
    }
    Ok(e)
}

/// Every kind of entry, in the layer above busybox.
fn kinds_layer() -> Vec<Entry> {
    let long = long_path();
    let (long_dir, _) = long.rsplit_once('/').expect("has dirs");
    let (deep1, _) = long_dir.rsplit_once('/').expect("has dirs");
    vec![
        Entry::dir("data", 0o755),
        Entry::File {
            path: "data/big.bin".into(),
            data: random_bytes(6 << 20, 1),
            mode: 0o644,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        },
        Entry::file("data/empty", Vec::new(), 0o644),
        Entry::File {
            path: "data/owned".into(),
            data: b"owned by 1234:5678\n".to_vec(),
            mode: 0o640,
            uid: 1234,
            gid: 5678,
            xattrs: vec![],
        },
        Entry::file("data/setuid", b"#!/bin/sh\necho suid\n".to_vec(), 0o4755),
        Entry::dir("data/sticky", 0o1777),
        Entry::File {
            path: "data/xattr".into(),
            data: b"has xattrs\n".to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            xattrs: vec![
                ("user.demo".into(), b"hello".to_vec()),
                ("trusted.demo".into(), b"secret".to_vec()),
            ],
        },
        Entry::CharDev {
            path: "data/null".into(),
            major: 1,
            minor: 3,
        },
        Entry::Fifo {
            path: "data/fifo".into(),
        },
        Entry::file("data/hard1", b"linked twice\n".to_vec(), 0o644),
        Entry::Hardlink {
            path: "data/hard2".into(),
            target: "data/hard1".into(),
        },
        Entry::Symlink {
            path: "data/abs-link".into(),
            target: "/etc/passwd".into(),
        },
        Entry::Symlink {
            path: "data/rel-link".into(),
            target: "../etc/passwd".into(),
        },
        Entry::dir("deep", 0o755),
        Entry::dir(deep1, 0o755),
        Entry::dir(long_dir, 0o755),
        Entry::file(&long, b"at the end of a long path\n".to_vec(), 0o644),
        Entry::file(
            "data/ünïcødé-файл.txt",
            "non-ASCII name\n".as_bytes().to_vec(),
            0o644,
        ),
        Entry::dir("opq", 0o755),
        Entry::file(
            "opq/old1",
            b"hidden by an opaque dir above\n".to_vec(),
            0o644,
        ),
        Entry::file("opq/old2", b"hidden too\n".to_vec(), 0o644),
        Entry::file("data/gone", b"deleted above\n".to_vec(), 0o644),
    ]
}

/// Deletions, an opaque dir and a changed file.
fn changes_layer() -> Vec<Entry> {
    vec![
        Entry::dir("data", 0o755),
        Entry::whiteout("data/gone"),
        Entry::dir("opq", 0o700),
        Entry::opaque("opq"),
        Entry::file("opq/new", b"the only file of opq now\n".to_vec(), 0o644),
        Entry::dir("etc", 0o755),
        Entry::file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\n".as_bytes().to_vec(),
            0o644,
        ),
        Entry::file("data/layer3.txt", b"from the top layer\n".to_vec(), 0o600),
        Entry::dir("bin", 0o755),
        Entry::whiteout("bin/ls"),
    ]
}

/// The image with every kind of entry, over three layers.
pub fn kinds_image(dir: &Path) -> Result<BuiltImage> {
    build_image(
        &dir.join("oci-kinds"),
        &[busybox_layer()?, kinds_layer(), changes_layer()],
        &["/bin/sh"],
    )
}

/// A small file next to a large one (for laziness): busybox + a 40 MiB layer.
pub fn large_image(dir: &Path) -> Result<BuiltImage> {
    let big = vec![
        Entry::dir("data", 0o755),
        Entry::File {
            path: "data/huge.bin".into(),
            data: random_bytes(40 << 20, 7),
            mode: 0o644,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        },
        Entry::file(
            "data/small.txt",
            b"a small file next to a huge one\n".to_vec(),
            0o644,
        ),
    ];
    build_image(
        &dir.join("oci-large"),
        &[busybox_layer()?, big],
        &["/bin/sh"],
    )
}

/// Pushes `image` as `REPO:gzip` and converts it to `REPO:estargz` and `REPO:zstdchunked`
/// with `ctr-remote image convert` (in `containerd`'s content store). `record` optionally
/// lists files (paths relative to the root) to prioritize with a landmark in the eStargz
/// variant. Returns the three references.
pub fn publish(
    containerd: &Containerd,
    registry: &str,
    repo: &str,
    image: &BuiltImage,
    record: &[&str],
) -> Result<[String; 3]> {
    let gzip = format!("{registry}/{repo}:gzip");
    let esgz = format!("{registry}/{repo}:estargz");
    let zstd = format!("{registry}/{repo}:zstdchunked");
    push(image, &gzip)?;
    containerd.ctr(&["image", "pull", "--plain-http", &gzip])?;
    let mut args = vec!["image", "convert", "--oci", "--estargz"];
    let record_file = image.layout.with_extension("record.json");
    if !record.is_empty() {
        let lines: Vec<String> = record
            .iter()
            .map(|p| {
                serde_json::json!({"path": p, "manifestDigest": image.manifest, "layerIndex": image.layers.len() - 1})
                    .to_string()
            })
            .collect();
        std::fs::write(&record_file, lines.join("\n") + "\n")?;
        args.push("--estargz-record-in");
        args.push(record_file.to_str().expect("utf-8 path"));
    }
    args.extend([gzip.as_str(), esgz.as_str()]);
    containerd.ctr_remote(&args)?;
    containerd.ctr_remote(&["image", "convert", "--oci", "--zstdchunked", &gzip, &zstd])?;
    for r in [&esgz, &zstd] {
        containerd.ctr(&["image", "push", "--plain-http", r, r])?;
        // Forget the converted images locally: pulls must go to the registry.
        containerd.ctr(&["image", "rm", r])?;
    }
    containerd.ctr(&["image", "rm", &gzip])?;
    containerd.ctr(&["content", "prune", "references"]).ok();
    Ok([gzip, esgz, zstd])
}
