//! Layers without labels. containerd's default CRI config (`disable_snapshot_annotations =
//! true`), `ctr image pull` and nerdctl (for a snapshotter named `dragonfly`) send a Prepare
//! with only the chain ID the layer commits as. The image being pulled is in containerd's
//! content store by then: its manifest and config are fetched before any layer is unpacked,
//! labelled with the registry and repository they came from. This module asks containerd for
//! the recent image manifests of the request's namespace, computes the chain IDs of each one's
//! config, and for the manifest that has the chain ID names the layer as a labelled pull would
//! (image reference by digest, layer digest and size, TOC digest). Answers are cached per
//! manifest; a lookup is bounded in time, so a Prepare never waits long on containerd.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use containerd_client::services::v1 as cd;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::labels::{BLOB_SIZE, CRI_IMAGE_REF, CRI_LAYER_DIGEST, TOC_DIGEST};

/// The label naming a manifest's config (what tells image manifests apart in the store).
const CONFIG_LABEL: &str = "containerd.io/gc.ref.content.config";
/// Prefix of the labels naming where a blob came from: `<prefix><host>` = `<repo>[,<repo>]`.
const SOURCE_LABEL: &str = "containerd.io/distribution.source.";
/// Manifests looked at per lookup, newest first.
const MAX_MANIFESTS: usize = 32;
/// Largest manifest or config read.
const MAX_DOCUMENT: usize = 4 << 20;
/// Chain IDs remembered.
const CACHE: usize = 8192;

/// Why a lookup found nothing usable (logged; the Prepare then falls back).
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// containerd could not be reached or answered with an error.
    #[error("cannot ask containerd at {address} ({what}): {reason}")]
    Containerd {
        /// Its socket.
        address: String,
        /// What was asked.
        what: String,
        /// Its answer.
        reason: String,
    },
    /// A stored document is not what its digest or media type says.
    #[error("content {digest} in containerd's store is unusable: {reason}")]
    Content {
        /// The blob.
        digest: String,
        /// Why.
        reason: String,
    },
    /// It took too long.
    #[error("containerd did not answer within {0:?}")]
    Timeout(Duration),
}

/// See the module doc.
pub struct Discovery {
    address: PathBuf,
    timeout: Duration,
    /// `host:port` registries the daemon's config names: containerd's source label has the
    /// host without its port, so a registry on another port is found here.
    known_hosts: Vec<String>,
    channel: tokio::sync::OnceCell<Channel>,
    /// (namespace, chain ID) -> the labels a labelled Prepare would carry.
    cache: Mutex<lru::LruCache<(String, String), BTreeMap<String, String>>>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<LayerDescriptor>,
}

#[derive(Deserialize)]
struct LayerDescriptor {
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The chain IDs of layers with `diff_ids`, bottom up (`chain[i] = sha256(chain[i-1] + " " +
/// diff[i])`, the first being the first diff ID).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}")))
            ),
        };
        out.push(next);
    }
    out
}

fn with_ns<T>(msg: T, ns: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = ns.parse() {
        r.metadata_mut().insert("containerd-namespace", v);
    }
    r
}

impl Discovery {
    /// Asks containerd at `address`, each lookup bounded by `timeout`; `known_hosts` are the
    /// `host[:port]` registries the daemon is configured for.
    pub fn new(address: PathBuf, timeout: Duration, known_hosts: Vec<String>) -> Discovery {
        Discovery {
            address,
            timeout,
            known_hosts,
            channel: tokio::sync::OnceCell::new(),
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(CACHE).expect("non-zero"),
            )),
        }
    }

    /// The labels for the layer that commits as `chain` in namespace `ns`, if an image being
    /// pulled there has it.
    pub async fn labels_for(
        &self,
        ns: &str,
        chain: &str,
    ) -> Result<Option<BTreeMap<String, String>>, DiscoverError> {
        let key = (ns.to_owned(), chain.to_owned());
        if let Some(hit) = self.cache.lock().expect("cache lock").get(&key) {
            return Ok(Some(hit.clone()));
        }
        tokio::time::timeout(self.timeout, self.look_up(ns, chain))
            .await
            .map_err(|_| DiscoverError::Timeout(self.timeout))?
    }

    fn err(&self, what: &str, reason: impl std::fmt::Display) -> DiscoverError {
        DiscoverError::Containerd {
            address: self.address.display().to_string(),
            what: what.to_owned(),
            reason: reason.to_string(),
        }
    }

    async fn channel(&self) -> Result<Channel, DiscoverError> {
        self.channel
            .get_or_try_init(|| async {
                containerd_client::connect(&self.address)
                    .await
                    .map_err(|e| self.err("connect", e))
            })
            .await
            .cloned()
    }

    async fn look_up(
        &self,
        ns: &str,
        chain: &str,
    ) -> Result<Option<BTreeMap<String, String>>, DiscoverError> {
        let mut manifests = self.manifests(ns).await?;
        manifests.sort_by_key(|i| {
            std::cmp::Reverse(i.updated_at.as_ref().map(|t| (t.seconds, t.nanos)))
        });
        for info in manifests.into_iter().take(MAX_MANIFESTS) {
            let Some(config) = info.labels.get(CONFIG_LABEL) else {
                continue;
            };
            let config: Config = self.document(ns, config).await?;
            let chains = chain_ids(&config.rootfs.diff_ids);
            if !chains.iter().any(|c| c == chain) {
                continue;
            }
            let Some(image) = source(&info, &self.known_hosts) else {
                tracing::debug!(manifest = %info.digest, "the manifest has the layer but no distribution source label");
                continue;
            };
            let manifest: Manifest = self.document(ns, &info.digest).await?;
            let labels = self.remember(ns, &image, &chains, &manifest);
            return Ok(labels.get(chain).cloned());
        }
        Ok(None)
    }

    /// Caches the labels of every layer of `manifest` (chain IDs `chains`); returns them.
    fn remember(
        &self,
        ns: &str,
        image: &str,
        chains: &[String],
        manifest: &Manifest,
    ) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut all = BTreeMap::new();
        for (chain, layer) in chains.iter().zip(&manifest.layers) {
            let mut l = BTreeMap::from([
                (CRI_IMAGE_REF.to_owned(), image.to_owned()),
                (CRI_LAYER_DIGEST.to_owned(), layer.digest.clone()),
                (BLOB_SIZE.to_owned(), layer.size.to_string()),
            ]);
            if let Some(toc) = layer.annotations.get(TOC_DIGEST) {
                l.insert(TOC_DIGEST.to_owned(), toc.clone());
            }
            all.insert(chain.clone(), l);
        }
        let mut cache = self.cache.lock().expect("cache lock");
        for (chain, l) in &all {
            cache.put((ns.to_owned(), chain.clone()), l.clone());
        }
        all
    }

    /// Image manifests in `ns`'s content store (those naming a config).
    async fn manifests(&self, ns: &str) -> Result<Vec<cd::Info>, DiscoverError> {
        let mut content = cd::content_client::ContentClient::new(self.channel().await?);
        let req = cd::ListContentRequest {
            filters: vec![format!("labels.\"{CONFIG_LABEL}\"")],
        };
        let mut stream = content
            .list(with_ns(req, ns))
            .await
            .map_err(|s| self.err("list content", s.message()))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(part) = stream
            .message()
            .await
            .map_err(|s| self.err("list content", s.message()))?
        {
            out.extend(part.info);
        }
        Ok(out)
    }

    /// Blob `digest` of `ns`'s store, checked against its digest, parsed as JSON.
    async fn document<T: serde::de::DeserializeOwned>(
        &self,
        ns: &str,
        digest: &str,
    ) -> Result<T, DiscoverError> {
        let bad = |reason: String| DiscoverError::Content {
            digest: digest.to_owned(),
            reason,
        };
        let mut content = cd::content_client::ContentClient::new(self.channel().await?);
        let req = cd::ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        };
        let mut stream = content
            .read(with_ns(req, ns))
            .await
            .map_err(|s| self.err(&format!("read {digest}"), s.message()))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(part) = stream
            .message()
            .await
            .map_err(|s| self.err(&format!("read {digest}"), s.message()))?
        {
            data.extend_from_slice(&part.data);
            if data.len() > MAX_DOCUMENT {
                return Err(bad(format!("larger than {MAX_DOCUMENT} bytes")));
            }
        }
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        if got != digest {
            return Err(bad(format!("its bytes hash to {got}")));
        }
        serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))
    }
}

/// `host/repo@digest` of a manifest, from its distribution source label. containerd writes
/// the label with the host's name only (no port); a registry on another port is the one of
/// `known_hosts` with that name, when exactly one is.
fn source(info: &cd::Info, known_hosts: &[String]) -> Option<String> {
    info.labels.iter().find_map(|(k, v)| {
        let host = k.strip_prefix(SOURCE_LABEL)?;
        let repo = v.split(',').next().filter(|r| !r.is_empty())?;
        let host = with_port(host, known_hosts);
        Some(format!("{host}/{repo}@{}", info.digest))
    })
}

fn with_port(host: &str, known_hosts: &[String]) -> String {
    let mut same = known_hosts.iter().filter(|k| {
        k.rsplit_once(':')
            .is_some_and(|(name, port)| name == host && port.bytes().all(|b| b.is_ascii_digit()))
    });
    match (same.next(), same.next()) {
        (Some(one), None) => one.clone(),
        _ => host.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}"))));
        assert_eq!(chains[1], want);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn the_source_label_names_the_image_by_digest() {
        let info = cd::Info {
            digest: "sha256:abc".into(),
            labels: [
                (
                    "containerd.io/distribution.source.127.0.0.1".to_owned(),
                    "lib/app,other".to_owned(),
                ),
                (CONFIG_LABEL.to_owned(), "sha256:def".to_owned()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        assert_eq!(
            source(&info, &[]).as_deref(),
            Some("127.0.0.1/lib/app@sha256:abc")
        );
        let known = ["127.0.0.1:5000".to_owned(), "other:1".to_owned()];
        assert_eq!(
            source(&info, &known).as_deref(),
            Some("127.0.0.1:5000/lib/app@sha256:abc")
        );
        let two = ["127.0.0.1:5000".to_owned(), "127.0.0.1:5001".to_owned()];
        assert_eq!(
            source(&info, &two).as_deref(),
            Some("127.0.0.1/lib/app@sha256:abc"),
            "ambiguous: the name alone"
        );
    }
}
