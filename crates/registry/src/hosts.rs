//! Host names: Docker Hub aliases, where requests really go, and which hosts speak plain HTTP.

use std::net::IpAddr;

/// The name Docker Hub references, mirrors and credentials are keyed by.
pub(crate) const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's registry API is served from.
pub(crate) const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Every name Docker Hub is known by.
const DOCKER_HUB_ALIASES: [&str; 3] = [DOCKER_HUB, "index.docker.io", DOCKER_HUB_API];

/// Maps every Docker Hub alias to `docker.io`; other hosts are returned unchanged.
pub(crate) fn canonical_registry(host: &str) -> &str {
    if DOCKER_HUB_ALIASES
        .iter()
        .any(|alias| alias.eq_ignore_ascii_case(host))
    {
        DOCKER_HUB
    } else {
        host
    }
}

/// The host registry API requests for `registry` go to.
pub(crate) fn request_host(registry: &str) -> &str {
    if canonical_registry(registry) == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// Normalises a key from docker's config.json (`https://index.docker.io/v1/`, `host:port`,
/// `http://host/path`) to a canonical `host[:port]`.
pub(crate) fn normalize_config_key(key: &str) -> String {
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = without_scheme.split('/').next().unwrap_or_default();
    canonical_registry(host).to_ascii_lowercase()
}

/// Splits `host[:port]` (IPv6 in brackets) into the bare host name and the port text.
fn split_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inner, after)) => (inner, after.strip_prefix(':')),
            None => (host, None),
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (host, None),
        }
    }
}

/// Whether `host[:port]` names this machine (`localhost`, 127.0.0.0/8, `::1`).
pub(crate) fn is_loopback(host: &str) -> bool {
    let (name, _) = split_port(host);
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `host[:port]` is listed in `plain_http` (a listed bare host matches every port).
pub(crate) fn listed_plain_http(plain_http: &[String], host: &str) -> bool {
    let host_lc = host.to_ascii_lowercase();
    let (bare, _) = split_port(&host_lc);
    plain_http.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        let entry = entry
            .strip_prefix("http://")
            .unwrap_or(&entry)
            .trim_end_matches('/');
        entry == host_lc || (split_port(entry).1.is_none() && entry == bare)
    })
}

/// `http` for listed and loopback hosts, `https` otherwise.
pub(crate) fn scheme_for(plain_http: &[String], host: &str) -> &'static str {
    if listed_plain_http(plain_http, host) || is_loopback(host) {
        "http"
    } else {
        "https"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_aliases() {
        for alias in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "Docker.IO",
        ] {
            assert_eq!(canonical_registry(alias), "docker.io");
            assert_eq!(request_host(alias), "registry-1.docker.io");
        }
        assert_eq!(request_host("ghcr.io"), "ghcr.io");
        assert_eq!(
            normalize_config_key("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(normalize_config_key("registry-1.docker.io"), "docker.io");
        assert_eq!(normalize_config_key("http://Local:5000/v2/"), "local:5000");
        assert_eq!(normalize_config_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn loopback_detection() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:5000",
            "x.localhost",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1:5000",
            "[::2]:80",
            "localhost.example.com",
            "128.0.0.1",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn scheme_choice() {
        let plain = vec!["reg.lan:5000".to_string(), "other.lan".to_string()];
        assert_eq!(scheme_for(&plain, "reg.lan:5000"), "http");
        assert_eq!(scheme_for(&plain, "reg.lan"), "https");
        assert_eq!(scheme_for(&plain, "reg.lan:5001"), "https");
        assert_eq!(scheme_for(&plain, "other.lan:1234"), "http");
        assert_eq!(scheme_for(&plain, "OTHER.lan"), "http");
        assert_eq!(scheme_for(&plain, "ghcr.io"), "https");
        assert_eq!(scheme_for(&[], "127.0.0.1:5000"), "http");
        assert_eq!(scheme_for(&[], "[::1]:5000"), "http");
    }
}
