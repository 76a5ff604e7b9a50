//! Building OCI images from a list of tar entries: gzip layers, config with diff IDs, manifest,
//! and an OCI image layout that `skopeo` pushes to the test registry.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use crate::procs::run;

/// One entry of a layer tar.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory.
    Dir { path: String, mode: u32 },
    /// A regular file.
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
        xattrs: Vec<(String, Vec<u8>)>,
    },
    /// A symbolic link.
    Symlink { path: String, target: String },
    /// A hard link to an earlier entry of the same layer.
    Hardlink { path: String, target: String },
    /// A character device.
    CharDev {
        path: String,
        major: u32,
        minor: u32,
    },
    /// A named pipe.
    Fifo { path: String },
}

impl Entry {
    /// A root-owned file.
    pub fn file(path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Entry {
        Entry::File {
            path: path.into(),
            data: data.into(),
            mode,
            uid: 0,
            gid: 0,
            xattrs: Vec::new(),
        }
    }

    /// A directory.
    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode,
        }
    }

    /// A whiteout deleting `path` of a lower layer.
    pub fn whiteout(path: &str) -> Entry {
        let (dir, name) = path
            .rsplit_once('/')
            .map(|(d, n)| (format!("{d}/"), n))
            .unwrap_or((String::new(), path));
        Entry::file(&format!("{dir}.wh.{name}"), Vec::new(), 0o644)
    }

    /// Marks `dir` opaque: lower layers' contents of it are hidden.
    pub fn opaque(dir: &str) -> Entry {
        Entry::file(&format!("{dir}/.wh..wh..opq"), Vec::new(), 0o644)
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

/// The uncompressed tar of `entries`.
pub fn layer_tar(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            Entry::Dir { path, mode } => {
                let mut h = header(tar::EntryType::Directory, *mode, 0, 0, 0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
            }
            Entry::File {
                path,
                data,
                mode,
                uid,
                gid,
                xattrs,
            } => {
                if !xattrs.is_empty() {
                    let pax: Vec<(String, &[u8])> = xattrs
                        .iter()
                        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                        .collect();
                    b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))?;
                }
                let mut h = header(
                    tar::EntryType::Regular,
                    *mode,
                    *uid,
                    *gid,
                    data.len() as u64,
                );
                b.append_data(&mut h, path, data.as_slice())?;
            }
            Entry::Symlink { path, target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
                b.append_link(&mut h, path, target)?;
            }
            Entry::Hardlink { path, target } => {
                let mut h = header(tar::EntryType::Link, 0o644, 0, 0, 0);
                b.append_link(&mut h, path, target)?;
            }
            Entry::CharDev { path, major, minor } => {
                let mut h = header(tar::EntryType::Char, 0o666, 0, 0, 0);
                h.set_device_major(*major)?;
                h.set_device_minor(*minor)?;
                b.append_data(&mut h, path, std::io::empty())?;
            }
            Entry::Fifo { path } => {
                let mut h = header(tar::EntryType::Fifo, 0o644, 0, 0, 0);
                b.append_data(&mut h, path, std::io::empty())?;
            }
        }
    }
    Ok(b.into_inner()?)
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn put_blob(layout: &Path, data: &[u8]) -> Result<(String, u64)> {
    let digest = sha256(data);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(digest.trim_start_matches("sha256:")), data)?;
    Ok((digest, data.len() as u64))
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A built image: its OCI layout directory and the digests involved.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// OCI layout dir (tag `latest`).
    pub layout: std::path::PathBuf,
    /// Manifest digest.
    pub manifest: String,
    /// Compressed layer digests, bottom first.
    pub layers: Vec<String>,
    /// Total compressed layer bytes.
    pub layer_bytes: u64,
}

/// Writes an OCI image layout with one gzip layer per entry list.
pub fn build_image(layout: &Path, layers: &[Vec<Entry>], cmd: &[&str]) -> Result<BuiltImage> {
    let tars = layers
        .iter()
        .map(|e| layer_tar(e))
        .collect::<Result<Vec<_>>>()?;
    build_image_from_tars(layout, &tars, cmd)
}

/// Writes an OCI image layout (tag `latest`) with one gzip layer per tar, bottom first; the
/// tars go in as they are.
pub fn build_image_from_tars(layout: &Path, tars: &[Vec<u8>], cmd: &[&str]) -> Result<BuiltImage> {
    let _ = std::fs::remove_dir_all(layout);
    std::fs::create_dir_all(layout)?;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut digests = Vec::new();
    let mut total = 0;
    for tar in tars {
        diff_ids.push(sha256(tar));
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar)?;
        let (digest, size) = put_blob(layout, &gz.finish()?)?;
        total += size;
        digests.push(digest.clone());
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size,
        }));
    }
    let config = serde_json::json!({
        "architecture": oci_arch(), "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cs) = put_blob(layout, &serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs,
    });
    let (md, ms) = put_blob(layout, &serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(BuiltImage {
        layout: layout.to_owned(),
        manifest: md,
        layers: digests,
        layer_bytes: total,
    })
}

/// Reads an OCI image layout (tag `latest`) back into a [`BuiltImage`].
pub fn read_layout(layout: &Path) -> Result<BuiltImage> {
    let read_json = |p: &Path| -> Result<serde_json::Value> {
        let raw = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
        serde_json::from_slice(&raw).with_context(|| format!("{} is not JSON", p.display()))
    };
    let index = read_json(&layout.join("index.json"))?;
    let manifest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        .and_then(|m| m["digest"].as_str())
        .with_context(|| format!("{} has no tag latest", layout.display()))?
        .to_owned();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let m = read_json(&blob(&manifest))?;
    let mut layers = Vec::new();
    let mut layer_bytes = 0;
    for l in m["layers"].as_array().into_iter().flatten() {
        let d = l["digest"]
            .as_str()
            .with_context(|| format!("layer without digest in {manifest}"))?;
        layer_bytes += l["size"].as_u64().unwrap_or(0);
        layers.push(d.to_owned());
    }
    Ok(BuiltImage {
        layout: layout.to_owned(),
        manifest,
        layers,
        layer_bytes,
    })
}

/// Pushes a built image to `ref` (plain HTTP registry).
pub fn push(image: &BuiltImage, reference: &str) -> Result<()> {
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", image.layout.display()))
        .arg(format!("docker://{reference}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_layout_reads_back_with_its_layers() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let built = build_image(
            &layout,
            &[
                vec![Entry::dir("a", 0o755), Entry::file("a/f", "x", 0o644)],
                vec![Entry::whiteout("a/f"), Entry::opaque("a")],
            ],
            &["/bin/sh"],
        )
        .unwrap();
        let read = read_layout(&layout).unwrap();
        assert_eq!(read.manifest, built.manifest);
        assert_eq!(read.layers, built.layers);
        assert_eq!(read.layer_bytes, built.layer_bytes);
        let tar = layer_tar(&[Entry::whiteout("a/f"), Entry::opaque("a")]).unwrap();
        let names: Vec<String> = tar::Archive::new(tar.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a/.wh.f", "a/.wh..wh..opq"]);
        assert!(read_layout(dir.path()).is_err(), "not a layout");
    }
}
