//! Where credentials come from: static ones in the client config, then docker's config.json
//! (`auths[host]` with `auth`, `username`/`password`, `identitytoken` or `registrytoken`).
//! Docker Hub aliases share one entry. Credential helpers (`credsStore`, `credHelpers`) are not
//! run; a warning says so when one would have been needed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::config::Credential;
use crate::error::Error;
use crate::hosts::normalize_config_key;

/// Credentials found for one host.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// Basic user name and password.
    Basic { username: String, password: String },
    /// OAuth2 refresh token for the token service.
    IdentityToken(String),
    /// A bearer token to send as is (docker's `registrytoken`).
    RegistryToken(String),
}

impl fmt::Debug for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Found::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Found::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

/// Looks credentials up for registry hosts.
#[derive(Debug)]
pub(crate) struct CredentialStore {
    /// Static credentials keyed by canonical host.
    statics: HashMap<String, Found>,
    /// The docker config file, if one is to be read.
    docker_config: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DockerConfigFile {
    auths: HashMap<String, DockerAuthEntry>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DockerAuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

impl CredentialStore {
    /// Builds the store; `docker_config` overrides the default file location.
    pub(crate) fn new(
        statics: &HashMap<String, Credential>,
        docker_config: Option<PathBuf>,
    ) -> CredentialStore {
        let statics = statics
            .iter()
            .map(|(host, cred)| {
                let found = match cred {
                    Credential::Basic { username, password } => Found::Basic {
                        username: username.clone(),
                        password: password.clone(),
                    },
                    Credential::IdentityToken { identity_token } => {
                        Found::IdentityToken(identity_token.clone())
                    }
                    Credential::RegistryToken { registry_token } => {
                        Found::RegistryToken(registry_token.clone())
                    }
                };
                (normalize_config_key(host), found)
            })
            .collect();
        CredentialStore {
            statics,
            docker_config: docker_config.or_else(default_docker_config),
        }
    }

    /// Credentials for `host` (`host[:port]`, any Docker Hub alias), or `None` for anonymous.
    pub(crate) async fn lookup(&self, host: &str) -> Result<Option<Found>, Error> {
        let key = normalize_config_key(host);
        if let Some(found) = self.statics.get(&key) {
            return Ok(Some(found.clone()));
        }
        let Some(path) = &self.docker_config else {
            return Ok(None);
        };
        let text = match tokio::fs::read_to_string(path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Config(format!(
                    "cannot read docker config {}: {e}; fix its permissions or set \
                     docker_config to another file",
                    path.display()
                )))
            }
        };
        parse_docker_config(&text, path, &key)
    }
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

/// Finds the entry for canonical host `key` in a docker config file's text.
fn parse_docker_config(text: &str, path: &Path, key: &str) -> Result<Option<Found>, Error> {
    let file: DockerConfigFile = serde_json::from_str(text).map_err(|e| {
        Error::Config(format!(
            "docker config {} is not valid JSON ({e}); fix or remove it",
            path.display()
        ))
    })?;
    let entry = file
        .auths
        .iter()
        .find(|(k, _)| normalize_config_key(k) == key)
        .map(|(_, v)| v);
    let Some(entry) = entry else {
        if file.creds_store.is_some()
            || file
                .cred_helpers
                .keys()
                .any(|k| normalize_config_key(k) == key)
        {
            tracing::warn!(
                host = key,
                config = %path.display(),
                "docker config uses a credential helper, which this client does not run; \
                 put credentials for this host in the daemon config instead"
            );
        }
        return Ok(None);
    };
    let bad = |what: &str| {
        Error::Config(format!(
            "docker config {} has an invalid entry for {key}: {what}; run `docker login {key}` \
             again or fix the entry",
            path.display()
        ))
    };
    if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Found::IdentityToken(token.to_string())));
    }
    if let Some(token) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Found::RegistryToken(token.to_string())));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("`auth` is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad("`auth` is not UTF-8"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad("`auth` does not decode to user:password"))?;
        return Ok(Some(Found::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Found::Basic {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn docker_config_entries() {
        let text = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "ghcr.io": {{"username": "gu", "password": "gp"}},
                "quay.io": {{"auth": "{}", "identitytoken": "refresh"}},
                "reg.lan:5000": {{"registrytoken": "rt"}},
                "broken.io": {{"auth": "!!!"}},
                "nocolon.io": {{"auth": "{}"}}
            }}}}"#,
            b64("hub:secret:with:colons"),
            b64("q:p"),
            b64("nocolon")
        );
        let p = Path::new("/x/config.json");
        let hub = Found::Basic {
            username: "hub".into(),
            password: "secret:with:colons".into(),
        };
        for alias in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(
                parse_docker_config(&text, p, &normalize_config_key(alias)).unwrap(),
                Some(hub.clone())
            );
        }
        assert_eq!(
            parse_docker_config(&text, p, "ghcr.io").unwrap(),
            Some(Found::Basic {
                username: "gu".into(),
                password: "gp".into()
            })
        );
        assert_eq!(
            parse_docker_config(&text, p, "quay.io").unwrap(),
            Some(Found::IdentityToken("refresh".into()))
        );
        assert_eq!(
            parse_docker_config(&text, p, "reg.lan:5000").unwrap(),
            Some(Found::RegistryToken("rt".into()))
        );
        assert_eq!(parse_docker_config(&text, p, "reg.lan").unwrap(), None);
        for broken in ["broken.io", "nocolon.io"] {
            let err = parse_docker_config(&text, p, broken)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("docker login") && err.contains("/x/config.json"),
                "{err}"
            );
        }
        let err = parse_docker_config("{not json", p, "a")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        assert!(!format!("{hub:?}").contains("secret"));
    }

    #[tokio::test]
    async fn statics_win_and_missing_file_is_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let statics = HashMap::from([(
            "https://index.docker.io/v1/".to_string(),
            Credential::Basic {
                username: "s".into(),
                password: "p".into(),
            },
        )]);
        let store = CredentialStore::new(&statics, Some(path.clone()));
        assert!(
            matches!(store.lookup("registry-1.docker.io").await.unwrap(), Some(Found::Basic { username, .. }) if username == "s")
        );
        assert_eq!(store.lookup("ghcr.io").await.unwrap(), None);
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}}}}}}"#, b64("f:g")),
        )
        .unwrap();
        assert!(
            matches!(store.lookup("ghcr.io").await.unwrap(), Some(Found::Basic { username, .. }) if username == "f")
        );
    }
}
