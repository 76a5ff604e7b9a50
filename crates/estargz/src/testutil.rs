//! Test-only writer of eStargz and zstd:chunked blobs, following the byte layouts the parser
//! reads: every chunk in its own gzip member / zstd frame (optionally several small files in
//! one member with `innerOffset`), the TOC (a tar entry in a gzip member, or a zstd frame in a
//! skippable frame) and the footer. Tests can tamper with the TOC JSON before it is written.

use std::io::Write;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::footer::LayerFormat;
use crate::toc::sha256_digest;

/// An entry to write.
pub enum Ent<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    /// Several small files sharing one compressed member (innerOffset).
    Packed(Vec<(&'a str, &'a [u8])>),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
    Raw(Value),
}

/// A written blob.
pub struct Built {
    pub blob: Vec<u8>,
    pub toc_digest: String,
}

fn compress(format: LayerFormat, data: &[u8]) -> Vec<u8> {
    match format {
        LayerFormat::Estargz => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        LayerFormat::ZstdChunked => zstd::encode_all(data, 1).unwrap(),
    }
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Writes a blob; `tamper` may edit the TOC JSON before it is serialised.
pub fn build(
    format: LayerFormat,
    entries: &[Ent<'_>],
    chunk_size: usize,
    tamper: impl FnOnce(&mut Value),
) -> Built {
    let mut blob = Vec::new();
    let mut toc = Vec::new();
    for e in entries {
        match e {
            Ent::Dir(p, mode) => toc.push(
                json!({"name": p, "type": "dir", "mode": mode, "modtime": "2024-01-02T03:04:05Z"}),
            ),
            Ent::File(p, data, mode) => {
                if data.is_empty() {
                    toc.push(
                        json!({"name": p, "type": "reg", "mode": mode, "digest": digest(data)}),
                    );
                    continue;
                }
                let chunked = data.len() > chunk_size;
                for (i, c) in data.chunks(chunk_size).enumerate() {
                    let offset = blob.len();
                    blob.extend(compress(format, c));
                    let last = (i + 1) * chunk_size >= data.len();
                    let mut ent = if i == 0 {
                        json!({"name": p, "type": "reg", "size": data.len(), "mode": mode, "digest": digest(data), "uid": 1000, "gid": 1001})
                    } else {
                        json!({"name": p, "type": "chunk", "chunkOffset": i * chunk_size})
                    };
                    ent["offset"] = json!(offset);
                    ent["chunkDigest"] = json!(digest(c));
                    if chunked && !last {
                        ent["chunkSize"] = json!(c.len());
                    }
                    toc.push(ent);
                }
            }
            Ent::Packed(files) => {
                let offset = blob.len();
                let mut joined = Vec::new();
                for (p, data) in files {
                    toc.push(json!({"name": p, "type": "reg", "size": data.len(), "mode": 0o644, "offset": offset,
                        "innerOffset": joined.len(), "digest": digest(data), "chunkDigest": digest(data)}));
                    joined.extend_from_slice(data);
                }
                blob.extend(compress(format, &joined));
            }
            Ent::Symlink(p, t) => {
                toc.push(json!({"name": p, "type": "symlink", "linkName": t, "mode": 0o777}))
            }
            Ent::Hardlink(p, t) => toc.push(json!({"name": p, "type": "hardlink", "linkName": t})),
            Ent::Char(p, ma, mi) => toc.push(
                json!({"name": p, "type": "char", "devMajor": ma, "devMinor": mi, "mode": 0o600}),
            ),
            Ent::Fifo(p) => toc.push(json!({"name": p, "type": "fifo", "mode": 0o644})),
            Ent::Raw(v) => toc.push(v.clone()),
        }
    }
    let mut toc = json!({"version": 1, "entries": toc});
    tamper(&mut toc);
    let json_bytes = serde_json::to_vec_pretty(&toc).unwrap();
    let toc_digest = sha256_digest(&json_bytes);
    match format {
        LayerFormat::Estargz => {
            let toc_offset = blob.len() as u64;
            let mut tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(json_bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, "stargz.index.json", json_bytes.as_slice())
                .unwrap();
            let tar_bytes = tar.into_inner().unwrap();
            blob.extend(compress(format, &tar_bytes));
            blob.extend_from_slice(&[
                0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
            ]);
            blob.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
            blob.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        LayerFormat::ZstdChunked => {
            let compressed = compress(format, &json_bytes);
            blob.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
            blob.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
            let toc_offset = blob.len() as u64;
            blob.extend_from_slice(&compressed);
            blob.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
            blob.extend_from_slice(&40u32.to_le_bytes());
            for v in [
                toc_offset,
                compressed.len() as u64,
                json_bytes.len() as u64,
                1,
            ] {
                blob.extend_from_slice(&v.to_le_bytes());
            }
            blob.extend_from_slice(b"GnUlInUx");
        }
    }
    Built { blob, toc_digest }
}
