//! The lazy filesystem through the real kernel: real `ctr-remote` layers (eStargz and
//! zstd:chunked) mounted with FUSE from a piece store, read back with ordinary syscalls and
//! compared with what the TOC says; a tampered chunk reads as EIO. Needs root and /dev/fuse.

use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dragonfly_estargz::{decode_chunk, IndexOptions, LayerFormat, LayerIndex};
use dragonfly_storage::testing::MemSource;
use dragonfly_storage::{PieceStore, StoreConfig};
use sha2::{Digest, Sha256};

use super::mount::{adopt, mount, MountedLayerFs};
use super::{ChunkCache, ChunkReader, LayerFs};
use crate::layer::toc::load_index;
use crate::metrics::Metrics;

fn testdata(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../crates/estargz/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

struct Mounted {
    _dir: tempfile::TempDir,
    mp: PathBuf,
    fs: Option<MountedLayerFs>,
    index: Arc<LayerIndex>,
    format: LayerFormat,
    blob: Vec<u8>,
    source: Arc<MemSource>,
    reader: ChunkReader,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(fs) = self.fs.take() {
            fs.unmount();
        }
    }
}

/// Mounts `blob` (named by its real digest) served from memory through a fresh piece store.
async fn mount_blob(blob: Vec<u8>, digest: &str, toc_digest: &str) -> Mounted {
    assert!(
        nix::unistd::geteuid().is_root(),
        "FUSE tests need root (sudo scripts/test.sh)"
    );
    let dir = tempfile::Builder::new()
        .prefix("dfly-fs-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let config = StoreConfig {
        piece_length: 64 * 1024,
        ..StoreConfig::default()
    };
    let store = PieceStore::open(&dir.path().join("cache"), config)
        .await
        .unwrap();
    let source = MemSource::new(blob.clone());
    let b = store
        .blob(digest, blob.len() as u64, Arc::new(source.clone()))
        .unwrap();
    let (index, format) = load_index(&b, Some(toc_digest.to_owned()), IndexOptions::default())
        .await
        .unwrap()
        .expect("a TOC footer");
    let index = Arc::new(index);
    let metrics = Metrics::new();
    let reader = ChunkReader::new(b, format, ChunkCache::new(8), metrics.clone());
    let fs = LayerFs::new(
        index.clone(),
        reader.clone(),
        tokio::runtime::Handle::current(),
        Duration::from_secs(60),
        metrics,
    );
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let m = mp.clone();
    let fs = tokio::task::spawn_blocking(move || mount(fs, &m, 2))
        .await
        .unwrap()
        .unwrap();
    Mounted {
        _dir: dir,
        mp,
        fs: Some(fs),
        index,
        format,
        blob,
        source,
        reader,
    }
}

fn ino_of(idx: &LayerIndex, p: &str) -> u64 {
    let mut ino = LayerIndex::ROOT;
    for c in p.split('/') {
        ino = idx
            .lookup(ino, OsStr::new(c))
            .unwrap_or_else(|| panic!("{p} not in index"));
    }
    ino
}

/// A file's bytes decoded straight from the blob, bypassing the filesystem.
fn expected(m: &Mounted, p: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for c in &m.index.node(ino_of(&m.index, p)).unwrap().chunks {
        out.extend(
            decode_chunk(
                m.format,
                &m.blob[c.compressed_offset as usize..c.compressed_end as usize],
                c,
            )
            .unwrap(),
        );
    }
    out
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the length passed.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

const LAYER0: [(&str, &str, &str); 2] = [
    (
        "estargz-layer0.bin",
        "sha256:2b7fce0d41834bb7fc12025a7a787b64740b65e49ba41a9224e8d67825aaf2a1",
        "sha256:b39ef06a1474844a46665df732dacbb0f37c0270e3571023044ebb01035e8e1e",
    ),
    (
        "zstdchunked-layer0.bin",
        "sha256:0ae0a9246a773eb96a659fcf4eadd9a8572cd108e258347c6decb22e317fdae5",
        "sha256:906aadad38769842a8cc6ed53a7d773b762c97c4fcaeb366d08eb4b3de3335fd",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_layers_read_back_through_the_kernel() {
    for (file, digest, toc) in LAYER0 {
        let blob = testdata(file);
        assert_eq!(sha256(&blob), digest);
        let m = mount_blob(blob, digest, toc).await;
        let requests_after_mount = m.source.requests().len();
        let mp = m.mp.clone();
        let want_hello = expected(&m, "etc/hello.txt");
        let want_big = expected(&m, "data/big.txt");
        let want_uni = expected(&m, "ü-ñame/файл");
        tokio::task::spawn_blocking(move || {
            // Directory listing: the landmark is hidden.
            let mut names: Vec<String> = std::fs::read_dir(&mp)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in [
                "data", "dir", "empty", "etc", "fifo", "null", "opq", "ü-ñame",
            ] {
                assert!(
                    names.iter().any(|x| x == n),
                    "{file}: {n} missing from {names:?}"
                );
            }
            assert!(
                !names.iter().any(|x| x.contains("landmark")),
                "{file}: {names:?}"
            );

            // Contents, across chunk boundaries and at odd offsets.
            assert_eq!(std::fs::read(mp.join("etc/hello.txt")).unwrap(), want_hello);
            assert_eq!(std::fs::read(mp.join("ü-ñame/файл")).unwrap(), want_uni);
            let big = std::fs::read(mp.join("data/big.txt")).unwrap();
            assert!(
                big.len() > 4 << 20,
                "{file}: big.txt is {} bytes",
                big.len()
            );
            assert_eq!(sha256(&big), sha256(&want_big), "{file}: big.txt differs");
            let f = std::fs::File::open(mp.join("data/big.txt")).unwrap();
            let mut buf = vec![0u8; 9000];
            let at = (4 << 20) - 4000;
            f.read_exact_at(&mut buf, at as u64).unwrap();
            assert_eq!(buf, want_big[at..at + 9000]);
            assert_eq!(std::fs::read(mp.join("empty")).unwrap(), b"");

            // Metadata.
            let hello = std::fs::symlink_metadata(mp.join("etc/hello.txt")).unwrap();
            assert_ne!(hello.mode() & 0o4000, 0, "{file}: setuid bit lost");
            let hard = std::fs::symlink_metadata(mp.join("dir/hard")).unwrap();
            assert_eq!(
                hard.ino(),
                hello.ino(),
                "{file}: hardlinks must share an inode"
            );
            assert_eq!(hello.nlink(), 2);
            let empty = std::fs::symlink_metadata(mp.join("empty")).unwrap();
            assert_eq!((empty.uid(), empty.gid(), empty.len()), (1000, 1001, 0));
            assert_eq!(
                std::fs::read_link(mp.join("dir/link")).unwrap(),
                Path::new("../etc/hello.txt")
            );
            assert_eq!(std::fs::read(mp.join("dir/link")).unwrap(), want_hello);
            let null = std::fs::symlink_metadata(mp.join("null")).unwrap();
            assert!(null.file_type().is_char_device());
            assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
            assert!(std::fs::symlink_metadata(mp.join("fifo"))
                .unwrap()
                .file_type()
                .is_fifo());
            assert_eq!(
                getxattr(&mp.join("etc/hello.txt"), "user.note").as_deref(),
                Some(&b"hi"[..])
            );
            assert_eq!(getxattr(&mp.join("etc/hello.txt"), "user.absent"), None);
            let st = nix::sys::statvfs::statvfs(&mp).unwrap();
            assert!(st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
            let e = std::fs::write(mp.join("etc/new"), b"x").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{file}: {e}");
            assert_eq!(
                std::fs::metadata(mp.join("nothing")).unwrap_err().kind(),
                std::io::ErrorKind::NotFound
            );
        })
        .await
        .unwrap();
        if m.blob.len() > 4 * 64 * 1024 {
            assert!(
                m.source.requests().len() > requests_after_mount,
                "{file}: file data must have been fetched lazily after the mount"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_chunk_reads_as_eio_and_others_still_work() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    for (file, digest, toc) in LAYER0 {
        let mut blob = testdata(file);
        // Find big.txt's second chunk in a clean mount's index, then corrupt it in the source.
        let clean = mount_blob(blob.clone(), digest, toc).await;
        let c = clean
            .index
            .node(ino_of(&clean.index, "data/big.txt"))
            .unwrap()
            .chunks[1]
            .clone();
        drop(clean);
        let mid = ((c.compressed_offset + c.compressed_end) / 2) as usize;
        blob[mid] ^= 0x5a;
        // The blob no longer matches its digest; that is caught on completion, but the chunk
        // must be refused the moment it is read.
        let m = mount_blob(blob, digest, toc).await;
        let mp = m.mp.clone();
        let want_hello = expected(&m, "etc/hello.txt");
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(mp.join("data/big.txt")).unwrap();
            let mut buf = vec![0u8; 4096];
            let e = f.read_exact_at(&mut buf, c.file_offset + 10).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{file}: {e}");
            // The first chunk and other files are fine.
            f.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(std::fs::read(mp.join("etc/hello.txt")).unwrap(), want_hello);
        })
        .await
        .unwrap();
    }
}

/// What a successor process does: a new session over the same description, no INIT, and
/// files the kernel already has open (and its cached node ids) keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_connection_is_adopted_without_init() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let (file, digest, toc) = LAYER0[0];
    let mut m = mount_blob(testdata(file), digest, toc).await;
    let want = expected(&m, "data/big.txt");
    let mp = m.mp.clone();
    let f = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(mp.join("data/big.txt")).unwrap();
        let mut head = vec![0u8; 4096];
        f.read_exact_at(&mut head, 0).unwrap();
        f
    })
    .await
    .unwrap();
    let first = m.fs.take().unwrap();
    let negotiated = first.negotiated();
    let fd = first.fd().try_clone().unwrap();
    tokio::task::spawn_blocking(move || first.hand_over(Duration::from_secs(1)))
        .await
        .unwrap();
    let fs = LayerFs::new(
        m.index.clone(),
        m.reader.clone(),
        tokio::runtime::Handle::current(),
        Duration::from_secs(60),
        Metrics::new(),
    );
    let mp = m.mp.clone();
    let second = tokio::task::spawn_blocking(move || adopt(fd, fs, &mp, 2, negotiated))
        .await
        .unwrap()
        .unwrap();
    m.fs = Some(second);
    let mp = m.mp.clone();
    let hello = expected(&m, "etc/hello.txt");
    tokio::task::spawn_blocking(move || {
        let mut all = vec![0u8; want.len()];
        f.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(
            all, want,
            "the open file reads on through the adopted connection"
        );
        assert_eq!(std::fs::read(mp.join("etc/hello.txt")).unwrap(), hello);
        let names: Vec<_> = std::fs::read_dir(mp.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.iter().any(|n| n == "hello.txt"), "{names:?}");
    })
    .await
    .unwrap();
}
