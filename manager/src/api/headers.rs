//! Security headers on every HTTP answer: API answers may not be framed, sniffed or leak the
//! URL as a referrer, and get a Content-Security-Policy that allows nothing (the console page
//! sets its own, see [`super::console`]). Over TLS, browsers are told to keep to HTTPS.

use axum::http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::HeaderValue;
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

/// The policy of answers that are not the console.
pub const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `router` with the headers added (`tls`: the listener serves HTTPS).
pub fn with_security_headers<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    tls: bool,
) -> Router<S> {
    let set = |name, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    let router = router
        .layer(set(CONTENT_SECURITY_POLICY, API_CSP))
        .layer(set(X_FRAME_OPTIONS, "DENY"))
        .layer(set(X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(REFERRER_POLICY, "no-referrer"));
    if tls {
        router.layer(set(STRICT_TRANSPORT_SECURITY, "max-age=31536000"))
    } else {
        router
    }
}
