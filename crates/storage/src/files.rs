//! The files of one blob on disk: `data` (sparse, the blob's bytes at their offsets),
//! `bitmap` (pieces present, see [`crate::bitmap`]) and `meta.json` (digest, size, piece
//! length, whether the whole blob was verified). Synchronous; callers run it off the async
//! workers.

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

/// Open files of one blob.
pub(crate) struct BlobFiles {
    dir: PathBuf,
    data: File,
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(StoreError::io("cannot create", &tmp))?;
    f.write_all(bytes)
        .map_err(StoreError::io("cannot write", &tmp))?;
    f.sync_data().map_err(StoreError::io("cannot sync", &tmp))?;
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
        files.save_bitmap(
            &Bitmap::empty(crate::bitmap::piece_count(meta.size, meta.piece_length)),
            meta,
        )?;
        files.save_meta(meta)?;
        Ok(files)
    }

    /// Opens an existing blob; `Err` means the directory is not a usable blob.
    pub(crate) fn load(dir: &Path) -> Result<(BlobFiles, Meta, Bitmap), String> {
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
        let bitmap = match std::fs::read(dir.join("bitmap"))
            .map_err(|e| e.to_string())
            .and_then(|b| Bitmap::decode(&b, meta.size, meta.piece_length))
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(blob = %meta.digest, error = %e, "piece bitmap unusable; its pieces will be fetched again");
                Bitmap::empty(crate::bitmap::piece_count(meta.size, meta.piece_length))
            }
        };
        Ok((files, meta, bitmap))
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `bytes` at `offset` and makes them durable.
    pub(crate) fn write_durable(&self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join("data");
        self.data
            .write_all_at(bytes, offset)
            .map_err(StoreError::io("cannot write blob data (disk full?)", &path))?;
        self.data
            .sync_data()
            .map_err(StoreError::io("cannot sync blob data", &path))
    }

    /// Reads `len` bytes at `offset`.
    pub(crate) fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let mut buf = vec![0; len];
        self.data
            .read_exact_at(&mut buf, offset)
            .map_err(StoreError::io(
                "cannot read blob data",
                self.dir.join("data"),
            ))?;
        Ok(buf)
    }

    pub(crate) fn save_bitmap(&self, bitmap: &Bitmap, meta: &Meta) -> Result<(), StoreError> {
        write_atomically(
            &self.dir.join("bitmap"),
            &bitmap.encode(meta.size, meta.piece_length),
        )
    }

    pub(crate) fn save_meta(&self, meta: &Meta) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(meta).expect("meta serializes");
        write_atomically(&self.dir.join("meta.json"), &json)
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
