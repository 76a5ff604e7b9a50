//! Tests of the client against a real `docker-registry` process (plain, htpasswd and token
//! auth, redirects to storage, mirrors, outages and corrupted storage).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::*;
use crate::config::{Credential, Mirror};
use crate::testutil::*;
use crate::{media_types, DestinationCheck, MAX_WHOLE_BODY_FOR_RANGE};

/// A client with small, test-friendly retry delays.
fn client_with(f: impl FnOnce(&mut RegistryConfig)) -> RegistryClient {
    let mut config = RegistryConfig {
        max_retries: 2,
        retry_base_delay_ms: 20,
        request_timeout_secs: 10,
        connect_timeout_secs: 2,
        // Never read the invoking user's docker config.
        docker_config: Some("/nonexistent/dragonfly-test/config.json".into()),
        ..Default::default()
    };
    f(&mut config);
    RegistryClient::new(config).unwrap()
}

fn client() -> RegistryClient {
    client_with(|_| {})
}

fn repo(reg: &TestRegistry, name: &str) -> Repository {
    Repository {
        registry: reg.host(),
        repository: name.into(),
    }
}

fn reference(text: &str) -> Reference {
    text.parse().unwrap()
}

async fn collect(mut stream: BlobStream) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn basic_creds(user: &str, pass: &str) -> Credential {
    Credential::Basic {
        username: user.into(),
        password: pass.into(),
    }
}

#[tokio::test]
async fn manifests_in_oci_and_docker_media_types() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    let img = push_image(&reg, "team/app", 3000).await;
    let c = client();
    let host = reg.host();

    let m = c
        .get_manifest(&reference(&format!("{host}/team/app:oci")), &[])
        .await
        .unwrap();
    assert_eq!(m.bytes, img.oci_manifest);
    assert_eq!(m.media_type, media_types::OCI_MANIFEST);
    assert_eq!(m.digest, img.oci_digest);

    let m = c
        .get_manifest(&reference(&format!("{host}/team/app:docker")), &[])
        .await
        .unwrap();
    assert_eq!(m.bytes, img.docker_manifest);
    assert_eq!(m.media_type, media_types::DOCKER_MANIFEST);
    assert_eq!(m.digest, img.docker_digest);

    // By digest (verified), with a tag that is ignored in favour of the digest.
    let by_digest = reference(&format!("{host}/team/app:docker@{}", img.oci_digest));
    let m = c
        .get_manifest(&by_digest, &[media_types::OCI_MANIFEST])
        .await
        .unwrap();
    assert_eq!(m.bytes, img.oci_manifest);
    assert_eq!(m.digest, img.oci_digest);

    // Content negotiation: the registry will not hand an OCI manifest to a Docker-only client.
    let err = c
        .get_manifest(
            &reference(&format!("{host}/team/app:oci")),
            &[media_types::DOCKER_MANIFEST],
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");

    for missing in [
        format!("{host}/team/app:nope"),
        format!("{host}/team/other:oci"),
        format!("{host}/team/app@sha256:{}", "0".repeat(64)),
    ] {
        let err = c.get_manifest(&reference(&missing), &[]).await.unwrap_err();
        assert!(err.is_not_found(), "{missing}: {err}");
        assert!(!err.is_retryable());
        assert!(
            err.to_string().contains("check the image reference"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn blob_size_ranges_and_stream() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    let img = push_image(&reg, "lib/blobs", 100_000).await;
    let c = client();
    let r = repo(&reg, "lib/blobs");
    let d = &img.layer_digest;
    let len = img.layer.len() as u64;

    assert_eq!(c.blob_size(&r, d).await.unwrap(), len);
    for range in [0..1, len - 1..len, 1234..56_789, 0..len, 99_000..len] {
        let got = c.get_blob_range(&r, d, range.clone()).await.unwrap();
        assert_eq!(
            &got[..],
            &img.layer[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    assert!(c.get_blob_range(&r, d, 5..5).await.unwrap().is_empty());
    #[allow(clippy::reversed_empty_ranges)]
    let err = c.get_blob_range(&r, d, 6..5).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRange { .. }), "{err}");

    let stream = c.get_blob(&r, d).await.unwrap();
    assert_eq!(stream.content_length(), Some(len));
    assert_eq!(collect(stream).await.unwrap(), img.layer);

    // Past the end: the registry answers 416, partly past the end it clamps the range.
    let err = c.get_blob_range(&r, d, len..len + 10).await.unwrap_err();
    assert!(
        matches!(err, Error::RangeNotSatisfiable { size: Some(s), .. } if s == len),
        "{err}"
    );
    let err = c
        .get_blob_range(&r, d, len - 10..len + 10)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadResponse { .. }), "{err}");
    assert!(err.to_string().contains("wrong offset"), "{err}");

    // Unknown blob, unknown repository, malformed digest.
    let unknown = format!("sha256:{}", "1".repeat(64));
    assert!(c.blob_size(&r, &unknown).await.unwrap_err().is_not_found());
    assert!(c
        .get_blob_range(&r, &unknown, 0..10)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(c.get_blob(&r, &unknown).await.unwrap_err().is_not_found());
    let asked = reg
        .access_log()
        .lines()
        .filter(|l| l.contains(&format!("\"GET /v2/lib/blobs/blobs/{unknown}")))
        .count();
    assert_eq!(
        asked, 2,
        "a 404 is not retried (one ranged GET, one whole GET)"
    );
    let other = repo(&reg, "lib/nothing-here");
    assert!(c.blob_size(&other, d).await.unwrap_err().is_not_found());
    assert!(c
        .get_blob_range(&other, d, 0..10)
        .await
        .unwrap_err()
        .is_not_found());
    let err = c
        .get_blob_range(&r, "sha256:../../etc", 0..1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidDigest { .. }), "{err}");
    let bad_repo = Repository {
        registry: reg.host(),
        repository: "../v2".into(),
    };
    assert!(matches!(
        c.blob_size(&bad_repo, d).await.unwrap_err(),
        Error::InvalidReference { .. }
    ));
}

#[tokio::test]
async fn basic_auth_from_config_and_docker_config() {
    let users = vec![("alice".to_string(), "wonder:land".to_string())];
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Htpasswd(users),
        ..Default::default()
    })
    .await;
    let data = test_bytes(5000, 7);
    let digest = reg.push_blob("private/app", &data, None).await;
    let r = repo(&reg, "private/app");

    let err = client()
        .get_blob_range(&r, &digest, 0..10)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("docker config.json"), "{err}");

    let wrong = client_with(|c| {
        c.credentials
            .insert(reg.host(), basic_creds("alice", "nope"));
    });
    let err = wrong.blob_size(&r, &digest).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");

    let good = client_with(|c| {
        c.credentials
            .insert(reg.host(), basic_creds("alice", "wonder:land"));
    });
    assert_eq!(good.blob_size(&r, &digest).await.unwrap(), 5000);
    assert_eq!(
        &good.get_blob_range(&r, &digest, 10..20).await.unwrap()[..],
        &data[10..20]
    );

    // The same credentials from a docker config.json, in both of its spellings.
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "alice:wonder:land",
    );
    for entry in [
        serde_json::json!({"auth": auth}),
        serde_json::json!({"username": "alice", "password": "wonder:land"}),
    ] {
        let path = dir.path().join("config.json");
        let file = serde_json::json!({"auths": {format!("http://{}", reg.host()): entry}});
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let from_file = client_with(|c| c.docker_config = Some(path.clone()));
        let got = collect(from_file.get_blob(&r, &digest).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got, data);
    }
}

/// A registry with token auth and the issuer it trusts.
async fn token_registry(
    users: Vec<(String, String)>,
    refresh: Vec<String>,
    lifetime: u64,
) -> (TokenIssuer, TestRegistry) {
    let issuer = TokenIssuer::start(users, refresh, lifetime).await;
    let mut reg = TestRegistry::start(RegistryOptions {
        auth: issuer.auth_mode(),
        ..Default::default()
    })
    .await;
    reg.push_auth = None;
    (issuer, reg)
}

#[tokio::test]
async fn bearer_tokens_are_fetched_cached_and_refreshed() {
    let (issuer, reg) = token_registry(vec![("bob".into(), "builder".into())], vec![], 300).await;
    let data = test_bytes(4096, 3);
    let digest = reg
        .push_blob("org/app", &data, Some(&issuer.push_auth("org/app")))
        .await;
    reg.push_blob("org/other", &data, Some(&issuer.push_auth("org/other")))
        .await;
    let r = repo(&reg, "org/app");
    let st = &issuer.state;

    // Anonymous: the issuer hands out tokens without access, the registry refuses them
    // (one token acquired, refreshed once, then the error).
    let err = client()
        .get_blob_range(&r, &digest, 0..4)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("insufficient_scope"), "{err}");
    assert_eq!(st.gets.load(Ordering::SeqCst), 2);

    // Wrong password: the token service refuses.
    let wrong = client_with(|c| {
        c.credentials.insert(reg.host(), basic_creds("bob", "x"));
    });
    let err = wrong.blob_size(&r, &digest).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");

    st.gets.store(0, Ordering::SeqCst);
    st.scopes.lock().unwrap().clear();
    let c = client_with(|c| {
        c.credentials
            .insert(reg.host(), basic_creds("bob", "builder"));
    });
    assert_eq!(c.blob_size(&r, &digest).await.unwrap(), 4096);
    assert_eq!(
        &c.get_blob_range(&r, &digest, 100..200).await.unwrap()[..],
        &data[100..200]
    );
    assert_eq!(
        collect(c.get_blob(&r, &digest).await.unwrap())
            .await
            .unwrap(),
        data
    );
    // Concurrent reads share the cached token.
    let reads = (0..8).map(|i| c.get_blob_range(&r, &digest, i * 10..i * 10 + 10));
    for got in futures::future::join_all(reads).await {
        assert_eq!(got.unwrap().len(), 10);
    }
    assert_eq!(st.gets.load(Ordering::SeqCst), 1, "one token for one scope");
    assert_eq!(st.scopes.lock().unwrap()[0], "repository:org/app:pull");

    // Another repository is another scope: fetched up front, without a 401 first.
    let other = repo(&reg, "org/other");
    assert_eq!(c.blob_size(&other, &digest).await.unwrap(), 4096);
    assert_eq!(st.gets.load(Ordering::SeqCst), 2);
    assert_eq!(st.scopes.lock().unwrap()[1], "repository:org/other:pull");

    // A refused token is refreshed once...
    st.bad_tokens_first.store(1, Ordering::SeqCst);
    let fresh = client_with(|c| {
        c.credentials
            .insert(reg.host(), basic_creds("bob", "builder"));
    });
    assert_eq!(fresh.blob_size(&r, &digest).await.unwrap(), 4096);
    assert_eq!(st.gets.load(Ordering::SeqCst), 4);
    // ...and only once.
    st.bad_tokens_first.store(100, Ordering::SeqCst);
    let stubborn = client_with(|c| {
        c.credentials
            .insert(reg.host(), basic_creds("bob", "builder"));
    });
    let err = stubborn.blob_size(&r, &digest).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert_eq!(st.gets.load(Ordering::SeqCst), 6);
    st.bad_tokens_first.store(0, Ordering::SeqCst);

    // A bearer token given as it is (an `Authorization: Bearer …` header, docker's
    // `registrytoken`): answers the registry's challenge without the token service.
    st.gets.store(0, Ordering::SeqCst);
    let given = issuer.push_auth("org/app");
    let static_token = client_with(|c| {
        c.credentials
            .insert(reg.host(), Credential::from_authorization(&given).unwrap());
    });
    assert_eq!(static_token.blob_size(&r, &digest).await.unwrap(), 4096);
    assert_eq!(st.gets.load(Ordering::SeqCst), 0, "no token was fetched");

    // A manifest read through the same flow.
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": data.len(), "digest": digest},
        "layers": []
    }))
    .unwrap();
    let mdigest = reg
        .push_manifest(
            "org/app",
            "v1",
            media_types::OCI_MANIFEST,
            &manifest,
            Some(&issuer.push_auth("org/app")),
        )
        .await;
    let m = c
        .get_manifest(&reference(&format!("{}/org/app:v1", reg.host())), &[])
        .await
        .unwrap();
    assert_eq!(m.digest, mdigest);
}

#[tokio::test]
async fn expired_tokens_are_renewed_and_identity_tokens_use_oauth2() {
    let (issuer, reg) = token_registry(vec![], vec!["refresh-me".into()], 1).await;
    let data = test_bytes(1000, 11);
    let digest = reg
        .push_blob("id/app", &data, Some(&issuer.push_auth("id/app")))
        .await;
    let r = repo(&reg, "id/app");
    let st = &issuer.state;

    // Identity token from docker config.json: exchanged with a refresh-token POST.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let file = serde_json::json!({"auths": {reg.host(): {"identitytoken": "refresh-me"}}});
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let c = client_with(|c| c.docker_config = Some(path.clone()));
    assert_eq!(
        &c.get_blob_range(&r, &digest, 0..10).await.unwrap()[..],
        &data[..10]
    );
    assert_eq!(st.posts.load(Ordering::SeqCst), 1);
    assert_eq!(st.gets.load(Ordering::SeqCst), 0);
    c.get_blob_range(&r, &digest, 10..20).await.unwrap();
    assert_eq!(st.posts.load(Ordering::SeqCst), 1, "cached while valid");
    // The token lives 1 s: after that it is fetched again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.get_blob_range(&r, &digest, 20..30).await.unwrap();
    assert_eq!(st.posts.load(Ordering::SeqCst), 2, "renewed after expiry");

    // A wrong identity token is refused by the token service.
    let file = serde_json::json!({"auths": {reg.host(): {"identitytoken": "stale"}}});
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let c = client_with(|c| c.docker_config = Some(path.clone()));
    let err = c.blob_size(&r, &digest).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
}

#[tokio::test]
async fn redirects_to_storage_drop_credentials() {
    let storage = StorageServer::start().await;
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Htpasswd(vec![("carol".into(), "pw".into())]),
        redirect_to: Some(storage.base_url()),
        ..Default::default()
    })
    .await;
    storage.set_root(&reg.storage_root());
    let small = test_bytes(20_000, 5);
    let big = test_bytes(MAX_WHOLE_BODY_FOR_RANGE as usize + 1000, 6);
    let small_d = reg.push_blob("redir/app", &small, None).await;
    let big_d = reg.push_blob("redir/app", &big, None).await;
    let r = repo(&reg, "redir/app");
    let c = client_with(|c| {
        c.credentials.insert(reg.host(), basic_creds("carol", "pw"));
        c.mirrors.insert(
            "unrelated.example".into(),
            vec![Mirror {
                host: "127.0.0.1:1".into(),
                ..Default::default()
            }],
        );
    });

    assert_eq!(c.blob_size(&r, &small_d).await.unwrap(), 20_000);
    assert_eq!(
        &c.get_blob_range(&r, &small_d, 500..1500).await.unwrap()[..],
        &small[500..1500]
    );
    assert_eq!(
        collect(c.get_blob(&r, &small_d).await.unwrap())
            .await
            .unwrap(),
        small
    );
    assert!(storage.state.requests.load(Ordering::SeqCst) >= 3);
    for headers in storage.state.seen_headers.lock().unwrap().iter() {
        assert!(
            headers.get("authorization").is_none(),
            "credentials leaked to storage"
        );
    }

    // Storage that refuses HEAD: the size comes from a one-byte GET instead.
    storage.state.refuse_head.store(true, Ordering::SeqCst);
    let before = storage.state.requests.load(Ordering::SeqCst);
    assert_eq!(c.blob_size(&r, &big_d).await.unwrap(), big.len() as u64);
    assert_eq!(
        storage.state.requests.load(Ordering::SeqCst) - before,
        2,
        "HEAD, then GET"
    );
    storage.state.refuse_head.store(false, Ordering::SeqCst);

    // Storage that ignores Range: a small blob is verified and sliced, a large one refused.
    storage.state.ignore_range.store(true, Ordering::SeqCst);
    assert_eq!(
        &c.get_blob_range(&r, &small_d, 7..9).await.unwrap()[..],
        &small[7..9]
    );
    let err = c.get_blob_range(&r, &big_d, 0..10).await.unwrap_err();
    assert!(
        err.to_string().contains("ignored the Range header"),
        "{err}"
    );
    storage.state.ignore_range.store(false, Ordering::SeqCst);
    assert_eq!(
        &c.get_blob_range(&r, &big_d, 0..10).await.unwrap()[..],
        &big[..10]
    );

    // Flapping storage (503): retried with back-off until it answers...
    storage.state.fail_next.store(2, Ordering::SeqCst);
    assert_eq!(
        &c.get_blob_range(&r, &small_d, 0..5).await.unwrap()[..],
        &small[..5]
    );
    // ...but only a bounded number of times.
    storage.state.fail_next.store(100, Ordering::SeqCst);
    let before = storage.state.requests.load(Ordering::SeqCst);
    let err = c.get_blob_range(&r, &small_d, 0..5).await.unwrap_err();
    assert!(
        matches!(err, Error::Server { status: 503, .. }) && err.is_retryable(),
        "{err}"
    );
    assert_eq!(
        storage.state.requests.load(Ordering::SeqCst) - before,
        3,
        "1 try + 2 retries"
    );
    storage.state.fail_next.store(0, Ordering::SeqCst);
}

#[tokio::test]
async fn mirrors_are_tried_first_and_fall_back_to_upstream() {
    let upstream = TestRegistry::start(RegistryOptions::default()).await;
    let mirror = TestRegistry::start(RegistryOptions::default()).await;
    let shared = test_bytes(3000, 21);
    let only_upstream = test_bytes(3000, 22);
    let shared_d = upstream.push_blob("mirror/app", &shared, None).await;
    mirror.push_blob("mirror/app", &shared, None).await;
    let only_d = upstream.push_blob("mirror/app", &only_upstream, None).await;
    let dead_port = free_port();
    let c = client_with(|c| {
        c.mirrors.insert(
            upstream.host(),
            vec![
                Mirror {
                    host: format!("127.0.0.1:{dead_port}"),
                    plain_http: true,
                    ..Default::default()
                },
                Mirror {
                    host: format!("http://{}", mirror.host()),
                    headers: HashMap::from([("X-Dragonfly-Registry".into(), "x".into())]),
                    ..Default::default()
                },
            ],
        );
    });
    let r = repo(&upstream, "mirror/app");
    let started = Instant::now();
    assert_eq!(
        &c.get_blob_range(&r, &shared_d, 0..100).await.unwrap()[..],
        &shared[..100]
    );
    let ns = format!("ns={}", upstream.host().replace(':', "%3A"));
    let blob_get = format!("GET /v2/mirror/app/blobs/{shared_d}");
    assert!(
        mirror
            .access_log()
            .lines()
            .any(|l| l.contains(&blob_get) && l.contains(&ns)),
        "mirror was not asked with ?{ns}:\n{}",
        mirror.access_log()
    );
    assert!(
        !upstream.access_log().contains(&blob_get),
        "upstream was asked although the mirror had it"
    );
    // Not on the mirror: falls back to the upstream.
    assert_eq!(
        &c.get_blob_range(&r, &only_d, 5..10).await.unwrap()[..],
        &only_upstream[5..10]
    );
    assert!(upstream
        .access_log()
        .contains(&format!("GET /v2/mirror/app/blobs/{only_d}")));
    // A dead mirror costs one failed connection each, no retries.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn registry_outage_gives_bounded_transport_error_and_retries_recover() {
    let mut reg = TestRegistry::start(RegistryOptions::default()).await;
    let data = test_bytes(10_000, 9);
    let digest = reg.push_blob("down/app", &data, None).await;
    let r = repo(&reg, "down/app");
    let c = client();
    assert_eq!(
        c.get_blob_range(&r, &digest, 0..10).await.unwrap().len(),
        10
    );

    reg.stop();
    let started = Instant::now();
    let err = c.get_blob_range(&r, &digest, 10..20).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, Error::Transport { .. }) && err.is_retryable(),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("check that the registry is reachable"),
        "{err}"
    );
    // Two retries with 20 ms and 40 ms base delays (+ up to 50% jitter), no more.
    assert!(elapsed >= Duration::from_millis(60), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(matches!(
        c.blob_size(&r, &digest).await.unwrap_err(),
        Error::Transport { .. }
    ));

    // Back-off long enough to outlast a restart: the retries get through.
    let patient = client_with(|c| {
        c.max_retries = 6;
        c.retry_base_delay_ms = 100;
    });
    let restart = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        reg.restart().await;
    };
    let (got, ()) = tokio::join!(patient.get_blob_range(&r, &digest, 10..20), restart);
    assert_eq!(&got.unwrap()[..], &data[10..20]);
}

#[tokio::test]
async fn corrupted_and_truncated_storage_is_detected() {
    let reg = TestRegistry::start(RegistryOptions::default()).await;
    let img = push_image(&reg, "bad/app", 50_000).await;
    let r = repo(&reg, "bad/app");
    let d = &img.layer_digest;
    let c = client();
    let path = reg.blob_data_path(d);

    // Flip one byte: partial ranges return exactly what the server holds, whole reads fail.
    let mut corrupt = img.layer.clone();
    corrupt[25_000] ^= 0xff;
    std::fs::write(&path, &corrupt).unwrap();
    assert_eq!(
        &c.get_blob_range(&r, d, 24_990..25_010).await.unwrap()[..],
        &corrupt[24_990..25_010]
    );
    let err = c.get_blob_range(&r, d, 0..50_000).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("do not use it"), "{err}");
    let mut stream = c.get_blob(&r, d).await.unwrap();
    let mut last = None;
    while let Some(item) = stream.next().await {
        last = Some(item);
    }
    assert!(
        matches!(last, Some(Err(Error::DigestMismatch { .. }))),
        "{last:?}"
    );

    // Truncate: the registry now reports the shorter size; reads past it fail cleanly.
    std::fs::write(&path, &img.layer[..30_000]).unwrap();
    assert_eq!(c.blob_size(&r, d).await.unwrap(), 30_000);
    assert_eq!(
        &c.get_blob_range(&r, d, 0..100).await.unwrap()[..],
        &img.layer[..100]
    );
    let err = c.get_blob_range(&r, d, 29_000..31_000).await.unwrap_err();
    assert!(matches!(err, Error::BadResponse { .. }), "{err}");
    let err = c.get_blob_range(&r, d, 40_000..41_000).await.unwrap_err();
    assert!(matches!(err, Error::RangeNotSatisfiable { .. }), "{err}");
    let err = collect(c.get_blob(&r, d).await.unwrap()).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");

    // A manifest altered on disk (still valid JSON) is caught by digest, by tag and by digest.
    let mpath = reg.blob_data_path(&img.oci_digest);
    let mut altered = img.oci_manifest.clone();
    altered.push(b' ');
    std::fs::write(&mpath, &altered).unwrap();
    for text in [
        format!("{}/bad/app@{}", reg.host(), img.oci_digest),
        format!("{}/bad/app:oci", reg.host()),
    ] {
        let err = c.get_manifest(&reference(&text), &[]).await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{text}: {err}");
    }
}

#[tokio::test]
async fn truncated_body_behind_a_cached_size_is_an_error() {
    // With the descriptor cache the registry keeps announcing the original size while the
    // file on disk is shorter, so the body breaks off mid-way.
    let reg = TestRegistry::start(RegistryOptions {
        descriptor_cache: true,
        ..Default::default()
    })
    .await;
    let data = test_bytes(200_000, 13);
    let digest = reg.push_blob("cut/app", &data, None).await;
    let r = repo(&reg, "cut/app");
    let c = client();
    assert_eq!(c.blob_size(&r, &digest).await.unwrap(), 200_000);
    std::fs::write(reg.blob_data_path(&digest), &data[..100_000]).unwrap();
    assert_eq!(
        c.blob_size(&r, &digest).await.unwrap(),
        200_000,
        "size comes from the cache"
    );

    let err = c
        .get_blob_range(&r, &digest, 90_000..110_000)
        .await
        .unwrap_err();
    eprintln!("truncated range: {err}");
    assert!(
        matches!(
            err,
            Error::Transport { .. } | Error::BadResponse { .. } | Error::RangeNotSatisfiable { .. }
        ),
        "{err}"
    );
    let result = collect(c.get_blob(&r, &digest).await.unwrap()).await;
    eprintln!("truncated stream: {result:?}");
    assert!(
        result.is_err(),
        "a truncated whole-blob stream must end in an error"
    );
    // What is still there is served correctly.
    assert_eq!(
        &c.get_blob_range(&r, &digest, 0..1000).await.unwrap()[..],
        &data[..1000]
    );
}

/// Log output of this crate from every test in this process (a global subscriber: scoped
/// ones race with other test threads over tracing's callsite cache).
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_logs() -> &'static LogBuffer {
    static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "dragonfly_registry=debug",
            ))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        logs
    })
}

#[tokio::test]
async fn debug_log_names_requests_but_never_secrets() {
    let logs = captured_logs();
    let (issuer, reg) =
        token_registry(vec![("dave".into(), "s3cret-pw".into())], vec![], 300).await;
    let data = test_bytes(2048, 17);
    let digest = reg
        .push_blob("log/app", &data, Some(&issuer.push_auth("log/app")))
        .await;
    let r = repo(&reg, "log/app");
    let c = client_with(|c| {
        c.credentials
            .insert(reg.host(), basic_creds("dave", "s3cret-pw"));
    });
    assert_eq!(c.blob_size(&r, &digest).await.unwrap(), 2048);
    c.get_blob_range(&r, &digest, 0..100).await.unwrap();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let registry_url = format!("url=http://{}/", reg.host());
    let token_url = format!("url=http://127.0.0.1:{}/token", issuer.port);
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("registry request"))
        .filter(|l| l.contains(&registry_url) || l.contains(&token_url))
        .collect();
    let has = |parts: &[&str]| ours.iter().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(has(&["method=HEAD", "status=401"]), "{ours:#?}");
    assert!(
        has(&["method=GET", "token=true", "status=200"]),
        "{ours:#?}"
    );
    assert!(
        has(&["method=HEAD", "status=200", "bytes=2048"]),
        "{ours:#?}"
    );
    assert!(has(&["method=GET", "status=206", "bytes=100"]), "{ours:#?}");
    // Nothing any test logged holds a password, a Basic value or a token.
    let basic =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "dave:s3cret-pw");
    for secret in ["s3cret-pw", basic.as_str(), "eyJ", "Bearer ", "Basic "] {
        assert!(!text.contains(secret), "log holds {secret:?}:\n{text}");
    }
}

/// A test owner's rules: refuse one port (checked per URL) and one name (by the resolver).
struct Refusing {
    port: u16,
    name: &'static str,
}

struct RefusingResolver(&'static str);

impl reqwest::dns::Resolve for RefusingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let refused = name.as_str() == self.0;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if refused {
                return Err(format!("{host} is refused in this test").into());
            }
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl DestinationCheck for Refusing {
    fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        match url.port() == Some(self.port) {
            true => Err(format!("port {} is refused in this test", self.port)),
            false => Ok(()),
        }
    }

    fn resolver(&self) -> std::sync::Arc<dyn reqwest::dns::Resolve> {
        std::sync::Arc::new(RefusingResolver(self.name))
    }
}

/// With its owner's destination rules, the client sends nothing where they refuse: a token
/// realm on a refused port, a storage redirect to a refused name; the rest goes through.
#[tokio::test]
async fn destination_rules_apply_to_token_realms_and_redirects() {
    let config = || RegistryConfig {
        max_retries: 0,
        request_timeout_secs: 10,
        connect_timeout_secs: 2,
        docker_config: Some("/nonexistent/dragonfly-test/config.json".into()),
        ..Default::default()
    };
    let (issuer, reg) = token_registry(vec![("bob".into(), "builder".into())], vec![], 300).await;
    let data = test_bytes(4096, 3);
    let digest = reg
        .push_blob("org/app", &data, Some(&issuer.push_auth("org/app")))
        .await;
    let mut with_creds = config();
    with_creds
        .credentials
        .insert(reg.host(), basic_creds("bob", "builder"));
    let refusing = |port| {
        std::sync::Arc::new(Refusing {
            port,
            name: "localhost",
        })
    };
    let c = RegistryClient::with_destinations(with_creds.clone(), refusing(issuer.port)).unwrap();
    let err = c
        .get_blob_range(&repo(&reg, "org/app"), &digest, 0..4)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert_eq!(
        issuer.state.gets.load(Ordering::SeqCst),
        0,
        "no token asked"
    );
    // Another port refused: the same request works.
    let c = RegistryClient::with_destinations(with_creds, refusing(1)).unwrap();
    assert_eq!(
        &c.get_blob_range(&repo(&reg, "org/app"), &digest, 0..4)
            .await
            .unwrap()[..],
        &data[..4]
    );

    let storage = StorageServer::start().await;
    let reg = TestRegistry::start(RegistryOptions {
        redirect_to: Some(storage.base_url()),
        ..Default::default()
    })
    .await;
    storage.set_root(&reg.storage_root());
    let digest = reg.push_blob("redir/app", &data, None).await;
    let c = RegistryClient::with_destinations(config(), refusing(1)).unwrap();
    let err = c
        .get_blob_range(&repo(&reg, "redir/app"), &digest, 0..4)
        .await
        .unwrap_err();
    assert!(
        format!("{err}").contains("localhost is refused in this test"),
        "{err}"
    );
    assert_eq!(storage.state.requests.load(Ordering::SeqCst), 0);
}

async fn collect_range(body: crate::RangeBody) -> Result<Vec<u8>, Error> {
    body.fold(Ok(Vec::new()), |out, chunk| async move {
        let mut out = out?;
        out.extend_from_slice(&chunk?);
        Ok(out)
    })
    .await
}

/// A streamed range hands on exactly the bytes a buffered ranged read returns, with the same
/// refusals; behind storage that ignores `Range`, a small blob is verified whole before any
/// byte of it goes on, and a tampered one yields nothing but the mismatch.
#[tokio::test]
async fn blob_range_streams_hand_on_what_ranged_reads_return() {
    let storage = StorageServer::start().await;
    let reg = TestRegistry::start(RegistryOptions {
        redirect_to: Some(storage.base_url()),
        ..Default::default()
    })
    .await;
    storage.set_root(&reg.storage_root());
    let data = test_bytes(300_000, 9);
    let d = reg.push_blob("stream/app", &data, None).await;
    let r = repo(&reg, "stream/app");
    let c = client();
    let len = data.len() as u64;
    for range in [0..1, len - 1..len, 1234..256_789, 0..len, 99_000..len] {
        let body = c
            .get_blob_range_stream(&r, &d, range.clone())
            .await
            .unwrap();
        assert_eq!(
            collect_range(body).await.unwrap(),
            &data[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    let empty = c.get_blob_range_stream(&r, &d, 5..5).await.unwrap();
    assert!(collect_range(empty).await.unwrap().is_empty());
    #[allow(clippy::reversed_empty_ranges)]
    let err = c.get_blob_range_stream(&r, &d, 6..5).await.err().unwrap();
    assert!(matches!(err, Error::InvalidRange { .. }), "{err}");
    let err = c
        .get_blob_range_stream(&r, &d, len - 10..len + 10)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("wrong offset"), "{err}");

    storage.state.ignore_range.store(true, Ordering::SeqCst);
    let body = c.get_blob_range_stream(&r, &d, 10..20).await.unwrap();
    assert_eq!(collect_range(body).await.unwrap(), &data[10..20]);
    let stored = reg.blob_data_path(&d);
    let mut tampered = std::fs::read(&stored).unwrap();
    tampered[0] ^= 1;
    std::fs::write(&stored, tampered).unwrap();
    let err = c.get_blob_range_stream(&r, &d, 10..20).await.err().unwrap();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}
