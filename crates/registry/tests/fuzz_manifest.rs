//! Fuzzing what the registry client parses from untrusted sources: image documents (OCI and
//! Docker manifests, indexes, manifest lists, configs, as `dfctl image pull` reads them),
//! image references, and whole manifest responses (body, `Content-Type`, `Docker-Content-Digest`)
//! from a local HTTP server, through `RegistryClient::get_manifest`.
//!
//! Inputs are mutations of valid documents (JSON-aware: huge numbers, hostile strings, other
//! types, deep nesting, duplicated entries; and byte-level) and random bytes. Properties: no
//! panic, every failure an `Err`, each case within its time bound, no single allocation over
//! 1 GiB; and what is accepted is consistent: digests round-trip, a reference re-parses to
//! itself, a fetched manifest is exactly the body served and matches every digest it was
//! checked against, a body over the 4 MiB manifest limit is refused.
//!
//! `DRAGONFLY_FUZZ_SECS=60 cargo test --release -p dragonfly-registry --test fuzz_manifest -- --nocapture`
//! runs each target for a minute (see `scripts/bench.sh fuzz`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dragonfly_fuzzkit::{mutate_bytes, mutate_json, mutate_json_text, Fuzz, MeteredAlloc, Rng};
use dragonfly_registry::{
    default_platform, media_types, Digest, ImageConfig, ImageDocument, Reference, RegistryClient,
    RegistryConfig,
};
use serde_json::Value;

#[global_allocator]
static ALLOC: MeteredAlloc = MeteredAlloc::new(dragonfly_fuzzkit::HARD_CAP_DEFAULT);

/// Manifests the fetch target's cases got (the rest were refused).
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

const D1: &str = "sha256:9b2a1c2e6f3a4d5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3";
const D2: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn corpus() -> Vec<Value> {
    let docs = [
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"D1","size":1234,
             "platform":{"architecture":"amd64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"D2","size":1235,
             "platform":{"architecture":"arm","os":"linux","variant":"v7"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"D2","size":566,
             "annotations":{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":"D1"},
             "platform":{"architecture":"unknown","os":"unknown"}}]}"#,
        r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[
            {"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"D1","size":528,
             "platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#,
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"D1","size":1469},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"D2","size":3623807,
              "annotations":{"containerd.io/snapshot/stargz/toc.digest":"D1",
                             "io.containers.estargz.uncompressed-size":"8770048"}},
              {"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"D1","size":120}]}"#,
        r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":7023,"digest":"D1"},
            "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":32654,"digest":"D2"}]}"#,
        r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin"],"Cmd":["sh"]},
            "rootfs":{"type":"layers","diff_ids":["D1","D2"]},
            "history":[{"created":"2024-01-01T00:00:00Z","created_by":"/bin/sh -c #(nop) ADD file"}]}"#,
    ];
    docs.iter()
        .map(|d| serde_json::from_str(&d.replace("D1", D1).replace("D2", D2)).unwrap())
        .collect()
}

const DOC_STRINGS: &[&str] = &[
    media_types::OCI_INDEX,
    media_types::OCI_MANIFEST,
    media_types::DOCKER_MANIFEST,
    media_types::DOCKER_MANIFEST_LIST,
    media_types::DOCKER_MANIFEST_V1_SIGNED,
    "linux",
    "amd64",
    "arm64",
    "v8",
    D1,
    D2,
    "sha512:00",
    "sha256:../../../etc",
];

const DOC_KEYS: &[&str] = &[
    "mediaType",
    "manifests",
    "config",
    "layers",
    "digest",
    "size",
    "platform",
    "annotations",
    "os",
    "architecture",
    "variant",
    "rootfs",
    "diff_ids",
    "schemaVersion",
];

/// A document of at most a little over 4 MiB: what the client and the daemon accept is at
/// most 4 MiB (larger bodies are refused before they are parsed).
fn mutated_document(rng: &mut Rng, corpus: &[Value]) -> Vec<u8> {
    let mut doc = mutated_document_any_size(rng, corpus);
    doc.truncate((4 << 20) + 16);
    doc
}

fn mutated_document_any_size(rng: &mut Rng, corpus: &[Value]) -> Vec<u8> {
    match rng.below(10) {
        0 => {
            let n = rng.small_len(2048);
            dragonfly_fuzzkit::random_bytes(rng, n)
        }
        1 => {
            let mut b = serde_json::to_vec(rng.pick(corpus)).unwrap();
            let others: Vec<Vec<u8>> = corpus.iter().map(|d| d.to_string().into()).collect();
            let others: Vec<&[u8]> = others.iter().map(Vec::as_slice).collect();
            mutate_bytes(rng, &mut b, &[b"\"", b"{", b"[", b"sha256:"], &others, None);
            b
        }
        _ => {
            let mut doc = rng.pick(corpus).clone();
            mutate_json(rng, &mut doc, DOC_STRINGS, DOC_KEYS);
            mutate_json_text(rng, &doc, &[b"\"", b"{", b"["])
        }
    }
}

/// A document is read the way `dfctl image pull` (the daemon's image API) reads one (which
/// asks for one platform; a few are tried here).
fn read_document(bytes: &[u8]) {
    let _ = serde_json::from_slice::<ImageConfig>(bytes);
    let Ok(doc) = ImageDocument::parse(bytes) else {
        return;
    };
    let _ = doc.is_index();
    let names: Vec<String> = doc
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
        .take(8)
        .collect();
    let wants = [
        default_platform(),
        "linux/arm/v7".into(),
        "".into(),
        "//".into(),
    ];
    for want in wants.iter().chain(names.iter()) {
        match doc.for_platform(want) {
            Ok(d) => assert!(d.platform.as_ref().is_some_and(|p| p.matches(want))),
            Err(e) => {
                assert!(e.have.len() <= doc.manifests.len());
                let _ = e.to_string();
            }
        }
    }
    let descriptors = doc
        .manifests
        .iter()
        .chain(doc.config.iter())
        .chain(doc.layers.iter());
    for d in descriptors {
        if let Ok(parsed) = Digest::parse(&d.digest) {
            assert_eq!(parsed.to_string(), d.digest, "a digest round-trips");
        }
    }
}

/// Image documents, mutated.
#[test]
fn fuzz_document() {
    let corpus = corpus();
    Fuzz::new("document")
        .cases(2000)
        .memory(64 << 20)
        .run(|rng| mutated_document(rng, &corpus), read_document);
}

/// Image references, mutated: a reference that parses prints as one that parses to itself.
#[test]
fn fuzz_reference() {
    let valid: &[&[u8]] = &[
        b"busybox",
        b"docker.io/library/busybox:1.36",
        b"ghcr.io/org/team/app:v1.2.3",
        b"localhost:5000/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        b"[::1]:5000/a/b:t@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        b"registry-1.docker.io/x/y",
        b"127.0.0.1:5101/bench/python:gzip",
    ];
    let dict: &[&[u8]] = &[
        b":",
        b"@",
        b"/",
        b"sha256:",
        b"docker.io",
        b"index.docker.io",
        b"localhost",
        b"..",
        b"library/",
        b"[::1]",
        b":65536",
        b"%2e",
    ];
    Fuzz::new("reference").cases(20_000).memory(1 << 20).run(
        |rng| {
            if rng.chance(0.1) {
                let n = rng.small_len(300);
                return dragonfly_fuzzkit::random_bytes(rng, n);
            }
            let mut r = rng.pick(valid).to_vec();
            mutate_bytes(rng, &mut r, dict, valid, None);
            r
        },
        |bytes| {
            let text = String::from_utf8_lossy(bytes);
            let Ok(r) = text.parse::<Reference>() else {
                return;
            };
            let printed = r.to_string();
            let again: Reference = printed.parse().unwrap_or_else(|e| {
                panic!("{text:?} parsed, but its form {printed:?} does not: {e}")
            });
            assert_eq!(again, r, "{text:?} → {printed:?} re-parses to itself");
            assert!(!r.manifest_reference().is_empty());
            let _ = r.repo().to_string();
        },
    );
}

/// What the local registry answers with.
#[derive(Default, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// A fuzz case of the manifest fetch, as bytes: flags, the two headers, the body.
struct FetchCase {
    /// Bit 0: the reference has a digest; bit 1: it is the body's; bit 2: status 200 (else
    /// a 4xx); bit 3: the `Docker-Content-Digest` is the body's.
    flags: u8,
    content_type: Option<Vec<u8>>,
    dcd: Option<Vec<u8>>,
    body: Vec<u8>,
}

fn put_field(out: &mut Vec<u8>, field: &Option<Vec<u8>>) {
    match field {
        None => out.extend_from_slice(&u16::MAX.to_le_bytes()),
        Some(f) => {
            out.extend_from_slice(&(f.len() as u16).to_le_bytes());
            out.extend_from_slice(f);
        }
    }
}

fn take_field(input: &mut &[u8]) -> Option<Option<Vec<u8>>> {
    let len = u16::from_le_bytes(input.get(..2)?.try_into().ok()?);
    *input = &input[2..];
    if len == u16::MAX {
        return Some(None);
    }
    let f = input.get(..len as usize)?.to_vec();
    *input = &input[len as usize..];
    Some(Some(f))
}

impl FetchCase {
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.flags];
        put_field(&mut out, &self.content_type);
        put_field(&mut out, &self.dcd);
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(input: &[u8]) -> FetchCase {
        let mut rest = &input[1..];
        let content_type = take_field(&mut rest).unwrap();
        let dcd = take_field(&mut rest).unwrap();
        FetchCase {
            flags: input[0],
            content_type,
            dcd,
            body: rest.to_vec(),
        }
    }
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Whole manifest responses: mutated documents, sometimes over the 4 MiB limit, with every
/// kind of `Content-Type` and `Docker-Content-Digest`, fetched by tag or by digest.
#[test]
fn fuzz_manifest_fetch() {
    let corpus = corpus();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = Arc::new(Mutex::new(Answer::default()));
    let port = {
        let answer = Arc::clone(&answer);
        rt.block_on(async move {
            let app = axum::Router::new().fallback(move || {
                let a = answer.lock().unwrap().clone();
                async move {
                    let mut resp = axum::response::Response::new(axum::body::Body::from(a.body));
                    *resp.status_mut() = http::StatusCode::from_u16(a.status).unwrap();
                    for (k, v) in a.headers {
                        if let (Ok(k), Ok(v)) = (
                            http::HeaderName::from_bytes(k.as_bytes()),
                            http::HeaderValue::from_bytes(&v),
                        ) {
                            resp.headers_mut().insert(k, v);
                        }
                    }
                    resp
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            port
        })
    };
    let client = RegistryClient::new(RegistryConfig {
        max_retries: 0,
        request_timeout_secs: 5,
        connect_timeout_secs: 2,
        docker_config: Some("/nonexistent/dragonfly-fuzz/config.json".into()),
        ..RegistryConfig::default()
    })
    .unwrap();
    let content_types: &[&[u8]] = &[
        media_types::OCI_MANIFEST.as_bytes(),
        media_types::OCI_INDEX.as_bytes(),
        media_types::DOCKER_MANIFEST.as_bytes(),
        media_types::DOCKER_MANIFEST_V1_SIGNED.as_bytes(),
        b"application/octet-stream",
        b"text/plain; charset=utf-8",
        b"application/json;;;",
        b";",
        b"",
    ];
    Fuzz::new("manifest-fetch").cases(600).memory(96 << 20).run(
        |rng| {
            let body = if rng.chance(0.03) {
                vec![b' '; (4 << 20) + rng.below(3)]
            } else {
                mutated_document(rng, &corpus)
            };
            let mut content_type = match rng.below(4) {
                0 => None,
                _ => Some(rng.pick(content_types).to_vec()),
            };
            if let Some(ct) = content_type.as_mut().filter(|_| rng.chance(0.2)) {
                mutate_bytes(rng, ct, &[b";", b"+json"], &[], None);
            }
            let dcd = match rng.below(4) {
                0 => None,
                1 => Some(D1.as_bytes().to_vec()),
                2 => Some(b"sha256:nothex".to_vec()),
                _ => Some(Vec::new()),
            };
            let flags = (rng.next_u64() as u8) | if rng.chance(0.8) { 4 } else { 0 };
            FetchCase {
                flags,
                content_type,
                dcd,
                body,
            }
            .encode()
        },
        |input| {
            let case = FetchCase::decode(input);
            let body_digest = sha256(&case.body);
            let dcd = if case.flags & 8 != 0 {
                Some(body_digest.clone().into_bytes())
            } else {
                case.dcd.clone()
            };
            let mut headers = Vec::new();
            if let Some(ct) = &case.content_type {
                headers.push(("content-type".to_string(), ct.clone()));
            }
            if let Some(d) = &dcd {
                headers.push(("docker-content-digest".to_string(), d.clone()));
            }
            let status = if case.flags & 4 != 0 { 200 } else { 404 };
            *answer.lock().unwrap() = Answer {
                status,
                headers,
                body: case.body.clone(),
            };
            let wanted = match (case.flags & 1 != 0, case.flags & 2 != 0) {
                (false, _) => None,
                (true, true) => Some(body_digest.clone()),
                (true, false) => Some(D2.to_string()),
            };
            let text = match &wanted {
                Some(d) => format!("127.0.0.1:{port}/fuzz/app@{d}"),
                None => format!("127.0.0.1:{port}/fuzz/app:t"),
            };
            let r: Reference = text.parse().unwrap();
            let got = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), client.get_manifest(&r, &[])).await
            });
            let got = got.expect("get_manifest answers within 20 s");
            let Ok(m) = got else {
                return;
            };
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
            assert_eq!(status, 200, "only a 200 gives a manifest");
            assert!(case.body.len() <= 4 << 20, "a body over 4 MiB was accepted");
            assert_eq!(&m.bytes[..], &case.body[..], "the manifest is the body");
            assert_eq!(m.digest, wanted.unwrap_or(body_digest.clone()));
            assert_eq!(m.digest, body_digest, "the digest is the body's");
            assert!(!m.media_type.is_empty());
            if let Some(d) = dcd
                .as_deref()
                .and_then(|d| std::str::from_utf8(d).ok())
                .filter(|d| Digest::parse(d).is_ok())
            {
                assert!(
                    d == body_digest || m.media_type == media_types::DOCKER_MANIFEST_V1_SIGNED,
                    "a Docker-Content-Digest of another body was accepted"
                );
            }
            read_document(&m.bytes);
        },
    );
    println!(
        "fuzz manifest-fetch: reached: {} manifests accepted",
        ACCEPTED.load(Ordering::Relaxed)
    );
}
