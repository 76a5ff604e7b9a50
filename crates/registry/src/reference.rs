//! Image references (`[host[:port]/]name[:tag][@digest]`) parsed the way docker and containerd
//! normalise them: no host means Docker Hub, and Docker Hub names without a `/` get `library/`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::Error;
use crate::hosts::{canonical_registry, DOCKER_HUB};

/// Longest repository name the distribution spec allows.
const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag the distribution spec allows.
const MAX_TAG_LEN: usize = 128;

/// A parsed image reference.
///
/// `registry` is `host[:port]`; every Docker Hub alias (`docker.io`, `index.docker.io`,
/// `registry-1.docker.io`) is stored as `docker.io` (the name mirrors and credentials are keyed
/// by) and requests for it go to `registry-1.docker.io`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, `host[:port]`; `docker.io` for Docker Hub.
    pub registry: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, when one was given.
    pub tag: Option<String>,
    /// Manifest digest, when one was given (it wins over the tag for requests).
    pub digest: Option<String>,
}

/// A repository in a registry: what blobs are addressed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository {
    /// Registry host, `host[:port]`; `docker.io` for Docker Hub.
    pub registry: String,
    /// Repository path inside the registry.
    pub repository: String,
}

impl Reference {
    /// The repository this reference points into.
    pub fn repo(&self) -> Repository {
        Repository {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
        }
    }

    /// What goes after `/manifests/` in a request: the digest, else the tag, else `latest`.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl Repository {
    /// Checks both fields (they are public, so they may have been set by hand) before they
    /// go into a URL.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let bad = |reason: String| Error::InvalidReference {
            reference: self.to_string(),
            reason,
        };
        validate_registry(&self.registry).map_err(bad)?;
        validate_repository(&self.repository).map_err(bad)
    }
}

impl Reference {
    /// Checks every field before they go into a URL.
    pub(crate) fn check(&self) -> Result<(), Error> {
        self.repo().check()?;
        let bad = |reason: String| Error::InvalidReference {
            reference: self.to_string(),
            reason,
        };
        if let Some(tag) = &self.tag {
            validate_tag(tag).map_err(bad)?;
        }
        if let Some(digest) = &self.digest {
            Digest::parse(digest).map_err(|e| bad(format!("bad digest: {e}")))?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(text: &str) -> Result<Reference, Error> {
        let bad = |reason: &str| Error::InvalidReference {
            reference: text.to_string(),
            reason: reason.to_string(),
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it contains whitespace or control characters"));
        }
        if text.contains("://") {
            return Err(bad("it must not contain a URL scheme"));
        }

        let (name_tag, digest) = match text.split_once('@') {
            Some((n, d)) => {
                Digest::parse(d).map_err(|e| bad(&format!("bad digest: {e}")))?;
                (n, Some(d.to_string()))
            }
            None => (text, None),
        };

        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => {
                (&name_tag[..colon], Some(name_tag[colon + 1..].to_string()))
            }
            _ => (name_tag, None),
        };
        if let Some(tag) = &tag {
            validate_tag(tag).map_err(|r| bad(&r))?;
        }

        let (registry, path) = split_registry(name);
        validate_registry(registry).map_err(|r| bad(&r))?;
        let registry = canonical_registry(registry).to_string();
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        validate_repository(&repository).map_err(|r| bad(&r))?;

        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// Splits `name` into registry host and path; the first component is a host when it looks
/// like one (has `.` or `:`, is `localhost`, or has upper-case letters), like docker does.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

fn validate_registry(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the registry host is empty".into());
    }
    let (hostname, port) = if let Some(rest) = host.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry host {host:?} has an unclosed '['"))?;
        if inner.is_empty() || !inner.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!(
                "registry host {host:?} is not a valid IPv6 address"
            ));
        }
        match after {
            "" => (inner, None),
            p => (
                inner,
                Some(p.strip_prefix(':').ok_or_else(|| {
                    format!("registry host {host:?} has junk after the IPv6 address")
                })?),
            ),
        }
    } else {
        match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        }
    };
    if !host.starts_with('[') {
        let ok_label = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !hostname.split('.').all(ok_label) {
            return Err(format!(
                "registry host {hostname:?} is not a valid host name"
            ));
        }
    }
    if let Some(port) = port {
        if port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
            return Err(format!(
                "registry port {port:?} is not a number between 1 and 65535"
            ));
        }
    }
    Ok(())
}

fn validate_repository(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the repository name is empty".into());
    }
    if path.len() > MAX_REPOSITORY_LEN {
        return Err(format!(
            "the repository name is longer than {MAX_REPOSITORY_LEN} characters"
        ));
    }
    for component in path.split('/') {
        validate_component(component)
            .map_err(|r| format!("repository component {component:?} {r}"))?;
    }
    Ok(())
}

/// One path component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn validate_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("is empty (double or trailing '/')".into());
    }
    if c.chars().any(|ch| ch.is_ascii_uppercase()) {
        return Err("must be lower-case".into());
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("must start and end with a letter or digit".into());
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(format!(
                "has an invalid separator {sep:?} (allowed: '.', '_', '__', '-')"
            ));
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("the tag after ':' is empty".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("the tag is longer than {MAX_TAG_LEN} characters"));
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(word);
    if !first_ok || !chars.all(|c| word(c) || c == '.' || c == '-') {
        return Err(format!(
            "tag {tag:?} may only hold letters, digits, '_', '.', '-' and must not start with '.' or '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn r(registry: &str, repository: &str, tag: Option<&str>, digest: Option<&str>) -> Reference {
        Reference {
            registry: registry.into(),
            repository: repository.into(),
            tag: tag.map(Into::into),
            digest: digest.map(Into::into),
        }
    }

    #[test]
    fn parses_valid_references() {
        let hub_digest = format!("busybox@{D}");
        let quay_digest = format!("quay.io/a/b:t@{D}");
        let cases = vec![
            ("busybox", r("docker.io", "library/busybox", None, None)),
            (
                "busybox:1.36",
                r("docker.io", "library/busybox", Some("1.36"), None),
            ),
            (
                "docker.io/busybox",
                r("docker.io", "library/busybox", None, None),
            ),
            (
                "index.docker.io/library/busybox:latest",
                r("docker.io", "library/busybox", Some("latest"), None),
            ),
            (
                "registry-1.docker.io/user/app",
                r("docker.io", "user/app", None, None),
            ),
            ("user/app:v1", r("docker.io", "user/app", Some("v1"), None)),
            (
                "ghcr.io/org/team/app:v1.2-rc_3",
                r("ghcr.io", "org/team/app", Some("v1.2-rc_3"), None),
            ),
            ("localhost/app", r("localhost", "app", None, None)),
            (
                "localhost:5000/app:tag",
                r("localhost:5000", "app", Some("tag"), None),
            ),
            ("127.0.0.1:5000/a/b", r("127.0.0.1:5000", "a/b", None, None)),
            ("[::1]:5000/app:t", r("[::1]:5000", "app", Some("t"), None)),
            ("[::1]/app", r("[::1]", "app", None, None)),
            (
                hub_digest.as_str(),
                r("docker.io", "library/busybox", None, Some(D)),
            ),
            (
                quay_digest.as_str(),
                r("quay.io", "a/b", Some("t"), Some(D)),
            ),
            ("Host/app", r("Host", "app", None, None)),
            (
                "my.registry/a.b/c__d/e--f/g_h",
                r("my.registry", "a.b/c__d/e--f/g_h", None, None),
            ),
        ];
        for (text, want) in cases {
            let got: Reference = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn rejects_invalid_references() {
        let long = "a".repeat(256);
        let long_tag = format!("app:{}", "t".repeat(129));
        let cases = [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox:.x",
            "busybox@sha256:abc",
            "busybox@md5:d41d8cd98f00b204e9800998ecf8427e",
            "a//b",
            "a/b/",
            "/a",
            "a b",
            "https://ghcr.io/a",
            "ghcr.io/-a",
            "ghcr.io/a-",
            "ghcr.io/a..b",
            "ghcr.io/a___b",
            "ghcr.io/a.-b",
            "ghcr.io:abc/a",
            "ghcr.io:0/a",
            "ghcr.io:70000/a",
            "[zz]/a",
            "[::1/a",
            "bad_host.io/a",
            "ghcr.io/",
            long.as_str(),
            long_tag.as_str(),
        ];
        for text in cases {
            let err = text.parse::<Reference>().expect_err(text);
            assert!(
                matches!(err, Error::InvalidReference { .. }),
                "{text}: {err}"
            );
            assert!(err.to_string().contains("expected [host[:port]/]"), "{err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "docker.io/library/busybox",
            "docker.io/library/busybox:1.36",
            "localhost:5000/a/b:t",
            &format!("ghcr.io/a/b:t@{D}"),
            &format!("ghcr.io/a/b@{D}"),
        ] {
            let parsed: Reference = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.to_string().parse::<Reference>().unwrap(), parsed);
        }
        assert_eq!(
            "busybox".parse::<Reference>().unwrap().repo().to_string(),
            "docker.io/library/busybox"
        );
    }

    #[test]
    fn hand_built_references_are_checked() {
        let mut r = r("ghcr.io", "a/b", Some("v1"), None);
        assert!(r.check().is_ok());
        r.tag = Some("../x".into());
        assert!(r.check().is_err());
        r.tag = None;
        r.repository = "a/../b".into();
        assert!(r.check().is_err());
        r.repository = "a".into();
        r.registry = "evil.io/x?".into();
        assert!(r.check().is_err());
        r.registry = "ghcr.io".into();
        r.digest = Some("sha256:zz".into());
        assert!(r.check().is_err());
    }

    #[test]
    fn manifest_reference_prefers_digest() {
        let p = |s: &str| s.parse::<Reference>().unwrap();
        assert_eq!(p("a").manifest_reference(), "latest");
        assert_eq!(p("a:v1").manifest_reference(), "v1");
        assert_eq!(p(&format!("a:v1@{D}")).manifest_reference(), D);
    }
}
