//! The console and API answers carry security headers (a CSP that allows only the page's own
//! inline script and style and no framing, X-Frame-Options, nosniff, Referrer-Policy); over
//! TLS the session cookie is `Secure` and HSTS is sent.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::harness::{client_from, start, ROOT_PASSWORD};

fn inline(page: &str, open: &str, close: &str) -> String {
    let start = page.find(open).unwrap() + open.len();
    let end = start + page[start..].find(close).unwrap();
    let hash = Sha256::digest(&page.as_bytes()[start..end]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(hash)
    )
}

#[tokio::test]
async fn every_answer_has_security_headers_and_the_console_csp_fits_its_page() {
    let m = start(|_| {}).await;
    let c = client_from("127.0.0.1");
    let page = c.get(format!("{}/", m.url)).send().await.unwrap();
    let h = page.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap().to_owned();
    let body = page.text().await.unwrap();
    for part in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "connect-src 'self'",
        &format!("script-src {}", inline(&body, "<script>", "</script>")),
        &format!("style-src {}", inline(&body, "<style>", "</style>")),
    ] {
        assert!(csp.contains(part), "{part} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    for path in ["/", "/api/v1/users/me", "/healthy", "/no-such-route"] {
        let r = c.get(format!("{}{path}", m.url)).send().await.unwrap();
        let h = r.headers();
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(
            !h.contains_key("strict-transport-security"),
            "plain HTTP: {path}"
        );
    }
    let api = c
        .get(format!("{}/api/v1/users/me", m.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        api.headers()["content-security-policy"],
        dragonfly_manager::api::headers::API_CSP
    );
    let r = m.signin_with(&c, "root", ROOT_PASSWORD).await;
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
}

#[tokio::test]
async fn over_tls_the_cookie_is_secure() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, pem_key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&pem_key, key.signing_key.serialize_pem()).unwrap();
    let files = dragonfly_manager::config::TlsFiles {
        cert: cert.clone(),
        key: pem_key.clone(),
    };
    let m = start(|c| c.http.tls = Some(files)).await;
    let port = m.url.rsplit(':').next().unwrap().to_owned();
    let trusted = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(key.cert.pem().as_bytes()).unwrap()])
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}");
    let healthy = trusted.get(format!("{url}/healthy")).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
    assert!(healthy.headers()["strict-transport-security"]
        .to_str()
        .unwrap()
        .starts_with("max-age="));
    let r = trusted
        .post(format!("{url}/api/v1/users/signin"))
        .json(&serde_json::json!({"name": "root", "password": ROOT_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // Plain HTTP to the TLS port gets no answer, nor does a client that does not trust the
    // certificate.
    let plain = client_from("127.0.0.1");
    assert!(plain
        .get(format!("http://127.0.0.1:{port}/healthy"))
        .send()
        .await
        .is_err());
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
        .no_proxy()
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("{url}/healthy"))
        .send()
        .await
        .is_err());
    // A key that is no key is refused at start, naming the file.
    std::fs::write(&pem_key, "not a key").unwrap();
    let e = dragonfly_manager::listener::acceptor(&dragonfly_manager::config::TlsFiles {
        cert,
        key: pem_key,
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("http.tls.key"), "{e}");
}
