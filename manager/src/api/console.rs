//! The web console: one page (HTML and a little JavaScript, no build step) over the REST API:
//! sign in, jobs with their state and log, a preheat form, clusters, schedulers and seed peers,
//! and personal access tokens.

use axum::response::Html;

/// `GET /`
pub async fn page() -> Html<&'static str> {
    Html(include_str!("console.html"))
}
