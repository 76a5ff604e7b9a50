//! The files of one blob on disk: `data` (sparse, the blob's bytes at their offsets),
//! `bitmap` (pieces present and synced to disk, see [`crate::bitmap`]), `boot-bitmap` (pieces
//! present, written before their sync; trusted only by the boot that wrote it, whose page
//! cache still holds their bytes) and `meta.json` (digest, size, piece length, whether the
//! whole blob was verified). Synchronous; callers run it off the async workers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bitmap::Bitmap;
use crate::error::StoreError;

/// What `meta.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub digest: String,
    pub size: u64,
    pub piece_length: u32,
    #[serde(default)]
    pub verified: bool,
    /// What a blob that is not content-addressed (a file by URL) must hash to, when a request
    /// said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_digest: Option<String>,
}

/// First bytes of `boot-bitmap`, then a u8 length and the boot ID, then a bitmap.
const BOOT_MAGIC: &[u8; 8] = b"DFLYBOOT";

/// This boot's ID (`/proc/sys/kernel/random/boot_id`); `None` where the kernel has none, and
/// then no `boot-bitmap` is ever trusted.
fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && s.len() < 256)
    })
    .as_deref()
}

/// The pieces a loaded blob holds.
pub(crate) struct Loaded {
    /// Readable now: this boot's `boot-bitmap` if it wrote one, else `bitmap`.
    pub have: Bitmap,
    /// What `bitmap` names (synced).
    pub durable: Bitmap,
}

/// Open files of one blob.
pub(crate) struct BlobFiles {
    dir: PathBuf,
    data: File,
}

/// `len` bytes of `file` at `offset`, read straight into a fresh buffer's spare capacity (a
/// served piece is not zeroed first, then overwritten). Fails with `UnexpectedEof` where the
/// file is shorter.
fn read_exact_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    buf.reserve_exact(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The allocator may have given more room than asked, and a read may have filled it.
    buf.truncate(len);
    Ok(buf)
}

/// Replaces `path` with `bytes` (a temporary file renamed into place), synced first if `sync`.
fn write_atomically(path: &Path, bytes: &[u8], sync: bool) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(StoreError::io("cannot create", &tmp))?;
    f.write_all(bytes)
        .map_err(StoreError::io("cannot write", &tmp))?;
    if sync {
        f.sync_data().map_err(StoreError::io("cannot sync", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(StoreError::io("cannot rename into place", path))?;
    Ok(())
}

impl BlobFiles {
    /// Creates the files of a new, empty blob in `dir`.
    pub(crate) fn create(dir: &Path, meta: &Meta) -> Result<BlobFiles, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(StoreError::io("cannot create blob directory", dir))?;
        let data_path = dir.join("data");
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&data_path)
            .map_err(StoreError::io("cannot create blob data file", &data_path))?;
        data.set_len(meta.size).map_err(StoreError::io(
            "cannot size blob data file (disk full?)",
            &data_path,
        ))?;
        let files = BlobFiles {
            dir: dir.to_owned(),
            data,
        };
        // The data was just truncated: no bitmap from before may name a piece of it.
        match std::fs::remove_file(dir.join("boot-bitmap")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io(
                    "cannot remove a stale bitmap",
                    dir.join("boot-bitmap"),
                )(e))
            }
            _ => {}
        }
        files.save_bitmap(
            &Bitmap::empty(crate::bitmap::piece_count(meta.size, meta.piece_length)),
            meta,
        )?;
        files.save_meta(meta)?;
        Ok(files)
    }

    /// Opens an existing blob; `Err` means the directory is not a usable blob.
    pub(crate) fn load(dir: &Path) -> Result<(BlobFiles, Meta, Loaded), String> {
        let meta_path = dir.join("meta.json");
        let text = std::fs::read(&meta_path)
            .map_err(|e| format!("cannot read {}: {e}", meta_path.display()))?;
        let meta: Meta = serde_json::from_slice(&text)
            .map_err(|e| format!("bad {}: {e}", meta_path.display()))?;
        let data_path = dir.join("data");
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(|e| format!("cannot open {}: {e}", data_path.display()))?;
        let len = data.metadata().map_err(|e| e.to_string())?.len();
        if len != meta.size {
            return Err(format!(
                "{} is {len} bytes, expected {}",
                data_path.display(),
                meta.size
            ));
        }
        let files = BlobFiles {
            dir: dir.to_owned(),
            data,
        };
        let durable = match std::fs::read(dir.join("bitmap"))
            .map_err(|e| e.to_string())
            .and_then(|b| Bitmap::decode(&b, meta.size, meta.piece_length))
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(blob = %meta.digest, error = %e, "piece bitmap unusable; its pieces will be fetched again");
                Bitmap::empty(crate::bitmap::piece_count(meta.size, meta.piece_length))
            }
        };
        let have = files
            .this_boots_bitmap(&meta)
            .unwrap_or_else(|| durable.clone());
        Ok((files, meta, Loaded { have, durable }))
    }

    /// `boot-bitmap` if this boot wrote it, it is intact, and `bitmap` was not written after
    /// it (as by an older build, which knows only `bitmap`, run in between: a rollback).
    fn this_boots_bitmap(&self, meta: &Meta) -> Option<Bitmap> {
        let path = self.dir.join("boot-bitmap");
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if modified(&self.dir.join("bitmap")) > modified(&path) {
            return None;
        }
        let raw = std::fs::read(&path).ok()?;
        let rest = raw.strip_prefix(BOOT_MAGIC)?;
        let (&len, rest) = rest.split_first()?;
        let (id, bits) = rest.split_at_checked(len as usize)?;
        if Some(id) != boot_id().map(str::as_bytes) {
            return None;
        }
        Bitmap::decode(bits, meta.size, meta.piece_length).ok()
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `bytes` at `offset` (readable at once; durable after [`BlobFiles::sync`]).
    pub(crate) fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.data
            .write_all_at(bytes, offset)
            .map_err(StoreError::io(
                "cannot write blob data (disk full?)",
                self.dir.join("data"),
            ))
    }

    /// Makes every write so far durable.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        self.data.sync_data().map_err(StoreError::io(
            "cannot sync blob data (is the disk failing?)",
            self.dir.join("data"),
        ))
    }

    /// Reads `len` bytes at `offset`.
    pub(crate) fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        read_exact_at(&self.data, offset, len).map_err(StoreError::io(
            "cannot read blob data",
            self.dir.join("data"),
        ))
    }

    /// Saves `bitmap` as the synced one: every piece it names must be synced already.
    pub(crate) fn save_bitmap(&self, bitmap: &Bitmap, meta: &Meta) -> Result<(), StoreError> {
        write_atomically(
            &self.dir.join("bitmap"),
            &bitmap.encode(meta.size, meta.piece_length),
            true,
        )
    }

    /// Saves `bitmap` for this boot, unsynced (cheap: on a reader's path); a restart within
    /// this boot loads it, a reboot falls back to `bitmap`. A no-op where there is no boot ID.
    pub(crate) fn save_boot_bitmap(&self, bitmap: &Bitmap, meta: &Meta) -> Result<(), StoreError> {
        let Some(id) = boot_id() else {
            return Ok(());
        };
        let mut out = BOOT_MAGIC.to_vec();
        out.push(id.len() as u8);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&bitmap.encode(meta.size, meta.piece_length));
        write_atomically(&self.dir.join("boot-bitmap"), &out, false)
    }

    pub(crate) fn save_meta(&self, meta: &Meta) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(meta).expect("meta serializes");
        write_atomically(&self.dir.join("meta.json"), &json, true)
    }

    /// `sha256:<hex>` of the whole data file.
    pub(crate) fn hash(&self) -> Result<String, StoreError> {
        let path = self.dir.join("data");
        let mut f = File::open(&path).map_err(StoreError::io("cannot open blob data", &path))?;
        let mut h = Sha256::new();
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(StoreError::io("cannot read blob data", &path))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(format!("sha256:{}", hex::encode(h.finalize())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_give_exactly_the_range_and_a_range_past_the_end_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let bytes: Vec<u8> = (0..100u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(read_exact_at(&file, 10, 50).unwrap(), &bytes[10..60]);
        assert_eq!(read_exact_at(&file, 0, 100).unwrap(), bytes);
        assert!(read_exact_at(&file, 100, 0).unwrap().is_empty());
        let err = read_exact_at(&file, 90, 20).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    fn bits(pieces: &[u32]) -> Bitmap {
        let mut b = Bitmap::empty(8);
        for p in pieces {
            b.set(*p);
        }
        b
    }

    /// A restart within the boot trusts this boot's bitmap; after a reboot (another boot ID)
    /// or with a damaged one, only the synced bitmap counts; a re-created blob has neither.
    #[test]
    fn this_boots_bitmap_is_trusted_only_by_this_boot() {
        if boot_id().is_none() {
            eprintln!("no boot ID on this kernel: nothing to test");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("b");
        let meta = Meta {
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 8 * 16384,
            piece_length: 16384,
            verified: false,
            content_digest: None,
        };
        let files = BlobFiles::create(&blob, &meta).unwrap();
        files.save_bitmap(&bits(&[1]), &meta).unwrap();
        files.save_boot_bitmap(&bits(&[1, 2, 5]), &meta).unwrap();
        let (_, _, got) = BlobFiles::load(&blob).unwrap();
        assert_eq!((got.have, got.durable), (bits(&[1, 2, 5]), bits(&[1])));

        // `bitmap` written later (an older build ran in between, and may have thrown pieces
        // away): it wins.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        let synced = File::options()
            .write(true)
            .open(blob.join("bitmap"))
            .unwrap();
        synced.set_modified(later).unwrap();
        let (_, _, got) = BlobFiles::load(&blob).unwrap();
        assert_eq!(got.have, bits(&[1]), "after a rollback");
        files.save_bitmap(&bits(&[1]), &meta).unwrap();
        files.save_boot_bitmap(&bits(&[1, 2, 5]), &meta).unwrap();

        let path = blob.join("boot-bitmap");
        let mut raw = std::fs::read(&path).unwrap();
        raw[BOOT_MAGIC.len() + 1] ^= 1; // another boot's ID
        std::fs::write(&path, &raw).unwrap();
        let (_, _, got) = BlobFiles::load(&blob).unwrap();
        assert_eq!(got.have, bits(&[1]), "after a reboot");

        raw[BOOT_MAGIC.len() + 1] ^= 1;
        *raw.last_mut().unwrap() ^= 1; // the bitmap's checksum
        std::fs::write(&path, &raw).unwrap();
        let (_, _, got) = BlobFiles::load(&blob).unwrap();
        assert_eq!(got.have, bits(&[1]), "damaged");

        std::fs::write(&path, &raw[..5]).unwrap();
        let (_, _, got) = BlobFiles::load(&blob).unwrap();
        assert_eq!(got.have, bits(&[1]), "truncated");

        files.save_boot_bitmap(&bits(&[3]), &meta).unwrap();
        BlobFiles::create(&blob, &meta).unwrap();
        let (_, _, got) = BlobFiles::load(&blob).unwrap();
        assert_eq!(
            (got.have, got.durable),
            (bits(&[]), bits(&[])),
            "re-created"
        );
    }
}
