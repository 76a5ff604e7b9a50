//! Resolving an image preheat: the manifest URL `scheme://REGISTRY/v2/REPO/manifests/REF` is
//! fetched (OCI and Docker v2 media types, registry auth by username/password with the bearer
//! challenge handled by the registry client), an index or manifest list is narrowed to the
//! job's platform, and every blob — config and layers — becomes a task: its ID the blob
//! digest, its origin `oci://REGISTRY/REPO@DIGEST`, so a later pull through any registry host,
//! mirror or URL finds it. The manifest (and index) become tasks too, origin
//! `oci-manifest://REGISTRY/REPO@DIGEST`, and a tag's resolution is returned for the manager
//! to remember: with both, a node can pull the image while the registry is down.

use std::sync::Arc;

use dragonfly_registry::{
    media_types, Credential, ImageDocument, Reference, RegistryClient, RegistryConfig, Repository,
};
use dragonfly_task::{OciObject, TaskId, TaskRole, TaskUrl};

use super::args::Secrets;
use super::destination::DestinationPolicy;

/// A parsed manifest URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// Tag or digest.
    pub reference: String,
}

impl ManifestUrl {
    /// `None` unless the path is `/v2/REPO/manifests/REF`.
    pub fn parse(u: &reqwest::Url) -> Option<ManifestUrl> {
        let host = u.host_str()?;
        let registry = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let path = u.path().strip_prefix("/v2/")?;
        let (repository, reference) = path.rsplit_once("/manifests/")?;
        if repository.is_empty() || reference.is_empty() || reference.contains('/') {
            return None;
        }
        Some(ManifestUrl {
            scheme: u.scheme().to_owned(),
            registry,
            repository: repository.to_owned(),
            reference: reference.to_owned(),
        })
    }
}

/// A preheated image: its tag's resolution (when the URL named a tag) and its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// What the tag named: (digest, media type) of the top manifest or index.
    pub tag: Option<(String, String)>,
    /// Index (if any), manifest, config and layers.
    pub blobs: Vec<ImageBlob>,
}

/// One blob of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBlob {
    /// Where it is (its digest is its task ID).
    pub url: TaskUrl,
    /// Bytes.
    pub size: u64,
    /// Manifest (or index), config or layer.
    pub role: TaskRole,
}

/// Why an image preheat's tasks cannot be known.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The registry settings or the credentials cannot make a client.
    #[error("registry client: {0}")]
    Client(#[source] dragonfly_registry::Error),
    /// The `Authorization` header carries no credential.
    #[error(transparent)]
    Credential(#[from] dragonfly_registry::BadAuthorization),
    /// The registry did not give the manifest.
    #[error("cannot fetch the manifest of {name}: {source}")]
    Fetch {
        /// The image.
        name: String,
        /// The registry's error.
        #[source]
        source: dragonfly_registry::Error,
    },
    /// The manifest is not a manifest.
    #[error("the manifest of {name} is not valid JSON: {source}")]
    NotJson {
        /// The image.
        name: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The index has no manifest for the job's platform.
    #[error("{name}: {source}")]
    Platform {
        /// The image.
        name: String,
        /// What the index has.
        #[source]
        source: dragonfly_registry::NoPlatform,
    },
    /// A blob's digest cannot name a task.
    #[error("{name} has a blob with unsupported digest {digest:?}: {source}")]
    Digest {
        /// The image.
        name: String,
        /// The digest.
        digest: String,
        /// Why.
        #[source]
        source: dragonfly_task::TaskError,
    },
    /// The manifest lists nothing to preheat.
    #[error("the manifest of {0} lists no config or layers")]
    Empty(String),
    /// An index points to another index.
    #[error("{0}: an index points to another index; not supported")]
    NestedIndex(String),
}

impl ImageBlob {
    fn new(
        repo: &Repository,
        digest: &str,
        size: u64,
        role: TaskRole,
        name: &str,
    ) -> Result<ImageBlob, ResolveError> {
        let object =
            OciObject::new(repo.clone(), digest).map_err(|source| ResolveError::Digest {
                name: name.to_owned(),
                digest: digest.to_owned(),
                source,
            })?;
        let url = match role {
            TaskRole::Manifest => TaskUrl::OciManifest(object),
            _ => TaskUrl::OciBlob(object),
        };
        Ok(ImageBlob { url, size, role })
    }

    /// Its task ID (its digest).
    pub fn id(&self) -> TaskId {
        self.url.oci_id().expect("image blobs are OCI objects")
    }
}

fn client(
    m: &ManifestUrl,
    secrets: &Secrets,
    destinations: Arc<DestinationPolicy>,
) -> Result<RegistryClient, ResolveError> {
    let mut config = RegistryConfig::default();
    if m.scheme == "http" {
        config.plain_http.push(m.registry.clone());
    }
    let header = secrets
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.as_str());
    let credential = if !secrets.username.is_empty() {
        Some(Credential::Basic {
            username: secrets.username.clone(),
            password: secrets.password.clone(),
        })
    } else if let Some(h) = header {
        Some(Credential::from_authorization(h)?)
    } else {
        None
    };
    if let Some(c) = credential {
        config.credentials.insert(m.registry.clone(), c);
    }
    RegistryClient::with_destinations(config, destinations).map_err(ResolveError::Client)
}

/// The manifests, config and layers of the image at `m` for `platform`, read only from
/// where `destinations` allows.
pub async fn resolve(
    m: &ManifestUrl,
    platform: &str,
    secrets: &Secrets,
    destinations: Arc<DestinationPolicy>,
) -> Result<ResolvedImage, ResolveError> {
    let client = client(m, secrets, destinations)?;
    let mut reference = Reference {
        registry: m.registry.clone(),
        repository: m.repository.clone(),
        tag: None,
        digest: None,
    };
    if m.reference.contains(':') {
        reference.digest = Some(m.reference.clone());
    } else {
        reference.tag = Some(m.reference.clone());
    }
    let name = format!("{}/{}:{}", m.registry, m.repository, m.reference);
    let repo = reference.repo();
    let mut tag = None;
    let mut manifests = Vec::new();
    // An index may point to a manifest; at most one more hop.
    for _ in 0..2 {
        let manifest = client
            .get_manifest(&reference, media_types::DEFAULT_ACCEPT)
            .await
            .map_err(|source| ResolveError::Fetch {
                name: name.clone(),
                source,
            })?;
        if reference.digest.is_none() {
            tag = Some((manifest.digest.clone(), manifest.media_type.clone()));
        }
        manifests.push(ImageBlob::new(
            &repo,
            &manifest.digest,
            manifest.bytes.len() as u64,
            TaskRole::Manifest,
            &name,
        )?);
        let doc =
            ImageDocument::parse(&manifest.bytes).map_err(|source| ResolveError::NotJson {
                name: name.clone(),
                source,
            })?;
        let is_index = manifest.media_type == media_types::OCI_INDEX
            || manifest.media_type == media_types::DOCKER_MANIFEST_LIST;
        if is_index {
            let chosen = doc
                .for_platform(platform)
                .map_err(|source| ResolveError::Platform {
                    name: name.clone(),
                    source,
                })?;
            reference.digest = Some(chosen.digest.clone());
            continue;
        }
        let config = doc.config.into_iter().map(|d| (d, TaskRole::Config));
        let layers = doc.layers.into_iter().map(|d| (d, TaskRole::Layer));
        let blobs = config
            .chain(layers)
            .map(|(d, role)| ImageBlob::new(&repo, &d.digest, d.size, role, &name))
            .collect::<Result<Vec<_>, ResolveError>>()?;
        if blobs.is_empty() {
            return Err(ResolveError::Empty(name));
        }
        let blobs: Vec<ImageBlob> = manifests.drain(..).chain(blobs).collect();
        return Ok(ResolvedImage { tag, blobs });
    }
    Err(ResolveError::NestedIndex(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry that wants `Authorization: Bearer good` on its manifests and challenges
    /// everything else to a token service that must never be asked (it fails).
    async fn bearer_registry() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let token_calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls = token_calls.clone();
        let realm = format!("http://{addr}/token");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, "digest": format!("sha256:{}", "a".repeat(64))},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 3, "digest": format!("sha256:{}", "b".repeat(64))}]
        })
        .to_string();
        let app = axum::Router::new()
            .route(
                "/token",
                axum::routing::get(move || {
                    calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async { StatusCode::INTERNAL_SERVER_ERROR }
                }),
            )
            .route(
                "/v2/app/manifests/v1",
                axum::routing::get(move |h: HeaderMap| {
                    let (manifest, realm) = (manifest.clone(), realm.clone());
                    async move {
                        let auth = h.get("authorization").and_then(|v| v.to_str().ok());
                        if auth == Some("Bearer good") {
                            (
                                [("content-type", media_types::OCI_MANIFEST)],
                                manifest,
                            )
                                .into_response()
                        } else {
                            let challenge = format!(
                                "Bearer realm=\"{realm}\",service=\"test\",scope=\"repository:app:pull\""
                            );
                            (
                                StatusCode::UNAUTHORIZED,
                                [("www-authenticate", challenge)],
                                "{}",
                            )
                                .into_response()
                        }
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, token_calls)
    }

    #[tokio::test]
    async fn a_raw_bearer_header_answers_the_registrys_challenge() {
        let (addr, token_calls) = bearer_registry().await;
        let url = reqwest::Url::parse(&format!("http://{addr}/v2/app/manifests/v1")).unwrap();
        let m = ManifestUrl::parse(&url).unwrap();
        let secrets = |auth: &str| Secrets {
            headers: [("Authorization".to_owned(), auth.to_owned())].into(),
            ..Default::default()
        };
        let loopback = || Arc::new(DestinationPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]));
        let e = resolve(
            &m,
            "linux/amd64",
            &secrets("Bearer good"),
            Arc::new(DestinationPolicy::default()),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("loopback"),
            "the registry client itself refuses a loopback registry: {e}"
        );
        let image = resolve(&m, "linux/amd64", &secrets("Bearer good"), loopback())
            .await
            .unwrap();
        assert_eq!(image.blobs.len(), 3, "manifest, config, layer");
        assert!(image.blobs[0]
            .url
            .to_string()
            .starts_with("oci-manifest://"));
        assert_eq!(
            image.tag.as_ref().map(|t| t.0.clone()),
            Some(image.blobs[0].id().to_string())
        );
        let e = resolve(&m, "linux/amd64", &secrets("Bearer bad"), loopback())
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                ResolveError::Fetch {
                    source: dragonfly_registry::Error::Unauthorized { .. },
                    ..
                }
            ),
            "a wrong token is the registry's 401: {e:?}"
        );
        let e = resolve(&m, "linux/amd64", &secrets("Digest x"), loopback())
            .await
            .unwrap_err();
        assert!(matches!(e, ResolveError::Credential(_)), "{e:?}");
        assert!(e.to_string().contains("neither"), "{e}");
        assert_eq!(
            token_calls.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the given token is used as it is"
        );
    }

    #[test]
    fn manifest_urls_parse() {
        let u = reqwest::Url::parse("http://127.0.0.1:5000/v2/library/app/manifests/v1").unwrap();
        let m = ManifestUrl::parse(&u).unwrap();
        assert_eq!(
            (
                m.registry.as_str(),
                m.repository.as_str(),
                m.reference.as_str()
            ),
            ("127.0.0.1:5000", "library/app", "v1")
        );
        for bad in [
            "http://r/v2/manifests/x",
            "http://r/v1/a/manifests/b",
            "http://r/v2/a/blobs/b",
        ] {
            assert!(
                ManifestUrl::parse(&reqwest::Url::parse(bad).unwrap()).is_none(),
                "{bad}"
            );
        }
    }
}
