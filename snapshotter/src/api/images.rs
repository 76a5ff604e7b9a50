//! The daemon's local image API (`dfctl image pull`): an image's index, manifest and config,
//! fetched through the swarm like any blob (task ID = digest, parents first, the registry
//! last), so a node can pull an image that was preheated while its registry is down.
//!
//! A tag is resolved at the registry when it answers (the fresh answer). When the registry
//! cannot be reached (connection failure, 5xx), the daemon asks the manager what the tag named
//! at its last successful preheat. A digest reference needs neither.

use std::sync::Arc;

use dragonfly_membership::client::Dialer;
use dragonfly_membership::Role;
use dragonfly_proto::dfdaemon as pb;
use dragonfly_proto::dfdaemon::image_server::Image;
use dragonfly_proto::manager::manager_client::ManagerClient;
use dragonfly_proto::manager::ResolveImageTagRequest;
use dragonfly_registry::{default_platform, media_types, ImageDocument, Reference};
use dragonfly_runtime::grpc::{connect_member, CallError, Timeouts};
use dragonfly_storage::Priority;
use dragonfly_task::OciObject;
use tonic::{Request, Response, Status};

use dragonfly_task::{TaskOpener, TaskSpec};

use crate::p2p::Swarm;

/// Longest a manifest or config may be (the distribution spec's manifest limit).
const MAX_OBJECT_BYTES: u64 = 4 << 20;

/// Why the manager cannot say what a tag named.
#[derive(Debug, thiserror::Error)]
enum TagError {
    #[error("no manager is configured (p2p.manager) to ask what it named at its last preheat; pull by digest")]
    NoManager,
    #[error("it was never preheated")]
    NeverPreheated,
    #[error(transparent)]
    Call(#[from] CallError),
}

/// The service.
pub struct ImageService {
    swarm: Arc<Swarm>,
    /// The manager's gRPC address; empty = none.
    manager: String,
}

/// Whether an object is a manifest (or index) or a blob (config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manifest,
    Blob,
}

/// The name containerd gives the image: `REPO@DIGEST` for a digest-only reference, else
/// `REPO:TAG` (`latest` when none is given; a pinned digest beside a tag is dropped).
fn image_name(r: &Reference) -> String {
    let mut name = r.clone();
    if r.tag.is_some() || r.digest.is_none() {
        name.digest = None;
        name.tag.get_or_insert_with(|| "latest".into());
    }
    name.to_string()
}

fn parse_document(what: &str, data: &[u8]) -> Result<ImageDocument, Status> {
    ImageDocument::parse(data)
        .map_err(|e| Status::data_loss(format!("{what} is not a valid manifest: {e}")))
}

impl ImageService {
    /// Objects come through `swarm`; `manager` (may be empty) answers for tags when the
    /// registry is down.
    pub fn new(swarm: Arc<Swarm>, manager: String) -> ImageService {
        ImageService { swarm, manager }
    }

    /// One object, whole, through the swarm (verified against its digest by the store).
    async fn fetch(
        &self,
        image: &Reference,
        kind: Kind,
        digest: &str,
        size: Option<u64>,
    ) -> Result<Vec<u8>, Status> {
        let object = OciObject::new(image.repo(), digest)
            .map_err(|e| Status::data_loss(format!("{image}: {e}")))?;
        let spec = match kind {
            Kind::Manifest => TaskSpec::manifest(object, size),
            Kind::Blob => TaskSpec::blob(object, size),
        };
        let blob = self
            .swarm
            .open(spec)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if blob.size() > MAX_OBJECT_BYTES {
            return Err(Status::failed_precondition(format!(
                "{digest} is {} bytes; manifests and configs are at most {MAX_OBJECT_BYTES}",
                blob.size()
            )));
        }
        let _pin = blob.pin();
        blob.fetch_all(Priority::OnDemand)
            .await
            .map_err(|e| Status::unavailable(format!("cannot fetch {digest}: {e}")))?;
        let data = blob
            .read(0..blob.size(), Priority::OnDemand)
            .await
            .map_err(|e| Status::unavailable(format!("cannot read {digest}: {e}")))?;
        Ok(data.to_vec())
    }

    /// What the tag named at its last successful preheat, from the manager.
    async fn preheated_tag(&self, r: &Reference, tag: &str) -> Result<String, TagError> {
        if self.manager.is_empty() {
            return Err(TagError::NoManager);
        }
        let dialer = self
            .swarm
            .p2p()
            .map(|p| p.pool.dialer().clone())
            .unwrap_or_else(Dialer::plain);
        let channel = connect_member(
            "the manager",
            &self.manager,
            Timeouts::CONTROL,
            &dialer,
            &[Role::Manager],
        )
        .await?;
        let answer = ManagerClient::new(channel)
            .resolve_image_tag(ResolveImageTagRequest {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                tag: tag.to_owned(),
            })
            .await
            .map_err(|e| match e.code() {
                tonic::Code::NotFound => TagError::NeverPreheated,
                _ => TagError::Call(CallError::Status {
                    who: "the manager".into(),
                    source: e,
                }),
            })?
            .into_inner();
        tracing::info!(image = %r, digest = %answer.digest, preheated_at = %answer.preheated_at, "tag resolved from its last preheat (the registry is unreachable)");
        Ok(answer.digest)
    }

    /// The top object the reference names: its bytes if the registry gave them, its digest,
    /// and how it was found.
    async fn top(&self, r: &Reference) -> Result<(Option<Vec<u8>>, String, &'static str), Status> {
        if let Some(d) = &r.digest {
            return Ok((None, d.clone(), "digest"));
        }
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        match self.swarm.origins().fetch_manifest(r).await {
            Ok(m) => Ok((Some(m.bytes.to_vec()), m.digest, "registry")),
            Err(e) if e.is_retryable() => {
                let digest = self.preheated_tag(r, &tag).await.map_err(|why| {
                    Status::unavailable(format!(
                        "cannot resolve {r}: the registry cannot be reached ({e}), and the manager cannot say what the tag named: {why}"
                    ))
                })?;
                Ok((None, digest, "preheat"))
            }
            Err(e) if e.is_not_found() => {
                Err(Status::not_found(format!("cannot resolve {r}: {e}")))
            }
            // Refused credentials and the like: the registry answered, and said no.
            Err(e) => Err(Status::failed_precondition(format!(
                "cannot resolve {r}: {e}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl Image for ImageService {
    async fn resolve_image(
        &self,
        req: Request<pb::ResolveImageRequest>,
    ) -> Result<Response<pb::ResolveImageResponse>, Status> {
        let req = req.into_inner();
        let r: Reference = req.reference.parse().map_err(|e| {
            Status::invalid_argument(format!("bad image reference {:?}: {e}", req.reference))
        })?;
        let platform = if req.platform.is_empty() {
            default_platform()
        } else {
            req.platform.clone()
        };
        let (bytes, digest, resolved_by) = self.top(&r).await?;
        let data = match bytes {
            Some(b) => b,
            None => self.fetch(&r, Kind::Manifest, &digest, None).await?,
        };
        let doc = parse_document(&format!("{r} ({digest})"), &data)?;
        let mut top = pb::OciObject {
            media_type: doc.media_type.clone(),
            digest: digest.clone(),
            data,
        };
        let (index, manifest, doc) = if doc.is_index() {
            if top.media_type.is_empty() {
                top.media_type = media_types::OCI_INDEX.into();
            }
            let chosen = doc
                .for_platform(&platform)
                .map_err(|e| Status::not_found(format!("{r}: {e}")))?;
            let data = self
                .fetch(&r, Kind::Manifest, &chosen.digest, Some(chosen.size))
                .await?;
            let inner = parse_document(&format!("{r} ({})", chosen.digest), &data)?;
            let media_type = if chosen.media_type.is_empty() {
                media_types::OCI_MANIFEST.to_owned()
            } else {
                chosen.media_type.clone()
            };
            let manifest = pb::OciObject {
                media_type,
                digest: chosen.digest.clone(),
                data,
            };
            (Some(top), manifest, inner)
        } else {
            if top.media_type.is_empty() {
                top.media_type = media_types::OCI_MANIFEST.into();
            }
            (None, top, doc)
        };
        let config = doc
            .config
            .ok_or_else(|| Status::data_loss(format!("the manifest of {r} has no config")))?;
        let data = self
            .fetch(&r, Kind::Blob, &config.digest, Some(config.size))
            .await?;
        tracing::info!(image = %r, manifest = %manifest.digest, resolved_by, "image resolved");
        Ok(Response::new(pb::ResolveImageResponse {
            name: image_name(&r),
            index,
            manifest: Some(manifest),
            config: Some(pb::OciObject {
                media_type: config.media_type,
                digest: config.digest,
                data,
            }),
            resolved_by: resolved_by.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_containerds() {
        let name = |s: &str| image_name(&s.parse().unwrap());
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(name("r:5000/app"), "r:5000/app:latest");
        assert_eq!(name("r:5000/app:v1"), "r:5000/app:v1");
        assert_eq!(name(&format!("r:5000/app@{d}")), format!("r:5000/app@{d}"));
        assert_eq!(name(&format!("r:5000/app:v1@{d}")), "r:5000/app:v1");
        assert_eq!(name("busybox"), "docker.io/library/busybox:latest");
    }

    #[test]
    fn bad_documents_are_refused_with_what_they_are() {
        let e = parse_document("x (sha256:1)", b"{not json").err().unwrap();
        assert!(e.message().contains("x (sha256:1)"), "{e}");
    }
}
