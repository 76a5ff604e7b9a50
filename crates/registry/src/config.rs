//! Client configuration: plain-HTTP hosts, mirrors, credentials, timeouts and retry policy.
//! Deserialisable from the daemon's YAML/JSON config; every field has a default.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;

/// Configuration of a [`crate::RegistryClient`].
#[derive(Deserialize, Clone, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Hosts (`host` or `host:port`) spoken to over plain HTTP. Loopback hosts (`localhost`,
    /// 127.0.0.0/8, `[::1]`) use plain HTTP without being listed, like docker.
    pub plain_http: Vec<String>,
    /// Mirrors per upstream host (`docker.io`, `ghcr.io`, `host:port`), tried in order before
    /// the upstream.
    pub mirrors: HashMap<String, Vec<Mirror>>,
    /// Docker config file to read credentials from; default `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// Static credentials per host; they win over the docker config file.
    pub credentials: HashMap<String, Credential>,
    /// Time limit for small requests (manifests, HEAD, tokens) and idle limit while a body is
    /// read (a body may take longer as long as bytes keep coming).
    pub request_timeout_secs: u64,
    /// Time limit for establishing a connection.
    pub connect_timeout_secs: u64,
    /// Retries after the first attempt for 5xx, 429 and connection failures.
    pub max_retries: u32,
    /// First back-off delay; it doubles per retry (capped at 30 s) with random jitter added.
    pub retry_base_delay_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            plain_http: Vec::new(),
            mirrors: HashMap::new(),
            docker_config: None,
            credentials: HashMap::new(),
            request_timeout_secs: 30,
            connect_timeout_secs: 10,
            max_retries: 3,
            retry_base_delay_ms: 200,
        }
    }
}

impl RegistryConfig {
    /// Checks values that would make the client useless.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.request_timeout_secs == 0 {
            return Err(Error::Config(
                "request_timeout_secs is 0; set it to a positive number of seconds (default 30)"
                    .into(),
            ));
        }
        if self.connect_timeout_secs == 0 {
            return Err(Error::Config(
                "connect_timeout_secs is 0; set it to a positive number of seconds (default 10)"
                    .into(),
            ));
        }
        for (upstream, mirrors) in &self.mirrors {
            for mirror in mirrors {
                if mirror.host.trim().is_empty() {
                    return Err(Error::Config(format!(
                        "a mirror of {upstream} has an empty host; give host[:port] or remove it"
                    )));
                }
                for (name, value) in &mirror.headers {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                        || http::HeaderValue::from_str(value).is_err()
                    {
                        return Err(Error::Config(format!(
                            "mirror {} of {upstream} has an invalid header {name:?}; use a plain \
                             ASCII header name and value",
                            mirror.host
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

/// A mirror of an upstream registry.
#[derive(Deserialize, Clone, Default, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Mirror {
    /// `host[:port]` of the mirror; an `http://` or `https://` prefix sets the scheme.
    pub host: String,
    /// Speak plain HTTP to this mirror.
    pub plain_http: bool,
    /// Extra headers sent to the mirror (never to redirect targets).
    pub headers: HashMap<String, String>,
}

impl Mirror {
    /// The mirror's `host[:port]` and whether it is plain HTTP (from the prefix or the flag).
    pub(crate) fn endpoint(&self) -> (String, bool) {
        let host = self.host.trim().trim_end_matches('/');
        if let Some(rest) = host.strip_prefix("http://") {
            (rest.to_string(), true)
        } else if let Some(rest) = host.strip_prefix("https://") {
            (rest.to_string(), false)
        } else {
            (host.to_string(), self.plain_http)
        }
    }
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may carry secrets: show names only.
        let mut names: Vec<&String> = self.headers.keys().collect();
        names.sort();
        f.debug_struct("Mirror")
            .field("host", &self.host)
            .field("plain_http", &self.plain_http)
            .field("header_names", &names)
            .finish()
    }
}

/// Static credentials for one registry host.
#[derive(Deserialize, Clone, PartialEq, Eq)]
#[serde(untagged, deny_unknown_fields)]
pub enum Credential {
    /// User name and password (or a personal access token as password).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// An OAuth2 refresh token (docker's `identitytoken`), exchanged at the token service.
    IdentityToken {
        /// The refresh token.
        identity_token: String,
    },
    /// A bearer token sent as it is when the registry asks for one (docker's `registrytoken`;
    /// what `Authorization: Bearer …` headers carry, e.g. Harbor robot tokens).
    RegistryToken {
        /// The token.
        registry_token: String,
    },
}

impl Credential {
    /// The credential an `Authorization` header value carries: `Basic base64(user:password)`
    /// or `Bearer TOKEN`. Errors say what is wrong without echoing the secret.
    pub fn from_authorization(value: &str) -> Result<Credential, BadAuthorization> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            return Ok(Credential::RegistryToken {
                registry_token: rest.to_owned(),
            });
        }
        if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(BadAuthorization(
                    "the Authorization header's Basic credentials are not base64 of user:password",
                ))?;
            let (username, password) = decoded.split_once(':').ok_or(BadAuthorization(
                "the Authorization header's Basic credentials have no ':'",
            ))?;
            return Ok(Credential::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            });
        }
        Err(BadAuthorization(
            "the Authorization header is neither `Basic …` nor `Bearer …`",
        ))
    }
}

/// An `Authorization` header that carries no usable credential; the message never echoes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadAuthorization(pub &'static str);

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::IdentityToken { .. } => f
                .debug_struct("IdentityToken")
                .field("identity_token", &"<redacted>")
                .finish(),
            Credential::RegistryToken { .. } => f
                .debug_struct("RegistryToken")
                .field("registry_token", &"<redacted>")
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_headers_become_credentials() {
        assert_eq!(
            Credential::from_authorization("Bearer abc.def").unwrap(),
            Credential::RegistryToken {
                registry_token: "abc.def".into()
            }
        );
        // base64("bob:pa:ss")
        assert_eq!(
            Credential::from_authorization("basic Ym9iOnBhOnNz").unwrap(),
            Credential::Basic {
                username: "bob".into(),
                password: "pa:ss".into()
            }
        );
        for bad in ["Bearer", "Basic !!!", "Basic Ym9i", "Digest x", "token"] {
            let e = Credential::from_authorization(bad).unwrap_err();
            assert!(
                !e.to_string().contains("Ym9i"),
                "the secret is not echoed: {e}"
            );
        }
        let debug = format!(
            "{:?}",
            Credential::RegistryToken {
                registry_token: "s3cret".into()
            }
        );
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn deserializes_with_defaults() {
        let cfg: RegistryConfig = serde_json::from_str(
            r#"{
                "plain_http": ["reg.lan:5000"],
                "mirrors": {"docker.io": [{"host": "127.0.0.1:65001", "headers": {"X-Dragonfly-Registry": "https://index.docker.io"}}]},
                "credentials": {
                    "ghcr.io": {"username": "u", "password": "p"},
                    "quay.io": {"identity_token": "t"}
                },
                "max_retries": 5
            }"#,
        )
        .unwrap();
        assert_eq!(cfg.max_retries, 5);
        assert_eq!(cfg.request_timeout_secs, 30);
        assert_eq!(cfg.retry_base_delay_ms, 200);
        assert_eq!(cfg.mirrors["docker.io"][0].host, "127.0.0.1:65001");
        assert!(!cfg.mirrors["docker.io"][0].plain_http);
        assert_eq!(
            cfg.credentials["ghcr.io"],
            Credential::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(
            cfg.credentials["quay.io"],
            Credential::IdentityToken {
                identity_token: "t".into()
            }
        );
        cfg.validate().unwrap();
        let debug = format!("{cfg:?}");
        assert!(
            !debug.contains("\"p\"") && debug.contains("<redacted>"),
            "{debug}"
        );
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(serde_json::from_str::<RegistryConfig>(r#"{"plain_htp": []}"#).is_err());
        let cfg = RegistryConfig {
            request_timeout_secs: 0,
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("request_timeout_secs"));
        let mut cfg = RegistryConfig::default();
        cfg.mirrors.insert(
            "docker.io".into(),
            vec![Mirror {
                host: "m".into(),
                plain_http: false,
                headers: HashMap::from([("bad header".into(), "v".into())]),
            }],
        );
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("invalid header"));
    }

    #[test]
    fn mirror_endpoint_scheme() {
        let m = |host: &str, plain| Mirror {
            host: host.into(),
            plain_http: plain,
            headers: HashMap::new(),
        };
        assert_eq!(m("http://a:1/", false).endpoint(), ("a:1".into(), true));
        assert_eq!(m("https://a", true).endpoint(), ("a".into(), false));
        assert_eq!(m("a:5", true).endpoint(), ("a:5".into(), true));
    }
}
