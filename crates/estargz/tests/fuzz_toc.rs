//! Fuzzing the footer, TOC and index parsers and chunk verification with mutations of the real
//! layers in testdata/ (eStargz and zstd:chunked, written by `ctr-remote`) and random bytes.
//!
//! Properties, for every input: no panic, every failure an `Err`, each case within its time
//! bound, no single allocation over 1 GiB and no case holding over 192 MiB at once (the
//! limits given are 1 MiB compressed / 4 MiB JSON); and what is accepted keeps the parsers'
//! promises: a located TOC lies inside the blob before its footer, a decoded TOC is within the
//! limits, an index's chunks tile each file and lie in the data area, and a decoded chunk has
//! the TOC's length and digest.
//!
//! `DRAGONFLY_FUZZ_SECS=60 cargo test --release -p dragonfly-estargz --test fuzz_toc -- --nocapture`
//! runs each target for a minute (see `scripts/bench.sh fuzz`).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::Duration;

use dragonfly_estargz::*;
use dragonfly_fuzzkit::{mutate_bytes, mutate_json, mutate_json_text, Fuzz, MeteredAlloc, Rng};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[global_allocator]
static ALLOC: MeteredAlloc = MeteredAlloc::new(dragonfly_fuzzkit::HARD_CAP_DEFAULT);

/// The smallest footer (legacy stargz).
const MIN_FOOTER: u64 = 47;
const CASE_MEMORY: usize = 192 << 20;

thread_local! {
    /// How far this thread's cases got: located, decoded, indexed, chunks verified.
    static DEPTH: std::cell::Cell<[u64; 4]> = const { std::cell::Cell::new([0; 4]) };
}

fn reached(stage: usize) {
    DEPTH.with(|d| {
        let mut v = d.get();
        v[stage] += 1;
        d.set(v);
    });
}

fn print_depth(target: &str) {
    let [located, decoded, indexed, chunks] = DEPTH.with(|d| d.get());
    println!(
        "fuzz {target}: reached: {located} TOCs located, {decoded} decoded, {indexed} indexed, {chunks} chunks verified"
    );
}

fn limits() -> Limits {
    Limits {
        max_toc_compressed: 1 << 20,
        max_toc_json: 4 << 20,
        max_entries: 20_000,
    }
}

struct Layer {
    blob: Vec<u8>,
    loc: TocLocation,
    json: Vec<u8>,
    doc: Value,
}

fn tail(blob: &[u8]) -> &[u8] {
    &blob[blob.len() - (FOOTER_READ_SIZE as usize).min(blob.len())..]
}

/// The TOC JSON inside a layer's TOC bytes (the test's own reader, independent of the crate's).
fn raw_toc_json(format: LayerFormat, toc: &[u8]) -> Vec<u8> {
    match format {
        LayerFormat::ZstdChunked => zstd::decode_all(toc).unwrap(),
        LayerFormat::Estargz => {
            let mut a = tar::Archive::new(flate2::read::GzDecoder::new(toc));
            let mut e = a.entries().unwrap().next().unwrap().unwrap();
            let mut out = Vec::new();
            e.read_to_end(&mut out).unwrap();
            out
        }
    }
}

fn layers() -> &'static [Layer] {
    static LAYERS: OnceLock<Vec<Layer>> = OnceLock::new();
    LAYERS.get_or_init(|| {
        [
            "estargz-layer0.bin",
            "estargz-layer1.bin",
            "zstdchunked-layer0.bin",
            "zstdchunked-layer1.bin",
        ]
        .iter()
        .map(|f| {
            let path = format!("{}/testdata/{f}", env!("CARGO_MANIFEST_DIR"));
            let blob = std::fs::read(path).unwrap();
            let loc = locate_toc(blob.len() as u64, tail(&blob)).unwrap();
            let toc = &blob[loc.toc_offset as usize..(loc.toc_offset + loc.toc_len) as usize];
            let json = raw_toc_json(loc.format, toc);
            let doc = serde_json::from_slice(&json).unwrap();
            Layer {
                blob,
                loc,
                json,
                doc,
            }
        })
        .collect()
    })
}

/// Mutates the uncompressed framing of a TOC.
type Framer<'a> = dyn FnMut(&mut Vec<u8>) + 'a;

/// The blob `data` (everything before the TOC) followed by a TOC holding `json` and its
/// footer; `frame` may mutate the uncompressed framing (the TOC's tar stream for eStargz).
fn with_toc(
    format: LayerFormat,
    data: &[u8],
    json: &[u8],
    frame: Option<&mut Framer<'_>>,
) -> Vec<u8> {
    let mut blob = data.to_vec();
    let toc_offset = blob.len() as u64;
    match format {
        LayerFormat::Estargz => {
            let mut t = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(json.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, "stargz.index.json", json).unwrap();
            let mut tar_bytes = t.into_inner().unwrap();
            if let Some(f) = frame {
                f(&mut tar_bytes);
            }
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar_bytes).unwrap();
            blob.extend(gz.finish().unwrap());
            blob.extend_from_slice(&[
                0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
            ]);
            blob.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
            blob.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        LayerFormat::ZstdChunked => {
            let compressed = zstd::encode_all(json, 1).unwrap();
            blob.extend_from_slice(&compressed);
            blob.extend(zstd_footer(
                toc_offset,
                compressed.len() as u64,
                json.len() as u64,
                1,
            ));
        }
    }
    blob
}

fn zstd_footer(offset: u64, len: u64, ulen: u64, kind: u64) -> Vec<u8> {
    let mut f = vec![0x50, 0x2a, 0x4d, 0x18];
    f.extend_from_slice(&40u32.to_le_bytes());
    for v in [offset, len, ulen, kind] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(b"GnUlInUx");
    f
}

/// A located TOC lies inside the blob, before the footer, and is not empty.
fn check_location(loc: &TocLocation, size: u64) {
    let end = loc.toc_offset.checked_add(loc.toc_len);
    assert!(
        loc.toc_len > 0 && end.is_some_and(|e| e <= size.saturating_sub(MIN_FOOTER)),
        "a TOC outside the blob was accepted: {loc:?} in {size} bytes"
    );
}

/// An index keeps its promises: nodes and children consistent, chunks tiling each file
/// within the data area; and decoded chunks have the TOC's length and digest.
fn check_index(idx: &LayerIndex, toc_offset: u64, blob: &[u8], format: LayerFormat, deep: bool) {
    assert_eq!(idx.stats().nodes as usize, idx.len());
    let mut decoded = 0;
    for ino in 1..=idx.len() as u64 {
        let n = idx.node(ino).expect("every inode up to len() exists");
        assert!(idx
            .parent(ino)
            .is_some_and(|p| p >= 1 && p as usize <= idx.len()));
        for (name, child) in idx.children(ino) {
            assert!(child >= 1 && child as usize <= idx.len(), "child {child}");
            assert_eq!(idx.lookup(ino, name), Some(child), "lookup {name:?}");
        }
        if n.kind != NodeKind::File {
            assert!(n.chunks.is_empty(), "only files have chunks");
            continue;
        }
        let mut pos = 0u64;
        for c in &n.chunks {
            assert_eq!(c.file_offset, pos, "chunks tile the file");
            assert!(c.len > 0);
            pos = pos.checked_add(c.len).expect("chunk ends overflow");
            assert!(
                c.compressed_offset < c.compressed_end && c.compressed_end <= toc_offset,
                "chunk outside the data area: {c:?} (TOC at {toc_offset})"
            );
        }
        assert_eq!(pos, n.size, "chunks cover the file");
        let probe = [(0, 1), (n.size / 2, n.size), (n.size, u64::MAX), (5, 3)];
        for (a, b) in probe {
            for c in idx.chunks_for(ino, a..b) {
                assert!(c.file_offset < b && c.file_offset + c.len > a);
            }
        }
        for c in &n.chunks {
            if decoded >= 8 || (!deep && c.len > 1 << 20) {
                break;
            }
            decoded += 1;
            let range = c.compressed_offset as usize..c.compressed_end as usize;
            if let Ok(data) = decode_chunk(format, &blob[range.clone()], c) {
                reached(3);
                assert_eq!(data.len() as u64, c.len);
                assert_eq!(<[u8; 32]>::from(Sha256::digest(&data)), c.digest);
            }
            let short = &blob[range.start..range.end - 1];
            assert!(decode_chunk(format, short, c).is_err());
        }
    }
    let _ = idx.lookup(LayerIndex::ROOT, OsStr::new(".."));
    let _ = idx.node(0);
    let _ = idx.node(u64::MAX);
    let _ = idx.children(u64::MAX).count();
}

/// The whole read of a layer, as the snapshotter does it: footer, TOC, index, chunks.
fn exercise(blob: &[u8], allow_unverified_data: bool, deep: bool) {
    let size = blob.len() as u64;
    let Ok(loc) = locate_toc(size, tail(blob)) else {
        return;
    };
    check_location(&loc, size);
    reached(0);
    let toc = &blob[loc.toc_offset as usize..(loc.toc_offset + loc.toc_len) as usize];
    let limits = limits();
    let decoded = match decode_toc(&loc, toc, &limits, None) {
        Ok(d) => d,
        Err(e) => {
            if std::env::var_os("FUZZ_DEBUG").is_some() {
                eprintln!("ERR {e}");
            }
            return;
        }
    };
    reached(1);
    assert_eq!(decoded.toc.version, 1);
    assert!(decoded.toc.entries.len() <= limits.max_entries);
    assert!(verify_toc_digest(&decoded, &decoded.json_digest.clone()).is_ok());
    assert!(decode_toc(&loc, toc, &limits, Some("sha256:00")).is_err());
    let opts = IndexOptions {
        allow_unverified_data,
        ..IndexOptions::default()
    };
    if let Ok(idx) = LayerIndex::build(&decoded.toc, loc.toc_offset, &opts) {
        reached(2);
        check_index(&idx, loc.toc_offset, blob, loc.format, deep);
    }
}

fn footer_input(size: u64, tail: &[u8]) -> Vec<u8> {
    let mut v = size.to_le_bytes().to_vec();
    v.extend_from_slice(tail);
    v
}

const FOOTER_DICT: &[&[u8]] = &[
    b"STARGZ",
    b"SG",
    b"GnUlInUx",
    b"GNUlInUx",
    &[0x50, 0x2a, 0x4d, 0x18],
    &[0x1f, 0x8b, 8, 4],
    b"ffffffffffffffff",
    b"0000000000000000",
    b"1000000000000000",
];

/// Footers: random tails, real ones mutated and zstd:chunked ones with huge fields, and blob
/// sizes that disagree with them.
#[test]
fn fuzz_footer() {
    let layers = layers();
    Fuzz::new("footer")
        .cases(20_000)
        .timeout(Duration::from_secs(5))
        .memory(1 << 20)
        .run(
            |rng| {
                let choice = rng.below(10);
                let (mut size, mut tail) = match choice {
                    0 | 1 => {
                        let size = match rng.below(4) {
                            0 => rng.below(100) as u64,
                            1 => u64::MAX - rng.below(100) as u64,
                            _ => rng.next_u64() >> rng.below(64),
                        };
                        let len = (FOOTER_READ_SIZE.min(size) as usize)
                            .saturating_add_signed(if rng.chance(0.9) { 0 } else { -1 });
                        (size, dragonfly_fuzzkit::random_bytes(rng, len))
                    }
                    2 | 3 => {
                        let pick = |rng: &mut Rng| *rng.pick(dragonfly_fuzzkit::INTERESTING_U64);
                        let (o, l, u) = (pick(rng), pick(rng), pick(rng));
                        let kind = if rng.chance(0.8) { 1 } else { pick(rng) };
                        let mut t = vec![0u8; 32];
                        t.extend(zstd_footer(o, l, u, kind));
                        let size = if rng.chance(0.5) {
                            o.saturating_add(l).saturating_add(48)
                        } else {
                            pick(rng).max(72)
                        };
                        (size, t)
                    }
                    _ => {
                        let l = rng.pick(layers);
                        (l.blob.len() as u64, tail(&l.blob).to_vec())
                    }
                };
                if choice >= 2 {
                    let n = tail.len();
                    mutate_bytes(rng, &mut tail, FOOTER_DICT, &[], Some((0, n)));
                    if rng.chance(0.2) {
                        tail.resize(72, 0);
                    }
                    if rng.chance(0.1) {
                        size = size.wrapping_add(rng.below(200) as u64).wrapping_sub(100);
                    }
                }
                footer_input(size, &tail)
            },
            |input| {
                let size = u64::from_le_bytes(input[..8].try_into().unwrap());
                let tail = &input[8..];
                let Ok(loc) = locate_toc(size, tail) else {
                    return;
                };
                reached(0);
                assert_eq!(tail.len() as u64, FOOTER_READ_SIZE.min(size));
                check_location(&loc, size);
                // The footer's word alone (no TOC bytes read yet) never makes anything allocate
                // its claimed length.
                assert!(decode_toc(&loc, &[], &Limits::default(), None).is_err());
                if loc.toc_len <= 64 {
                    let junk = vec![0x1fu8; loc.toc_len as usize];
                    assert!(decode_toc(&loc, &junk, &limits(), None).is_err());
                }
            },
        );
    print_depth("footer");
}

/// Whole layers with bytes mutated, mostly in the TOC and footer.
#[test]
fn fuzz_blob() {
    let layers = layers();
    let others: Vec<&[u8]> = layers.iter().map(|l| l.blob.as_slice()).collect();
    Fuzz::new("blob").cases(1500).memory(CASE_MEMORY).run(
        |rng| {
            let l = rng.pick(layers);
            let mut blob = l.blob.clone();
            let focus = (l.loc.toc_offset as usize, blob.len());
            mutate_bytes(rng, &mut blob, FOOTER_DICT, &others, Some(focus));
            blob
        },
        |blob| exercise(blob, blob.len() % 2 == 1, blob.len() % 7 == 0),
    );
    print_depth("blob");
}

const TOC_STRINGS: &[&str] = &[
    "dir",
    "reg",
    "chunk",
    "symlink",
    "hardlink",
    "char",
    "block",
    "fifo",
    "etc/hello.txt",
    "dir/hard",
    "data/big.txt",
    "opq/.wh..wh..opq",
    ".wh.empty",
    ".prefetch.landmark",
    ".no.prefetch.landmark",
    "2024-01-02T03:04:05Z",
    "9999-99-99T99:99:99Z",
    "2024-01-02T03:04:05.999999999999+25:00",
    "aGk=",
    "!!not base64",
];

const TOC_KEYS: &[&str] = &[
    "name",
    "type",
    "size",
    "modtime",
    "linkName",
    "mode",
    "uid",
    "gid",
    "devMajor",
    "devMinor",
    "xattrs",
    "digest",
    "offset",
    "innerOffset",
    "chunkOffset",
    "chunkSize",
    "chunkDigest",
    "endOffset",
    "version",
    "entries",
];

/// TOC JSON mutated structurally (huge numbers, hostile names, duplicated entries, deep
/// nesting, ...), written back as a valid TOC member after the layer's real data, so the
/// index builder and chunk decoder see it; sometimes the TOC's tar framing is mutated too.
#[test]
fn fuzz_toc_json() {
    let layers = layers();
    Fuzz::new("toc-json").cases(800).memory(CASE_MEMORY).run(
        |rng| {
            let l = rng.pick(layers);
            let mut doc = l.doc.clone();
            let mut strings: Vec<&str> = TOC_STRINGS.to_vec();
            if let Some(Value::Array(es)) = doc.get("entries") {
                for e in es.iter().take(64) {
                    for k in ["digest", "chunkDigest", "name"] {
                        if let Some(Value::String(s)) = e.get(k) {
                            strings.push(s);
                        }
                    }
                }
            }
            let strings: Vec<String> = strings.iter().map(|s| s.to_string()).collect();
            let strings: Vec<&str> = strings.iter().map(String::as_str).collect();
            let json = if rng.chance(0.05) {
                let mut j = l.json.clone();
                mutate_bytes(rng, &mut j, &[b"\"chunk\"", b"\"reg\""], &[], None);
                j
            } else {
                mutate_json(rng, &mut doc, &strings, TOC_KEYS);
                mutate_json_text(rng, &doc, &[b"\"", b"{", b"[", b"\\u0000"])
            };
            let data = &l.blob[..l.loc.toc_offset as usize];
            if l.loc.format == LayerFormat::Estargz && rng.chance(0.2) {
                let mut frame = |t: &mut Vec<u8>| {
                    let n = t.len().min(1024);
                    mutate_bytes(rng, t, &[b"stargz.index.json", b"ustar"], &[], Some((0, n)))
                };
                with_toc(l.loc.format, data, &json, Some(&mut frame))
            } else {
                with_toc(l.loc.format, data, &json, None)
            }
        },
        |blob| exercise(blob, blob.len() % 3 == 0, false),
    );
    print_depth("toc-json");
}

/// A footer claiming a 2^60-byte TOC (or TOC JSON) is refused before anything of that size is
/// allocated; so is a TOC member whose tar header claims a 2^60-byte JSON.
#[test]
fn huge_lengths_in_footers_and_toc_headers_are_refused_before_allocating() {
    let huge = 1u64 << 60;
    let mut blob = vec![0u8; 32];
    blob.extend(zstd_footer(0, huge, 100, 1));
    let loc = locate_toc(huge + 80, tail(&blob)).unwrap();
    assert_eq!(loc.toc_len, huge);
    assert!(matches!(
        decode_toc(&loc, &[], &Limits::default(), None),
        Err(Error::BadToc(_))
    ));
    let small = TocLocation {
        toc_len: 4,
        toc_uncompressed_len: Some(huge),
        ..loc.clone()
    };
    assert!(matches!(
        decode_toc(&small, &[0; 4], &Limits::default(), None),
        Err(Error::TocTooLarge { .. })
    ));
    // A tar header in the TOC member claiming 2^60 bytes of JSON.
    let l = &layers()[0];
    let data = &l.blob[..l.loc.toc_offset as usize];
    let mut frame = |t: &mut Vec<u8>| {
        let mut h = tar::Header::from_byte_slice(&t[..512]).clone();
        h.set_size(huge);
        h.set_cksum();
        t[..512].copy_from_slice(h.as_bytes());
    };
    let blob = with_toc(l.loc.format, data, &l.json, Some(&mut frame));
    let loc = locate_toc(blob.len() as u64, tail(&blob)).unwrap();
    let toc = &blob[loc.toc_offset as usize..];
    let toc = &toc[..loc.toc_len as usize];
    assert!(matches!(
        decode_toc(&loc, toc, &Limits::default(), None),
        Err(Error::TocTooLarge { .. })
    ));
}
