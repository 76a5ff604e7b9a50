//! What consumers read out of image documents: the descriptors of an index (with platforms) or
//! of a manifest (config, layers with annotations), a config's diff IDs, and platform matching.
//! Lenient on purpose: Docker v2 and OCI documents both parse, unknown fields are ignored.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use crate::manifest::media_types;

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type (may be empty in old documents).
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `algorithm:hex`.
    pub digest: String,
    /// Bytes.
    #[serde(default)]
    pub size: u64,
    /// The platform of an index entry.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations (e.g. `containerd.io/snapshot/stargz/toc.digest` on layers).
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

/// An index entry's platform.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `v7`.
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Whether `want` (`os/arch[/variant]`) names this platform; without a variant, any
    /// variant matches.
    pub fn matches(&self, want: &str) -> bool {
        let mut parts = want.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        Some(self.os.as_str()) == os
            && Some(self.architecture.as_str()) == arch
            && (variant.is_none() || self.variant.as_deref() == variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An index (manifest list) or an image manifest.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ImageDocument {
    /// Its `mediaType` field (may be empty).
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Index entries.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// A manifest's config.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// A manifest's layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An index with no manifest for the platform asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no manifest for platform {platform} (it has {have:?})")]
pub struct NoPlatform {
    /// What was asked for.
    pub platform: String,
    /// What the index has.
    pub have: Vec<String>,
}

impl ImageDocument {
    /// Parses a document's bytes.
    pub fn parse(bytes: &[u8]) -> Result<ImageDocument, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Whether it is an index or manifest list (by media type, else by shape).
    pub fn is_index(&self) -> bool {
        self.media_type == media_types::OCI_INDEX
            || self.media_type == media_types::DOCKER_MANIFEST_LIST
            || (self.media_type.is_empty() && !self.manifests.is_empty())
    }

    /// The index entry for `platform` (`os/arch[/variant]`), or an error listing what the
    /// index has.
    pub fn for_platform(&self, platform: &str) -> Result<&Descriptor, NoPlatform> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.matches(platform)))
            .ok_or_else(|| NoPlatform {
                platform: platform.to_owned(),
                have: self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(Platform::to_string))
                    .collect(),
            })
    }
}

/// The part of an image config that unpacking needs.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RootFs {
    /// One per layer, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// `os/arch` of the running machine, as OCI names it.
pub fn default_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_match_with_and_without_variant() {
        let p = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v7".into()),
        };
        assert!(p.matches("linux/arm"));
        assert!(p.matches("linux/arm/v7"));
        assert!(!p.matches("linux/arm/v6"));
        assert!(!p.matches("linux/amd64"));
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert!(default_platform().starts_with("linux/"));
    }

    #[test]
    fn indexes_and_manifests_parse_and_platforms_are_chosen() {
        let index = ImageDocument::parse(
            br#"{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
                {"digest":"sha256:1","size":5,"platform":{"os":"linux","architecture":"amd64"}},
                {"digest":"sha256:2","size":6,"platform":{"os":"linux","architecture":"arm64"}}]}"#,
        )
        .unwrap();
        assert!(index.is_index());
        assert_eq!(
            index.for_platform("linux/arm64").unwrap().digest,
            "sha256:2"
        );
        let e = index.for_platform("windows/amd64").unwrap_err();
        assert!(
            e.have == ["linux/amd64", "linux/arm64"] && e.to_string().contains("windows/amd64"),
            "{e}"
        );
        let m = ImageDocument::parse(
            br#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":2},
                "layers":[{"digest":"sha256:l","size":3,"annotations":{"a":"b"}}]}"#,
        )
        .unwrap();
        assert!(!m.is_index());
        assert_eq!(m.config.unwrap().digest, "sha256:c");
        assert_eq!(m.layers[0].annotations["a"], "b");
        let c: ImageConfig =
            serde_json::from_str(r#"{"rootfs":{"type":"layers","diff_ids":["sha256:d"]}}"#)
                .unwrap();
        assert_eq!(c.rootfs.diff_ids, ["sha256:d"]);
    }
}
