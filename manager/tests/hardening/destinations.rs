//! Preheat destinations: URLs to loopback, link-local, private and mapped addresses are 400s
//! unless allow-listed; at run time a redirect or token realm to a refused address fails the
//! job with a log line naming it.

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::harness::{client_from, serve, start};

fn file_job(url: &str) -> serde_json::Value {
    json!({"type": "preheat", "args": {"type": "file", "url": url}})
}

#[tokio::test]
async fn internal_addresses_are_refused_at_creation_unless_allow_listed() {
    let m = start(|_| {}).await;
    let c = client_from("127.0.0.1");
    for (url, addr, class) in [
        (
            "http://127.0.0.1:5000/v2/a/manifests/b",
            "127.0.0.1",
            "loopback",
        ),
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254",
            "link-local",
        ),
        (
            "http://10.1.2.3/f?X-Amz-Signature=s3cr3t",
            "10.1.2.3",
            "private",
        ),
        (
            "http://[::ffff:127.0.0.1]:8080/f",
            "::ffff:127.0.0.1",
            "loopback",
        ),
        ("http://localhost:8080/f", "", "loopback"),
    ] {
        let body = if url.contains("/manifests/") {
            json!({"type": "preheat", "args": {"type": "image", "url": url}})
        } else {
            file_job(url)
        };
        let (status, v) = m.create_job(&c, body).await;
        assert_eq!(
            (status, v["field"].as_str()),
            (400, Some("args.url")),
            "{url}: {v}"
        );
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(addr) && msg.contains(class), "{url}: {msg}");
        assert!(msg.contains("jobs.allowed_networks"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "the signature is redacted: {msg}");
    }

    let allowed = start(|c| c.jobs.allowed_networks = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let (status, v) = allowed
        .create_job(&c, file_job("http://127.0.0.1:1/f"))
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = allowed
        .create_job(&c, file_job("http://[::ffff:127.0.0.1]:1/f"))
        .await;
    assert_eq!(status, 201, "the mapped form of an allowed address: {v}");
    let (status, _) = allowed
        .create_job(&c, file_job("http://169.254.169.254/"))
        .await;
    assert_eq!(status, 400, "only the listed networks open");
}

/// A registry on 127.0.0.1 that redirects one manifest to 127.0.0.2, sends the token realm
/// of another to the cloud metadata address, and has no third.
async fn tricky_registry() -> std::net::SocketAddr {
    let app = axum::Router::new()
        .route(
            "/v2/redirect/manifests/v1",
            get(|| async {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, "http://127.0.0.2:9/v2/redirect/manifests/v1")],
                )
                    .into_response()
            }),
        )
        .route(
            "/v2/realm/manifests/v1",
            get(|| async {
                (
                    StatusCode::UNAUTHORIZED,
                    [(
                        header::WWW_AUTHENTICATE,
                        r#"Bearer realm="http://169.254.169.254/token",service="r",scope="repository:realm:pull""#,
                    )],
                )
                    .into_response()
            }),
        );
    serve("127.0.0.1", app).await
}

#[tokio::test]
async fn redirects_and_token_realms_are_checked_when_the_job_runs() {
    let registry = tricky_registry().await;
    let m = start(|c| c.jobs.allowed_networks = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let c = client_from("127.0.0.1");
    for (repo, shown) in [
        ("redirect", "127.0.0.2, a loopback address"),
        ("realm", "169.254.169.254, a link-local address"),
        ("missing", "cannot fetch the manifest"),
    ] {
        let url = format!("http://{registry}/v2/{repo}/manifests/v1");
        let (status, v) = m
            .create_job(
                &c,
                json!({"type": "preheat", "args": {"type": "image", "url": url}}),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        let job = m.finished_job(&c, v["id"].as_i64().unwrap()).await;
        assert_eq!(job["state"], "FAILURE", "{job}");
        let log = job["log"].as_str().unwrap();
        assert!(log.contains(shown), "{repo}: {log}");
    }
}
