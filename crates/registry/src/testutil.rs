//! Test harness: a real `docker-registry` process per test (plain, htpasswd or token auth,
//! optional redirect of blob reads to a storage server), a token issuer that signs RS256 JWTs
//! the registry verifies, a storage server that serves the registry's files (with Range), and
//! helpers to push blobs and manifests over plain HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use openssl::pkey::{PKey, Private};

use crate::digest::sha256_of;

pub(crate) const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn b64(data: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn b64url(data: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// How the registry authenticates.
#[derive(Clone)]
pub(crate) enum AuthMode {
    None,
    /// htpasswd users (name, password).
    Htpasswd(Vec<(String, String)>),
    /// Token auth against `issuer`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        cert_pem: Vec<u8>,
    },
}

/// Options for [`TestRegistry::start`].
#[derive(Clone)]
pub(crate) struct RegistryOptions {
    pub(crate) auth: AuthMode,
    /// Redirect blob reads to this base URL (the storage server).
    pub(crate) redirect_to: Option<String>,
    /// Let the registry cache blob descriptors in memory (sizes survive on-disk truncation).
    pub(crate) descriptor_cache: bool,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            auth: AuthMode::None,
            redirect_to: None,
            descriptor_cache: false,
        }
    }
}

/// A running `docker-registry`, killed on drop.
pub(crate) struct TestRegistry {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) port: u16,
    child: Option<Child>,
    /// Authorization header value for pushes.
    pub(crate) push_auth: Option<String>,
}

impl TestRegistry {
    pub(crate) async fn start(opts: RegistryOptions) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = TestRegistry {
            dir,
            port: 0,
            child: None,
            push_auth: None,
        };
        reg.write_config(&opts, free_port());
        for _ in 0..5 {
            if reg.spawn().await {
                return reg;
            }
            // Port taken by someone else meanwhile: try another.
            reg.write_config(&opts, free_port());
        }
        panic!(
            "docker-registry did not start; see {}",
            reg.log_path().display()
        );
    }

    fn write_config(&mut self, opts: &RegistryOptions, port: u16) {
        self.port = port;
        let root = self.dir.path().join("data");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n",
            root.display()
        );
        if opts.descriptor_cache {
            yaml.push_str("  cache:\n    blobdescriptor: inmemory\n");
        }
        yaml.push_str(&format!(
            "http:\n  addr: 127.0.0.1:{port}\n  secret: test-secret\n"
        ));
        if let Some(base) = &opts.redirect_to {
            yaml.push_str(&format!(
                "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {base}\n"
            ));
        }
        match &opts.auth {
            AuthMode::None => {}
            AuthMode::Htpasswd(users) => {
                let path = self.dir.path().join("htpasswd");
                let lines: String = users
                    .iter()
                    .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
                    .collect();
                std::fs::write(&path, lines).unwrap();
                yaml.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                    path.display()
                ));
                let (u, p) = &users[0];
                self.push_auth = Some(format!("Basic {}", b64(format!("{u}:{p}"))));
            }
            AuthMode::Token {
                realm,
                service,
                issuer,
                cert_pem,
            } => {
                let path = self.dir.path().join("token-ca.pem");
                std::fs::write(&path, cert_pem).unwrap();
                yaml.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                    path.display()
                ));
            }
        }
        std::fs::write(self.dir.path().join("config.yml"), yaml).unwrap();
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Starts the process and waits until it answers; false if it exited (port taken).
    async fn spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start /usr/bin/docker-registry (apt-get install docker-registry)");
        self.child = Some(child);
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/v2/", self.port);
        for _ in 0..400 {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                eprintln!("docker-registry exited with {status}");
                self.child = None;
                return false;
            }
            if let Ok(resp) = http
                .get(&url)
                .timeout(Duration::from_millis(500))
                .send()
                .await
            {
                if resp.status() == 200 || resp.status() == 401 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// Kills the registry process (the data stays).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port with the same data.
    pub(crate) async fn restart(&mut self) {
        self.stop();
        assert!(self.spawn().await, "docker-registry did not restart");
    }

    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn access_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Where the registry keeps a blob's bytes.
    pub(crate) fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub(crate) fn storage_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn with_auth(
        &self,
        req: reqwest::RequestBuilder,
        auth: Option<&str>,
    ) -> reqwest::RequestBuilder {
        match auth.map(str::to_string).or(self.push_auth.clone()) {
            Some(value) => req.header("Authorization", value),
            None => req,
        }
    }

    /// Monolithic upload of `data`; returns its digest.
    pub(crate) async fn push_blob(&self, repo: &str, data: &[u8], auth: Option<&str>) -> String {
        let http = reqwest::Client::new();
        let digest = sha256_of(data);
        let url = format!("http://{}/v2/{repo}/blobs/uploads/", self.host());
        let resp = self.with_auth(http.post(&url), auth).send().await.unwrap();
        assert_eq!(
            resp.status(),
            202,
            "start upload: {}",
            resp.text().await.unwrap()
        );
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let mut put = reqwest::Url::parse(&location)
            .or_else(|_| reqwest::Url::parse(&url).unwrap().join(&location))
            .unwrap();
        put.query_pairs_mut().append_pair("digest", &digest);
        let resp = self
            .with_auth(http.put(put), auth)
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            201,
            "finish upload: {}",
            resp.text().await.unwrap()
        );
        digest
    }

    /// PUTs a manifest under `reference` (tag or digest); returns its digest.
    pub(crate) async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
        auth: Option<&str>,
    ) -> String {
        let http = reqwest::Client::new();
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.host());
        let resp = self
            .with_auth(http.put(url), auth)
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            201,
            "push manifest: {}",
            resp.text().await.unwrap()
        );
        sha256_of(body)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An image pushed to a registry: config, two layers and an OCI and a Docker manifest.
pub(crate) struct PushedImage {
    pub(crate) layer: Vec<u8>,
    pub(crate) layer_digest: String,
    pub(crate) oci_manifest: Vec<u8>,
    pub(crate) oci_digest: String,
    pub(crate) docker_manifest: Vec<u8>,
    pub(crate) docker_digest: String,
}

/// Deterministic, non-repeating test bytes.
pub(crate) fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Pushes a small image (tag `oci` = OCI manifest, tag `docker` = Docker schema 2).
pub(crate) async fn push_image(reg: &TestRegistry, repo: &str, layer_len: usize) -> PushedImage {
    use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType};
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = test_bytes(layer_len, layer_len as u64);
    let config_digest = reg.push_blob(repo, config, None).await;
    let layer_digest = reg.push_blob(repo, &layer, None).await;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageConfig)
                .digest(config_digest.parse::<oci_spec::image::Digest>().unwrap())
                .size(config.len() as u64)
                .build()
                .unwrap(),
        )
        .layers(vec![DescriptorBuilder::default()
            .media_type(MediaType::ImageLayerGzip)
            .digest(layer_digest.parse::<oci_spec::image::Digest>().unwrap())
            .size(layer.len() as u64)
            .build()
            .unwrap()])
        .build()
        .unwrap();
    let oci_manifest = serde_json::to_vec(&manifest).unwrap();
    let oci_digest = reg
        .push_manifest(
            repo,
            "oci",
            crate::media_types::OCI_MANIFEST,
            &oci_manifest,
            None,
        )
        .await;
    let docker_manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::media_types::DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_digest},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": layer.len(), "digest": layer_digest}]
    }))
    .unwrap();
    let docker_digest = reg
        .push_manifest(
            repo,
            "docker",
            crate::media_types::DOCKER_MANIFEST,
            &docker_manifest,
            None,
        )
        .await;
    PushedImage {
        layer,
        layer_digest,
        oci_manifest,
        oci_digest,
        docker_manifest,
        docker_digest,
    }
}

// ---------------------------------------------------------------------------------------------
// Token issuer

/// Signing material of the token issuer.
pub(crate) struct SigningKey {
    key: PKey<Private>,
    cert_der_b64: String,
    pub(crate) cert_pem: Vec<u8>,
}

impl SigningKey {
    pub(crate) fn generate() -> SigningKey {
        use openssl::asn1::Asn1Time;
        use openssl::bn::BigNum;
        use openssl::hash::MessageDigest;
        use openssl::rsa::Rsa;
        use openssl::x509::{X509Builder, X509NameBuilder};

        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "dragonfly-test-token-issuer")
            .unwrap();
        let name = name.build();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(now - 3600).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        SigningKey {
            cert_der_b64: b64(cert.to_der().unwrap()),
            cert_pem: cert.to_pem().unwrap(),
            key,
        }
    }

    /// An RS256 JWT granting `scopes` (`repository:<name>:<actions>`, space separated).
    pub(crate) fn sign(&self, issuer: &str, audience: &str, scopes: &str, lifetime: u64) -> String {
        use openssl::hash::MessageDigest;
        use openssl::sign::Signer;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<serde_json::Value> = scopes
            .split(' ')
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.cert_der_b64]});
        let claims = serde_json::json!({
            "iss": issuer, "sub": "tester", "aud": audience,
            "exp": now + lifetime, "nbf": now - 5, "iat": now,
            "jti": format!("{now}-{}", test_bytes(4, now)[0]),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(serde_json::to_vec(&header).unwrap()),
            b64url(serde_json::to_vec(&claims).unwrap())
        );
        let mut signer = Signer::new(MessageDigest::sha256(), &self.key).unwrap();
        signer.update(input.as_bytes()).unwrap();
        format!("{input}.{}", b64url(signer.sign_to_vec().unwrap()))
    }
}

/// Behaviour and counters of the token issuer.
pub(crate) struct IssuerState {
    pub(crate) key: SigningKey,
    pub(crate) issuer: String,
    pub(crate) service: String,
    /// Users allowed to pull; anonymous callers get a token without access.
    pub(crate) users: Vec<(String, String)>,
    /// Refresh tokens accepted by the OAuth2 POST.
    pub(crate) refresh_tokens: Vec<String>,
    pub(crate) lifetime: u64,
    /// This many tokens are issued for the wrong audience first (the registry refuses them).
    pub(crate) bad_tokens_first: AtomicUsize,
    pub(crate) gets: AtomicUsize,
    pub(crate) posts: AtomicUsize,
    /// Scopes asked for, in order.
    pub(crate) scopes: Mutex<Vec<String>>,
}

/// A token issuer on loopback.
pub(crate) struct TokenIssuer {
    pub(crate) state: Arc<IssuerState>,
    pub(crate) port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenIssuer {
    pub(crate) async fn start(
        users: Vec<(String, String)>,
        refresh_tokens: Vec<String>,
        lifetime: u64,
    ) -> TokenIssuer {
        let state = Arc::new(IssuerState {
            key: SigningKey::generate(),
            issuer: "dragonfly-test-issuer".into(),
            service: "dragonfly-test-registry".into(),
            users,
            refresh_tokens,
            lifetime,
            bad_tokens_first: AtomicUsize::new(0),
            gets: AtomicUsize::new(0),
            posts: AtomicUsize::new(0),
            scopes: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token_get).post(token_post))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TokenIssuer { state, port, task }
    }

    pub(crate) fn auth_mode(&self) -> AuthMode {
        AuthMode::Token {
            realm: format!("http://127.0.0.1:{}/token", self.port),
            service: self.state.service.clone(),
            issuer: self.state.issuer.clone(),
            cert_pem: self.state.key.cert_pem.clone(),
        }
    }

    /// `Authorization` value for pushing to `repo` directly.
    pub(crate) fn push_auth(&self, repo: &str) -> String {
        let token = self.state.key.sign(
            &self.state.issuer,
            &self.state.service,
            &format!("repository:{repo}:pull,push"),
            300,
        );
        format!("Bearer {token}")
    }
}

impl IssuerState {
    fn issue(&self, scope: &str) -> String {
        self.scopes.lock().unwrap().push(scope.to_string());
        let audience = if self
            .bad_tokens_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            "some-other-service"
        } else {
            &self.service
        };
        self.key.sign(&self.issuer, audience, scope, self.lifetime)
    }
}

async fn token_get(
    State(state): State<Arc<IssuerState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    state.gets.fetch_add(1, Ordering::SeqCst);
    if query.get("service") != Some(&state.service) {
        return (StatusCode::BAD_REQUEST, "wrong service").into_response();
    }
    let scope = query.get("scope").cloned().unwrap_or_default();
    let granted = match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(value) => {
            let decoded = value
                .strip_prefix("Basic ")
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let ok = state
                .users
                .iter()
                .any(|(u, p)| decoded == format!("{u}:{p}"));
            if !ok {
                return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
            }
            scope
        }
        None if state.users.is_empty() => scope,
        // Anonymous: a valid token without access, like a hub for a private repository.
        None => String::new(),
    };
    let token = state.issue(&granted);
    // Alternate the field name to cover both spellings.
    let body = if state.gets.load(Ordering::SeqCst) % 2 == 0 {
        serde_json::json!({"access_token": token, "expires_in": state.lifetime})
    } else {
        serde_json::json!({"token": token, "expires_in": state.lifetime})
    };
    axum::Json(body).into_response()
}

async fn token_post(State(state): State<Arc<IssuerState>>, body: String) -> Response {
    state.posts.fetch_add(1, Ordering::SeqCst);
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), url_decode(v)))
        .collect();
    if form.get("grant_type").map(String::as_str) != Some("refresh_token")
        || form.get("service") != Some(&state.service)
        || !form
            .get("refresh_token")
            .is_some_and(|t| state.refresh_tokens.contains(t))
    {
        return (StatusCode::UNAUTHORIZED, "bad refresh token").into_response();
    }
    let token = state.issue(form.get("scope").map(String::as_str).unwrap_or_default());
    axum::Json(serde_json::json!({"access_token": token, "expires_in": state.lifetime}))
        .into_response()
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("3F");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Storage server (redirect target)

/// What the storage server saw and how it misbehaves.
#[derive(Default)]
pub(crate) struct StorageState {
    pub(crate) root: Mutex<PathBuf>,
    /// Answer 200 with the whole file even when a Range is asked for.
    pub(crate) ignore_range: std::sync::atomic::AtomicBool,
    /// Answer HEAD with 405 Method Not Allowed.
    pub(crate) refuse_head: std::sync::atomic::AtomicBool,
    /// Answer this many requests with 503 first.
    pub(crate) fail_next: AtomicUsize,
    pub(crate) requests: AtomicUsize,
    /// Every request's headers, by name (lower case).
    pub(crate) seen_headers: Mutex<Vec<HeaderMap>>,
}

/// An HTTP server serving a registry's storage directory, as blob storage behind redirects.
pub(crate) struct StorageServer {
    pub(crate) state: Arc<StorageState>,
    pub(crate) port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StorageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StorageServer {
    pub(crate) async fn start() -> StorageServer {
        let state = Arc::new(StorageState::default());
        let app = axum::Router::new()
            .fallback(storage_handler)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        StorageServer { state, port, task }
    }

    /// Base URL on a different host name than the registry's 127.0.0.1.
    pub(crate) fn base_url(&self) -> String {
        format!("http://localhost:{}", self.port)
    }

    pub(crate) fn set_root(&self, root: &Path) {
        *self.state.root.lock().unwrap() = root.to_path_buf();
    }
}

async fn storage_handler(
    State(state): State<Arc<StorageState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    state.seen_headers.lock().unwrap().push(headers.clone());
    if state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "storage flapping").into_response();
    }
    if method == Method::HEAD && state.refuse_head.load(Ordering::SeqCst) {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if uri.path().contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let path = state
        .root
        .lock()
        .unwrap()
        .join(uri.path().trim_start_matches('/'));
    let Ok(data) = std::fs::read(&path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let total = data.len() as u64;
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    let head = method == Method::HEAD;
    match range {
        Some((a, b)) if !state.ignore_range.load(Ordering::SeqCst) => {
            if a >= total || a > b {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [("content-range", format!("bytes */{total}"))],
                )
                    .into_response();
            }
            let b = b.min(total - 1);
            let body = if head {
                Vec::new()
            } else {
                data[a as usize..=b as usize].to_vec()
            };
            (
                StatusCode::PARTIAL_CONTENT,
                [
                    ("content-range", format!("bytes {a}-{b}/{total}")),
                    ("content-length", (b - a + 1).to_string()),
                ],
                body,
            )
                .into_response()
        }
        _ => {
            let body = if head { Vec::new() } else { data };
            (
                StatusCode::OK,
                [("content-length", total.to_string())],
                body,
            )
                .into_response()
        }
    }
}
