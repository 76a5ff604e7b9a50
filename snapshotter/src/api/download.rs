//! The daemon's local download service (`dfctl get`): an ordinary file by URL, through the
//! swarm. Its task ID is sha256 over the URL with signed-URL query parameters removed, plus
//! tag and application, so the same file fetched with other signatures is one task. Pieces go
//! to the piece store (and to other peers) like blob pieces; the file is then copied out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dragonfly_proto::dfdaemon as pb;
use dragonfly_proto::dfdaemon::download_server::Download;
use dragonfly_storage::Priority;
use dragonfly_task::origin::Access;
use dragonfly_task::{TaskId, TaskUrl};
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use dragonfly_task::{TaskOpener, TaskSpec};

use crate::p2p::{open_status, Swarm};

/// The service.
pub struct DownloadService {
    swarm: Arc<Swarm>,
}

impl DownloadService {
    /// Downloads through `swarm`.
    pub fn new(swarm: Arc<Swarm>) -> DownloadService {
        DownloadService { swarm }
    }
}

/// `url` as a file's origin: only http and https can be downloaded.
fn file_url(url: &str) -> Result<TaskUrl, Status> {
    match url.parse::<TaskUrl>() {
        Ok(u @ TaskUrl::Http(_)) => Ok(u),
        Ok(_) => Err(Status::invalid_argument(format!(
            "only http and https URLs can be downloaded, not {url:?}"
        ))),
        Err(e) => Err(Status::invalid_argument(e.to_string())),
    }
}

/// Why the output file could not be written.
#[derive(Debug, thiserror::Error)]
enum PartFileError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the file hashes to {actual}, not {expected}")]
    Digest { actual: String, expected: String },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PartFileError {
    let path = path.display().to_string();
    move |source| PartFileError::Io { what, path, source }
}

/// The output file being written front to back while the rest of the download arrives: a
/// `.dfctl-part` file beside the destination, hashed as it grows, renamed into place only when
/// complete (and matching the expected digest, if one was given). Removed if abandoned.
struct PartFile {
    tmp: PathBuf,
    file: std::fs::File,
    written: u64,
    hasher: Sha256,
    done: bool,
}

impl PartFile {
    /// A new part file beside `output`. Whatever is at the part path (a stale part, or a
    /// symlink someone planted there) is removed, never followed, and the file is created
    /// exclusively (`O_CREAT|O_EXCL`, which refuses a symlink too).
    fn create(output: &Path) -> Result<PartFile, PartFileError> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = output.with_extension("dfctl-part");
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove the stale part file", &tmp)(e)),
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        Ok(PartFile {
            tmp,
            file,
            written: 0,
            hasher: Sha256::new(),
            done: false,
        })
    }

    /// Appends `data` and starts its write-back, so finishing does not wait for the whole file
    /// to reach the disk.
    fn append(&mut self, data: &[u8]) -> Result<(), PartFileError> {
        std::io::Write::write_all(&mut self.file, data).map_err(io_error("write", &self.tmp))?;
        self.hasher.update(data);
        // SAFETY: a plain syscall on a file descriptor we own; it only starts write-back.
        unsafe {
            libc::sync_file_range(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                self.written as libc::off64_t,
                data.len() as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Checks `digest` (if not empty), makes the file durable and moves it to `output`.
    fn finish(mut self, output: &Path, digest: &str) -> Result<(), PartFileError> {
        let actual = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if !digest.is_empty() && actual != digest {
            return Err(PartFileError::Digest {
                actual,
                expected: digest.to_owned(),
            });
        }
        self.file
            .sync_data()
            .map_err(io_error("write", &self.tmp))?;
        std::fs::rename(&self.tmp, output).map_err(io_error("move the file to", output))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Downloads `blob` into `output`, writing it front to back (on a blocking thread, from the
/// blob's in-order reader) as its pieces arrive, and calls `progress` every 200 ms.
async fn download_to(
    blob: &dragonfly_storage::Blob,
    output: PathBuf,
    digest: String,
    mut progress: impl FnMut(),
) -> Result<(), Status> {
    let mut reader = blob.read_in_order(Priority::Bulk);
    let out = output.clone();
    let copy = tokio::task::spawn_blocking(move || -> Result<PartFile, Status> {
        let mut part =
            PartFile::create(&out).map_err(|e| Status::failed_precondition(e.to_string()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf)
                .map_err(|e| Status::unavailable(format!("download failed: {e}")))?;
            if n == 0 {
                return Ok(part);
            }
            part.append(&buf[..n])
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
        }
    });
    tokio::pin!(copy);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let part = loop {
        tokio::select! {
            r = &mut copy => break r.map_err(|e| Status::internal(format!("download task failed: {e}")))??,
            _ = tick.tick() => progress(),
        }
    };
    // Verifies the whole blob's digest where it is content-addressed (nothing is fetched).
    blob.fetch_all(Priority::Bulk)
        .await
        .map_err(|e| Status::unavailable(format!("download failed: {e}")))?;
    tokio::task::spawn_blocking(move || part.finish(&output, &digest))
        .await
        .map_err(|e| Status::internal(format!("download task failed: {e}")))?
        .map_err(|e| Status::failed_precondition(e.to_string()))
}

#[tonic::async_trait]
impl Download for DownloadService {
    type DownloadStream = ReceiverStream<Result<pb::DownloadProgress, Status>>;

    async fn download(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let r = req.into_inner();
        let output = Path::new(&r.output_path).to_owned();
        if !output.is_absolute() {
            return Err(Status::invalid_argument("output_path must be absolute"));
        }
        let id = TaskId::file(&r.url, &r.tag, &r.application, &r.filtered_query_params)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let hex = id.hex().to_owned();
        // The full URL (signature included) is the origin, and this request's URL and headers
        // replace an earlier one's (a fresh signature); the task ID is the filtered one's.
        let spec = TaskSpec {
            id,
            url: file_url(&r.url)?,
            size: None,
            piece_length: None,
            lazy: false,
            access: Access {
                headers: r.headers.clone().into_iter().collect(),
            },
            refresh: true,
        };
        let blob = self.swarm.open(spec).await.map_err(|e| open_status(&e))?;
        let size = blob.size();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let digest = r.digest.clone();
        tokio::spawn(async move {
            let _pin = blob.pin();
            let progress = |done: bool| pb::DownloadProgress {
                task_id: hex.clone(),
                content_length: size,
                completed_bytes: blob.fetched_bytes(),
                done,
            };
            let sender = tx.clone();
            let res = download_to(&blob, output, digest, || {
                let _ = sender.try_send(Ok(progress(false)));
            })
            .await;
            let _ = match res {
                Ok(()) => tx.send(Ok(progress(true))).await,
                Err(e) => tx.send(Err(e)).await,
            };
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink planted at the part path is replaced, not written through; the finished file
    /// is renamed over whatever is at the output path (a symlink there is replaced too).
    #[test]
    fn the_part_and_output_paths_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let output = dir.path().join("out.bin");
        std::os::unix::fs::symlink(&victim, output.with_extension("dfctl-part")).unwrap();
        std::os::unix::fs::symlink(&victim, &output).unwrap();
        let mut part = PartFile::create(&output).unwrap();
        part.append(b"new bytes").unwrap();
        part.finish(&output, "").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&output)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&output).unwrap(), b"new bytes");
    }

    #[test]
    fn only_http_origins_are_accepted() {
        for good in ["http://h/f", "https://h:8443/f?sig=1"] {
            assert!(file_url(good).is_ok(), "{good}");
        }
        let oci = format!("oci://r/repo@sha256:{}", "a".repeat(64));
        for bad in [
            "ftp://x/y",
            "file:///etc/passwd",
            oci.as_str(),
            "not a url",
            "",
        ] {
            let e = file_url(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e}");
        }
    }
}
