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
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use dragonfly_task::{TaskOpener, TaskSpec};

use super::caller::Caller;
use super::part_file::{PartFile, PartFileError};
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

/// Downloads `blob` into `output` as `caller`, writing it front to back (on a blocking thread,
/// from the blob's in-order reader) as its pieces arrive, and calls `progress` every 200 ms.
async fn download_to(
    blob: &dragonfly_storage::Blob,
    output: PathBuf,
    caller: Caller,
    digest: String,
    mut progress: impl FnMut(),
) -> Result<(), Status> {
    let mut reader = blob.read_in_order(Priority::Bulk);
    let copy = tokio::task::spawn_blocking(move || -> Result<PartFile, Status> {
        let mut part = PartFile::create(&output, caller).map_err(part_file_status)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf)
                .map_err(|e| Status::unavailable(format!("download failed: {e}")))?;
            if n == 0 {
                return Ok(part);
            }
            part.append(&buf[..n]).map_err(part_file_status)?;
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
    tokio::task::spawn_blocking(move || part.finish(&digest))
        .await
        .map_err(|e| Status::internal(format!("download task failed: {e}")))?
        .map_err(part_file_status)
}

/// A file the caller may not write is theirs to fix (`PERMISSION_DENIED`); anything else
/// about the output is a failed precondition.
fn part_file_status(e: PartFileError) -> Status {
    match &e {
        PartFileError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Status::permission_denied(e.to_string())
        }
        _ => Status::failed_precondition(e.to_string()),
    }
}

#[tonic::async_trait]
impl Download for DownloadService {
    type DownloadStream = ReceiverStream<Result<pb::DownloadProgress, Status>>;

    async fn download(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let caller = Caller::of(&req)?;
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
            digest: (!r.digest.is_empty()).then(|| r.digest.clone()),
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
            let res = download_to(&blob, output, caller, digest, || {
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
