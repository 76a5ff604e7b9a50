//! The request engine every operation goes through: mirrors before the upstream, retries with
//! exponential back-off and jitter, the 401 → challenge → token → retry dance, and redirects
//! followed by hand so that credentials and mirror headers never reach another host.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use reqwest::Url;

use crate::auth::{AuthState, UsedAuth};
use crate::body::status_error;
use crate::challenge::parse_challenges;
use crate::config::RegistryConfig;
use crate::error::Error;
use crate::hosts::{request_host, scheme_for};
use crate::log::loggable_url;
use crate::reference::Repository;

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 10;
/// Longest back-off between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Shared state behind a [`crate::RegistryClient`].
pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) config: RegistryConfig,
    pub(crate) auth: AuthState,
    /// The owner's restriction on where requests go, if any.
    pub(crate) destinations: Option<std::sync::Arc<dyn crate::DestinationCheck>>,
}

/// One request to make against a repository.
pub(crate) struct RequestSpec<'a> {
    pub(crate) method: Method,
    pub(crate) repo: &'a Repository,
    /// Path below the host, starting with `/v2/`.
    pub(crate) path: String,
    /// Headers for every hop (Accept, Range).
    pub(crate) headers: HeaderMap,
    /// What is being fetched, for messages.
    pub(crate) what: String,
    /// Apply `request_timeout` to the whole exchange (small answers); otherwise it only
    /// limits idle time while the body streams.
    pub(crate) total_timeout: bool,
    /// Error statuses handed to the handler instead of becoming errors.
    pub(crate) pass_statuses: &'static [u16],
}

/// A response handed to an operation's handler.
pub(crate) struct Answer {
    pub(crate) resp: reqwest::Response,
    /// `host[:port]` that produced the response (a mirror, the registry or a storage host).
    pub(crate) host: String,
    /// URL of the response for messages and logs (no query).
    pub(crate) log_url: String,
}

/// A place requests are sent: a mirror or the upstream registry.
struct Endpoint {
    host: String,
    scheme: &'static str,
    /// `ns` query parameter (the upstream registry) for mirrors.
    ns: Option<String>,
    headers: HeaderMap,
}

impl Endpoint {
    fn is_mirror(&self) -> bool {
        self.ns.is_some()
    }

    fn url(&self, path: &str) -> Result<Url, Error> {
        let mut url =
            Url::parse(&format!("{}://{}{}", self.scheme, self.host, path)).map_err(|e| {
                Error::Config(format!(
                    "cannot build a URL for host {:?} and path {path:?}: {e}; check the host name",
                    self.host
                ))
            })?;
        if let Some(ns) = &self.ns {
            url.query_pairs_mut().append_pair("ns", ns);
        }
        Ok(url)
    }
}

fn host_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

impl Inner {
    /// Mirrors configured for the repository's registry, then the registry itself.
    fn endpoints(&self, repo: &Repository) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let mirrors = self
            .config
            .mirrors
            .iter()
            .filter(|(upstream, _)| {
                crate::hosts::canonical_registry(upstream)
                    .eq_ignore_ascii_case(crate::hosts::canonical_registry(&repo.registry))
            })
            .flat_map(|(_, mirrors)| mirrors.iter());
        for mirror in mirrors {
            let (host, plain) = mirror.endpoint();
            let mut headers = HeaderMap::new();
            for (name, value) in &mirror.headers {
                // Validated in RegistryConfig::validate.
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.insert(n, v);
                }
            }
            out.push(Endpoint {
                scheme: if plain {
                    "http"
                } else {
                    scheme_for(&self.config.plain_http, &host)
                },
                host,
                ns: Some(repo.registry.clone()),
                headers,
            });
        }
        let host = request_host(&repo.registry).to_string();
        out.push(Endpoint {
            scheme: scheme_for(&self.config.plain_http, &host),
            host,
            ns: None,
            headers: HeaderMap::new(),
        });
        out
    }

    /// Runs `spec` against each mirror (one attempt each) and then the upstream (with
    /// retries), handing the first acceptable response to `handle`. A retryable error from
    /// `handle` (a body that broke off) retries the whole exchange.
    pub(crate) async fn run<T, F, Fut>(&self, spec: &RequestSpec<'_>, handle: F) -> Result<T, Error>
    where
        F: Fn(Answer) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let endpoints = self.endpoints(spec.repo);
        let mut last_err = None;
        for ep in &endpoints {
            let attempts = if ep.is_mirror() {
                1
            } else {
                1 + self.config.max_retries
            };
            for attempt in 0..attempts {
                let result = async {
                    let answer = self.attempt(ep, spec).await?;
                    let status = answer.resp.status();
                    if status.is_success() || spec.pass_statuses.contains(&status.as_u16()) {
                        handle(answer).await
                    } else {
                        Err(status_error(answer.resp, &spec.what, &answer.log_url).await)
                    }
                }
                .await;
                match result {
                    Ok(value) => return Ok(value),
                    Err(e) if e.is_retryable() && attempt + 1 < attempts => {
                        let delay = backoff(self.config.retry_base_delay_ms, attempt);
                        tracing::debug!(
                            host = %ep.host,
                            attempt = attempt + 1,
                            delay_ms = delay.as_millis() as u64,
                            error = %e,
                            "registry request failed, retrying"
                        );
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => {
                        if ep.is_mirror() {
                            tracing::debug!(
                                mirror = %ep.host,
                                error = %e,
                                "mirror failed, trying the next source"
                            );
                        }
                        last_err = Some(e);
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            Error::Config("no endpoint to send the request to; this is a bug".into())
        }))
    }

    /// One attempt at one endpoint. A 401 to an anonymous request gets credentials once; a
    /// 401 to a request that carried credentials or a token gets them refreshed once.
    async fn attempt(&self, ep: &Endpoint, spec: &RequestSpec<'_>) -> Result<Answer, Error> {
        let scope = format!("repository:{}:pull", spec.repo.repository);
        let (mut acquired, mut refreshed) = (false, false);
        loop {
            let used = self.auth.header_for(&ep.host, &scope).await?;
            let (answer, from_origin) = self.send(ep, spec, used.as_ref()).await?;
            if answer.resp.status() != StatusCode::UNAUTHORIZED || !from_origin {
                return Ok(answer);
            }
            let answered = if used.is_some() {
                &mut refreshed
            } else {
                &mut acquired
            };
            if *answered {
                return Ok(answer);
            }
            *answered = true;
            let challenges: Vec<_> = answer
                .resp
                .headers()
                .get_all(http::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_challenges)
                .collect();
            self.auth
                .on_unauthorized(&ep.host, &scope, &challenges, used.as_ref(), &spec.what)
                .await?;
        }
    }

    /// Sends the request and follows redirects. Returns the final answer and whether it came
    /// from the endpoint itself (not a redirect target).
    async fn send(
        &self,
        ep: &Endpoint,
        spec: &RequestSpec<'_>,
        auth: Option<&UsedAuth>,
    ) -> Result<(Answer, bool), Error> {
        let origin = ep.url(&spec.path)?;
        let mut url = origin.clone();
        for _ in 0..=MAX_REDIRECTS {
            crate::destination::check(self.destinations.as_deref(), &url)?;
            let from_origin = same_origin(&url, &origin);
            let mut req = self
                .http
                .request(spec.method.clone(), url.clone())
                .headers(spec.headers.clone());
            if from_origin {
                req = req.headers(ep.headers.clone());
                if let Some(auth) = auth {
                    req = req.header(http::header::AUTHORIZATION, auth.0.clone());
                }
            }
            if spec.total_timeout {
                req = req.timeout(self.config.request_timeout());
            }
            let log_url = loggable_url(&url);
            let resp = req.send().await.map_err(|source| Error::Transport {
                action: "send a request to",
                url: log_url.clone(),
                source,
            })?;
            let status = resp.status();
            tracing::debug!(
                method = %spec.method,
                url = %log_url,
                status = status.as_u16(),
                bytes = %resp
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
                "registry request"
            );
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let location = resp
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| Error::BadResponse {
                        registry: host_of(&url),
                        what: spec.what.clone(),
                        reason: format!("HTTP {status} redirect without a Location header"),
                    })?;
                let next = url.join(location).map_err(|e| Error::BadResponse {
                    registry: host_of(&url),
                    what: spec.what.clone(),
                    reason: format!("redirect to an invalid location ({e})"),
                })?;
                if next.scheme() != "http" && next.scheme() != "https" {
                    return Err(Error::BadResponse {
                        registry: host_of(&url),
                        what: spec.what.clone(),
                        reason: format!("redirect to unsupported scheme {:?}", next.scheme()),
                    });
                }
                url = next;
                continue;
            }
            let answer = Answer {
                host: host_of(&url),
                log_url,
                resp,
            };
            return Ok((answer, from_origin));
        }
        Err(Error::BadResponse {
            registry: ep.host.clone(),
            what: spec.what.clone(),
            reason: format!(
                "more than {MAX_REDIRECTS} redirects; the registry or storage is misconfigured"
            ),
        })
    }
}

/// Delay before retry number `attempt + 1`: `base · 2^attempt` (at most 30 s) plus up to half
/// of that again as random jitter.
pub(crate) fn backoff(base_ms: u64, attempt: u32) -> Duration {
    let exp = Duration::from_millis(base_ms)
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    let half = exp.as_millis() as u64 / 2;
    let jitter = if half == 0 {
        0
    } else {
        RandomState::new().build_hasher().finish() % (half + 1)
    };
    exp + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        for attempt in 0..5 {
            let d = backoff(100, attempt).as_millis() as u64;
            let exp = 100u64 << attempt;
            assert!(d >= exp && d <= exp + exp / 2, "attempt {attempt}: {d}");
        }
        assert!(backoff(10_000, 20) <= Duration::from_secs(45));
        assert_eq!(backoff(0, 3), Duration::ZERO);
    }

    #[test]
    fn origin_comparison() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(same_origin(&u("http://a:80/x"), &u("http://a/y")));
        assert!(!same_origin(&u("http://a:81/x"), &u("http://a/y")));
        assert!(!same_origin(&u("https://a/x"), &u("http://a/y")));
        assert!(!same_origin(&u("http://b/x"), &u("http://a/x")));
    }

    #[test]
    fn endpoints_put_mirrors_first() {
        let mut config = RegistryConfig::default();
        config.mirrors.insert(
            "index.docker.io".into(),
            vec![crate::config::Mirror {
                host: "127.0.0.1:5001".into(),
                plain_http: false,
                headers: [(
                    "X-Dragonfly-Registry".to_string(),
                    "https://index.docker.io".to_string(),
                )]
                .into(),
            }],
        );
        let inner = Inner {
            http: reqwest::Client::new(),
            config: config.clone(),
            auth: AuthState::new(
                reqwest::Client::new(),
                Duration::from_secs(1),
                crate::credentials::CredentialStore::new(&config.credentials, None),
                None,
            ),
            destinations: None,
        };
        let repo = Repository {
            registry: "docker.io".into(),
            repository: "library/busybox".into(),
        };
        let eps = inner.endpoints(&repo);
        assert_eq!(eps.len(), 2);
        let url = eps[0].url("/v2/library/busybox/manifests/latest").unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:5001/v2/library/busybox/manifests/latest?ns=docker.io"
        );
        assert_eq!(
            eps[0].headers["x-dragonfly-registry"],
            "https://index.docker.io"
        );
        let url = eps[1].url("/v2/library/busybox/manifests/latest").unwrap();
        assert_eq!(
            url.as_str(),
            "https://registry-1.docker.io/v2/library/busybox/manifests/latest"
        );
        let other = Repository {
            registry: "ghcr.io".into(),
            repository: "a/b".into(),
        };
        assert_eq!(inner.endpoints(&other).len(), 1);
    }
}
