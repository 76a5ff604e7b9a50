//! Authentication state: what each registry host asked for (Basic or a Bearer token service),
//! bearer tokens cached per (host, scope) until they expire, and the token-service exchange
//! (GET with optional Basic auth, or an OAuth2 refresh-token POST for identity tokens).
//!
//! One async mutex per (host, scope) makes concurrent requests wait for a single token fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderValue;
use serde::Deserialize;

use crate::challenge::Challenge;
use crate::credentials::{CredentialStore, Found};
use crate::error::{detail_suffix, Error};
use crate::log::loggable_url;

/// Token lifetime when the token service does not say (`expires_in` absent or 0).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Longest token answer read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;
/// Client id sent with OAuth2 refresh-token requests.
const OAUTH_CLIENT_ID: &str = "dragonfly-rs";

/// What a host demanded in its last challenge.
#[derive(Debug, Clone)]
enum HostAuth {
    /// Basic auth with these credentials.
    Basic(Found),
    /// A token from this service.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A cached bearer token.
#[derive(Clone)]
struct CachedToken {
    token: String,
    valid_until: Instant,
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// Shared authentication state of one client.
pub(crate) struct AuthState {
    http: reqwest::Client,
    /// Time limit of one token request.
    timeout: Duration,
    creds: CredentialStore,
    /// The owner's restriction on where requests go (token realms included).
    destinations: Option<Arc<dyn crate::DestinationCheck>>,
    hosts: Mutex<HashMap<String, HostAuth>>,
    tokens: Mutex<HashMap<(String, String), TokenSlot>>,
}

/// The `Authorization` value used for a request, remembered to detect stale tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UsedAuth(pub(crate) HeaderValue);

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl AuthState {
    pub(crate) fn new(
        http: reqwest::Client,
        timeout: Duration,
        creds: CredentialStore,
        destinations: Option<Arc<dyn crate::DestinationCheck>>,
    ) -> AuthState {
        AuthState {
            http,
            timeout,
            creds,
            destinations,
            hosts: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, host: &str, scope: &str) -> TokenSlot {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .entry((host.to_string(), scope.to_string()))
            .or_default()
            .clone()
    }

    fn host_auth(&self, host: &str) -> Option<HostAuth> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.get(host).cloned()
    }

    fn set_host_auth(&self, host: &str, auth: HostAuth) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.insert(host.to_string(), auth);
    }

    /// The `Authorization` header to send to `host` for `scope`, fetching a token first when
    /// the host is known to use a token service and none is cached. `None`: go anonymous.
    pub(crate) async fn header_for(
        &self,
        host: &str,
        scope: &str,
    ) -> Result<Option<UsedAuth>, Error> {
        match self.host_auth(host) {
            None => Ok(None),
            Some(HostAuth::Basic(found)) => Ok(basic_header(&found).map(UsedAuth)),
            Some(HostAuth::Bearer { realm, service }) => {
                let slot = self.slot(host, scope);
                let mut guard = slot.lock().await;
                if let Some(cached) = guard.as_ref().filter(|t| t.valid_until > Instant::now()) {
                    return Ok(Some(UsedAuth(bearer_header(&cached.token)?)));
                }
                let creds = self.creds.lookup(host).await?;
                let fresh = fetch_token(
                    &self.http,
                    self.destinations.as_deref(),
                    self.timeout,
                    &realm,
                    service.as_deref(),
                    scope,
                    creds.as_ref(),
                )
                .await?;
                let header = bearer_header(&fresh.token)?;
                *guard = Some(fresh);
                Ok(Some(UsedAuth(header)))
            }
        }
    }

    /// Reacts to a 401 from `host`: records what the challenge asks for and gets what is
    /// needed to answer it. `used` is what the refused request carried. Errors when the
    /// challenge cannot be answered (no credentials, refused credentials, bad challenge).
    pub(crate) async fn on_unauthorized(
        &self,
        host: &str,
        scope: &str,
        challenges: &[Challenge],
        used: Option<&UsedAuth>,
        what: &str,
    ) -> Result<(), Error> {
        let unauthorized = |detail: String| Error::Unauthorized {
            registry: host.to_string(),
            what: what.to_string(),
            detail: detail_suffix(&detail),
        };
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer
                .param("realm")
                .filter(|r| !r.is_empty())
                .ok_or_else(|| Error::BadResponse {
                    registry: host.to_string(),
                    what: what.to_string(),
                    reason: "its Bearer challenge has no realm; the registry's auth setup is \
                             broken, report it to its operator"
                        .into(),
                })?;
            let service = bearer.param("service").map(str::to_string);
            self.set_host_auth(
                host,
                HostAuth::Bearer {
                    realm: realm.to_string(),
                    service: service.clone(),
                },
            );
            let token_scope = bearer
                .param("scope")
                .filter(|s| !s.is_empty())
                .unwrap_or(scope);
            let slot = self.slot(host, scope);
            let mut guard = slot.lock().await;
            if let Some(cached) = guard.as_ref() {
                let cached_header = bearer_header(&cached.token)?;
                let fresh_elsewhere = used.is_none_or(|u| u.0 != cached_header)
                    && cached.valid_until > Instant::now();
                if fresh_elsewhere {
                    // Another request refreshed the token meanwhile: use that one.
                    return Ok(());
                }
            }
            *guard = None;
            let creds = self.creds.lookup(host).await?;
            let fresh = fetch_token(
                &self.http,
                self.destinations.as_deref(),
                self.timeout,
                realm,
                service.as_deref(),
                token_scope,
                creds.as_ref(),
            )
            .await?;
            *guard = Some(fresh);
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            if used.is_some() {
                return Err(unauthorized("the credentials were refused".into()));
            }
            return match self.creds.lookup(host).await? {
                Some(found @ Found::Basic { .. }) => {
                    self.set_host_auth(host, HostAuth::Basic(found));
                    Ok(())
                }
                Some(_) => Err(unauthorized(
                    "the registry wants a user name and password but only a token is configured"
                        .into(),
                )),
                None => Err(unauthorized(
                    "no credentials are configured for this host".into(),
                )),
            };
        }
        let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
        Err(unauthorized(if schemes.is_empty() {
            "no usable WWW-Authenticate challenge".into()
        } else {
            format!("unsupported auth scheme(s) {}", schemes.join(", "))
        }))
    }
}

fn basic_header(found: &Found) -> Option<HeaderValue> {
    match found {
        Found::Basic { username, password } => {
            let raw =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            let mut value = HeaderValue::from_str(&format!("Basic {raw}")).ok()?;
            value.set_sensitive(true);
            Some(value)
        }
        _ => None,
    }
}

fn bearer_header(token: &str) -> Result<HeaderValue, Error> {
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::BadResponse {
            registry: "token service".into(),
            what: "a bearer token".into(),
            reason: "the token holds characters not allowed in an HTTP header".into(),
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Gets a token for `scope` from the token service at `realm`.
#[allow(clippy::too_many_arguments)]
async fn fetch_token(
    http: &reqwest::Client,
    destinations: Option<&dyn crate::DestinationCheck>,
    timeout: Duration,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    creds: Option<&Found>,
) -> Result<CachedToken, Error> {
    let url = reqwest::Url::parse(realm).map_err(|e| Error::BadResponse {
        registry: realm.to_string(),
        what: "the token realm".into(),
        reason: format!("realm {realm:?} is not a URL ({e}); the registry's auth setup is broken"),
    })?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(Error::BadResponse {
            registry: realm.to_string(),
            what: "the token realm".into(),
            reason: format!("realm scheme {:?} is not http or https", url.scheme()),
        });
    }
    crate::destination::check(destinations, &url)?;
    let realm_host = url.host_str().unwrap_or_default().to_string();
    let what = format!("a token for {scope}");

    if let Some(Found::RegistryToken(token)) = creds {
        return Ok(CachedToken {
            token: token.clone(),
            valid_until: Instant::now() + DEFAULT_TOKEN_LIFETIME,
        });
    }
    if let Some(Found::IdentityToken(refresh)) = creds {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", OAUTH_CLIENT_ID),
            ("scope", scope),
        ];
        if let Some(service) = service {
            form.push(("service", service));
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let req = http
            .post(url.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        match token_request("POST", req, timeout, &url, &realm_host, &what).await {
            // Token services without OAuth2 support answer 404/405: fall back to GET.
            Err(Error::NotFound { .. }) => {}
            Err(Error::Server { status: 405, .. }) => {}
            other => return other,
        }
    }

    let mut get_url = url.clone();
    {
        let mut q = get_url.query_pairs_mut();
        if let Some(service) = service {
            q.append_pair("service", service);
        }
        q.append_pair("scope", scope);
    }
    let mut req = http.get(get_url.clone());
    if let Some(value) = creds.and_then(basic_header) {
        req = req.header(http::header::AUTHORIZATION, value);
    }
    token_request("GET", req, timeout, &get_url, &realm_host, &what).await
}

async fn token_request(
    method: &'static str,
    req: reqwest::RequestBuilder,
    timeout: Duration,
    url: &reqwest::Url,
    realm_host: &str,
    what: &str,
) -> Result<CachedToken, Error> {
    let log_url = loggable_url(url);
    let resp = req
        .timeout(timeout)
        .send()
        .await
        .map_err(|source| Error::Transport {
            action: "get a token from",
            url: log_url.clone(),
            source,
        })?;
    let status = resp.status();
    let body = crate::body::read_limited(resp, MAX_TOKEN_RESPONSE, &log_url).await?;
    tracing::debug!(
        %method,
        token = true,
        url = %log_url,
        status = status.as_u16(),
        bytes = body.len(),
        "registry request"
    );
    if !status.is_success() {
        let detail = detail_suffix(&String::from_utf8_lossy(&body[..body.len().min(300)]));
        return Err(crate::body::error_for_status(
            status.as_u16(),
            realm_host.to_string(),
            what.to_string(),
            detail,
        ));
    }
    let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| Error::BadResponse {
        registry: realm_host.to_string(),
        what: what.to_string(),
        reason: format!("the token answer is not the expected JSON ({e})"),
    })?;
    let token = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| Error::BadResponse {
            registry: realm_host.to_string(),
            what: what.to_string(),
            reason: "the token answer has neither `token` nor `access_token`".into(),
        })?;
    let lifetime = match answer.expires_in {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        _ => DEFAULT_TOKEN_LIFETIME,
    };
    // Renew a little early so a token does not expire in flight.
    let margin = (lifetime / 4).min(Duration::from_secs(10));
    Ok(CachedToken {
        token,
        valid_until: Instant::now() + lifetime - margin,
    })
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(form_encode("a b&c=d"), "a+b%26c%3Dd");
    }

    #[test]
    fn headers_are_sensitive() {
        let h = basic_header(&Found::Basic {
            username: "u".into(),
            password: "p".into(),
        })
        .unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Basic dTpw");
        assert!(bearer_header("tok").unwrap().is_sensitive());
        assert!(bearer_header("bad\ntoken").is_err());
        assert!(basic_header(&Found::IdentityToken("x".into())).is_none());
    }
}
