//! The web console: one page (HTML and plain JavaScript, no build step, nothing fetched from
//! elsewhere) over the REST API, with a view per `#/` route: sign in; clusters (create, edit
//! scopes, default, job rate limit) with their schedulers and seed peers; peers (last seen,
//! tasks and bytes held); the preheat form with every field of Dragonfly's; jobs (paged,
//! filtered by type and state) and a page per job (per-task progress, per-host results, log);
//! task lookup and delete; personal access tokens; users (root only).
//!
//! Its Content-Security-Policy allows exactly the page's own inline script and style (by
//! their SHA-256, computed from the page itself, so they cannot drift apart), requests to
//! this origin only, and no framing.

use std::sync::LazyLock;

use axum::http::header::CONTENT_SECURITY_POLICY;
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

/// The page.
const PAGE: &str = include_str!("console.html");

/// `'sha256-…'` of the text between `open` and `close` in the page.
fn inline_hash(open: &str, close: &str) -> String {
    let start = PAGE.find(open).expect("the console has the element") + open.len();
    let end = start + PAGE[start..].find(close).expect("the element is closed");
    let digest = Sha256::digest(&PAGE.as_bytes()[start..end]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The console's Content-Security-Policy.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        inline_hash("<script>", "</script>"),
        inline_hash("<style>", "</style>"),
    )
});

/// `GET /`
pub async fn page() -> Response {
    ([(CONTENT_SECURITY_POLICY, CSP.as_str())], Html(PAGE)).into_response()
}
