//! Manifest fetching: content negotiation, media type detection and digest verification.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde::Deserialize;

use crate::digest::{sha256_of, Digest};
use crate::error::Error;
use crate::reference::Reference;
use crate::transport::{Inner, RequestSpec};

/// Media types of manifests and indexes.
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker signed schema 1 manifest (legacy; its digest header covers the unsigned form).
    pub const DOCKER_MANIFEST_V1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// What is accepted when the caller gives no list: the four current types.
    pub const DEFAULT_ACCEPT: &[&str] = &[
        OCI_INDEX,
        OCI_MANIFEST,
        DOCKER_MANIFEST_LIST,
        DOCKER_MANIFEST,
    ];
}

/// The spec's limit on manifest size.
const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// A fetched manifest, verified against its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest exactly as served (its digest covers these bytes).
    pub bytes: Bytes,
    /// Media type from `Content-Type`, else from the document's `mediaType`, else guessed
    /// from its shape.
    pub media_type: String,
    /// Digest of `bytes` (the algorithm of the reference's digest, else sha256).
    pub digest: String,
}

#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
}

/// The media type of a manifest body whose `Content-Type` is missing or generic.
fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    let shape: Shape = serde_json::from_slice(bytes).ok()?;
    if let Some(mt) = shape.media_type.filter(|m| !m.is_empty()) {
        return Some(mt);
    }
    if shape.manifests.is_some() {
        Some(media_types::OCI_INDEX.to_string())
    } else if shape.layers.is_some() {
        Some(media_types::OCI_MANIFEST.to_string())
    } else {
        None
    }
}

impl Inner {
    /// Fetches the manifest `r` points to.
    pub(crate) async fn get_manifest(
        &self,
        r: &Reference,
        accept: &[&str],
    ) -> Result<Manifest, Error> {
        r.check()?;
        let accept = if accept.is_empty() {
            media_types::DEFAULT_ACCEPT
        } else {
            accept
        };
        let accept_value = HeaderValue::from_str(&accept.join(", ")).map_err(|_| {
            Error::Config(format!(
                "the accepted media types {accept:?} are not a valid header value; pass plain \
                 media type names"
            ))
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT, accept_value);
        let expected = r.digest.as_deref().map(Digest::parse).transpose()?;
        let repo = r.repo();
        let what = format!("manifest {r}");
        let spec = RequestSpec {
            method: Method::GET,
            repo: &repo,
            path: format!("/v2/{}/manifests/{}", r.repository, r.manifest_reference()),
            headers,
            what: what.clone(),
            total_timeout: true,
            pass_statuses: &[],
        };
        let (what, expected) = (&what, &expected);
        self.run(&spec, |a| async move {
            let content_type = a
                .resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or_default().trim().to_string())
                .filter(|v| !v.is_empty() && v != "application/octet-stream" && v != "text/plain");
            let header_digest = a
                .resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let host = a.host.clone();
            let bytes = crate::body::read_limited(a.resp, MAX_MANIFEST_SIZE, &a.log_url).await?;
            let mismatch = |expected: String, actual: String| Error::DigestMismatch {
                registry: host.clone(),
                what: what.clone(),
                expected,
                actual,
            };
            let digest = match expected {
                Some(expected) => {
                    expected
                        .matches(&bytes)
                        .map_err(|actual| mismatch(expected.to_string(), actual))?;
                    expected.to_string()
                }
                None => sha256_of(&bytes),
            };
            let media_type = content_type
                .or_else(|| sniff_media_type(&bytes))
                .ok_or_else(|| Error::BadResponse {
                    registry: host.clone(),
                    what: what.clone(),
                    reason: "no Content-Type and the body is not a recognisable manifest".into(),
                })?;
            // The server's digest header must agree (signed schema 1 excepted: its header
            // covers the payload without signatures).
            if let Some(header) = header_digest {
                if media_type != media_types::DOCKER_MANIFEST_V1_SIGNED {
                    if let Ok(claimed) = Digest::parse(&header) {
                        claimed
                            .matches(&bytes)
                            .map_err(|actual| mismatch(claimed.to_string(), actual))?;
                    }
                }
            }
            Ok(Manifest {
                bytes,
                media_type,
                digest,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_sniffing() {
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"mediaType":"x/y"}"#).as_deref(),
            Some("x/y")
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(media_types::OCI_INDEX)
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).as_deref(),
            Some(media_types::OCI_MANIFEST)
        );
        assert_eq!(sniff_media_type(b"not json"), None);
        assert_eq!(sniff_media_type(br#"{"a":1}"#), None);
    }
}
