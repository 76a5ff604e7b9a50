//! Interop: layers written by the reference tool (`ctr-remote image convert`) parse, verify
//! against their manifest's toc.digest, and every chunk of every file decodes and verifies.

use std::ffi::OsStr;

use dragonfly_estargz::*;

struct Fixture {
    file: &'static str,
    toc_digest: &'static str,
}

const LAYERS: &[Fixture] = &[
    Fixture {
        file: "estargz-layer0.bin",
        toc_digest: "sha256:b39ef06a1474844a46665df732dacbb0f37c0270e3571023044ebb01035e8e1e",
    },
    Fixture {
        file: "estargz-layer1.bin",
        toc_digest: "sha256:94c16232885bf078a8033a001fdd74d9ac06f79132176dfae9c045bcdb81753e",
    },
    Fixture {
        file: "zstdchunked-layer0.bin",
        toc_digest: "sha256:906aadad38769842a8cc6ed53a7d773b762c97c4fcaeb366d08eb4b3de3335fd",
    },
    Fixture {
        file: "zstdchunked-layer1.bin",
        toc_digest: "sha256:2bc3d71cae628363b4a4a357fcf8c7200cd69ec6117205804c1cc1ef625050b6",
    },
];

fn load(f: &Fixture) -> (Vec<u8>, LayerIndex, LayerFormat) {
    let blob = std::fs::read(format!(
        "{}/testdata/{}",
        env!("CARGO_MANIFEST_DIR"),
        f.file
    ))
    .unwrap();
    let size = blob.len() as u64;
    let loc = locate_toc(size, &blob[(size - FOOTER_READ_SIZE) as usize..]).unwrap();
    let toc = &blob[loc.toc_offset as usize..(loc.toc_offset + loc.toc_len) as usize];
    let decoded = decode_toc(&loc, toc, &Limits::default(), Some(f.toc_digest)).unwrap();
    let idx = LayerIndex::build(&decoded.toc, loc.toc_offset, &IndexOptions::default()).unwrap();
    (blob, idx, loc.format)
}

fn lookup(idx: &LayerIndex, p: &str) -> Option<u64> {
    let mut ino = LayerIndex::ROOT;
    for c in p.split('/') {
        ino = idx.lookup(ino, OsStr::new(c))?;
    }
    Some(ino)
}

fn read(idx: &LayerIndex, blob: &[u8], fmt: LayerFormat, ino: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for c in &idx.node(ino).unwrap().chunks {
        out.extend(
            decode_chunk(
                fmt,
                &blob[c.compressed_offset as usize..c.compressed_end as usize],
                c,
            )
            .unwrap(),
        );
    }
    out
}

#[test]
fn base_layers_have_the_expected_tree() {
    for f in LAYERS {
        if !f.file.ends_with("layer0.bin") {
            continue;
        }
        let (blob, idx, fmt) = load(f);
        let hello = lookup(&idx, "etc/hello.txt").unwrap();
        assert_eq!(
            lookup(&idx, "dir/hard"),
            Some(hello),
            "{}: hardlink",
            f.file
        );
        let n = idx.node(hello).unwrap();
        assert_eq!((n.mode, n.nlink), (0o4755, 2));
        assert_eq!(
            n.xattrs.get(OsStr::new("user.note")).map(Vec::as_slice),
            Some(&b"hi"[..])
        );
        assert_eq!(read(&idx, &blob, fmt, hello), b"hello\n");
        let big = lookup(&idx, "data/big.txt").unwrap();
        let data = read(&idx, &blob, fmt, big);
        assert_eq!(data.len(), 4_950_000);
        assert!(data.starts_with(b"line 0000 of a compressible multi-chunk file\n"));
        assert_eq!(idx.node(big).unwrap().chunks.len(), 2);
        let empty = idx.node(lookup(&idx, "empty").unwrap()).unwrap();
        assert_eq!((empty.size, empty.uid, empty.gid), (0, 1000, 1001));
        let null = idx.node(lookup(&idx, "null").unwrap()).unwrap();
        assert_eq!(
            (null.kind, null.dev_major, null.dev_minor),
            (NodeKind::CharDevice, 1, 3)
        );
        assert_eq!(
            idx.node(lookup(&idx, "fifo").unwrap()).unwrap().kind,
            NodeKind::Fifo
        );
        let link = idx.node(lookup(&idx, "dir/link").unwrap()).unwrap();
        assert_eq!(
            link.link_target.as_deref(),
            Some(OsStr::new("../etc/hello.txt"))
        );
        assert_eq!(
            read(&idx, &blob, fmt, lookup(&idx, "ü-ñame/файл").unwrap()),
            b"uni\n"
        );
        match fmt {
            LayerFormat::Estargz => assert!(
                matches!(idx.prefetch(), Prefetch::Landmark { .. }),
                "recorded landmark"
            ),
            LayerFormat::ZstdChunked => assert_eq!(idx.prefetch(), Prefetch::NoPrefetch),
        }
    }
}

#[test]
fn upper_layers_have_whiteouts() {
    for f in LAYERS {
        if !f.file.ends_with("layer1.bin") {
            continue;
        }
        let (blob, idx, fmt) = load(f);
        let w = idx.node(lookup(&idx, "empty").unwrap()).unwrap();
        assert_eq!(
            (w.kind, w.dev_major, w.dev_minor),
            (NodeKind::CharDevice, 0, 0)
        );
        assert_eq!(
            idx.node(lookup(&idx, "opq/old").unwrap()).unwrap().kind,
            NodeKind::CharDevice
        );
        assert_eq!(
            read(&idx, &blob, fmt, lookup(&idx, "opq/new").unwrap()),
            b"new\n"
        );
    }
}

#[test]
fn every_chunk_of_every_layer_verifies() {
    for f in LAYERS {
        let (blob, idx, fmt) = load(f);
        for ino in 1..=idx.len() as u64 {
            for c in &idx.node(ino).unwrap().chunks {
                decode_chunk(
                    fmt,
                    &blob[c.compressed_offset as usize..c.compressed_end as usize],
                    c,
                )
                .unwrap_or_else(|e| panic!("{}: inode {ino}: {e}", f.file));
            }
        }
    }
}

#[test]
fn a_flipped_byte_in_the_blob_is_caught() {
    let (mut blob, idx, fmt) = load(&LAYERS[0]);
    let big = lookup(&idx, "data/big.txt").unwrap();
    let c = idx.node(big).unwrap().chunks[0].clone();
    let at = (c.compressed_offset + (c.compressed_end - c.compressed_offset) / 2) as usize;
    blob[at] ^= 1;
    assert!(decode_chunk(
        fmt,
        &blob[c.compressed_offset as usize..c.compressed_end as usize],
        &c
    )
    .is_err());
}
