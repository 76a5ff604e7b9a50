//! The HTTP side: REST `/api/v1` (console; session tokens from sign-in), Open API `/oapi/v1`
//! (automation; personal access tokens with scopes), `/healthy`, `/metrics`, `/openapi.json`
//! and the console page at `/`.

pub mod auth;
pub mod clusters;
pub mod console;
pub mod error;
pub mod headers;
pub mod hosts;
pub mod jobs;
pub mod openapi;
pub mod peers;
pub mod tokens;
pub mod users;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::auth::hashing::HashPool;
use crate::auth::limiter::SignInLimiter;
use crate::config::Config;
use crate::jobs::destination::DestinationPolicy;
use crate::jobs::ratelimit::JobLimiter;
use crate::metrics::Metrics;
use crate::store::Db;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub db: Db,
    /// Configuration.
    pub config: Arc<Config>,
    /// Job creation limits per cluster.
    pub limiter: Arc<JobLimiter>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Wakes the job runner when a job is created.
    pub job_created: Arc<tokio::sync::Notify>,
    /// Sign-in attempts per source and per user.
    pub signin_limiter: Arc<SignInLimiter>,
    /// The bounded password hashing slots.
    pub hashes: HashPool,
    /// Where preheat URLs may point.
    pub destinations: Arc<DestinationPolicy>,
    /// How schedulers are dialled (get_image_distribution asks them at once).
    pub dialer: dragonfly_membership::client::Dialer,
}

impl AppState {
    /// The state of a manager with `config` over `db`.
    pub fn new(
        db: Db,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        job_created: Arc<tokio::sync::Notify>,
        dialer: dragonfly_membership::client::Dialer,
    ) -> AppState {
        let a = &config.auth;
        AppState {
            signin_limiter: Arc::new(SignInLimiter::new(
                a.signin_failures_per_source,
                a.signin_failures_per_user,
                std::time::Duration::from_secs(a.signin_window_secs),
            )),
            hashes: HashPool::new(a.max_concurrent_hashes),
            destinations: Arc::new(DestinationPolicy::new(config.jobs.allowed_networks.clone())),
            db,
            config,
            limiter: Arc::new(JobLimiter::default()),
            metrics,
            job_created,
            dialer,
        }
    }
}

/// Every route. Routes reached both ways (clusters, jobs) have one handler each; the auth kind
/// is a route layer: a console session on `/api/v1`, a personal access token with the
/// route's scope on `/oapi/v1`.
pub fn router(state: AppState) -> Router {
    let tls = state.config.http.tls.is_some();
    let clusters = Router::new()
        .route("/clusters", post(clusters::create).get(clusters::list))
        .route(
            "/clusters/{id}",
            get(clusters::get)
                .patch(clusters::update)
                .delete(clusters::delete),
        );
    let jobs = Router::new()
        .route("/jobs", post(jobs::create).get(jobs::list))
        .route("/jobs/{id}", get(jobs::get));
    let session = axum::middleware::from_fn_with_state(state.clone(), auth::require_session);
    let token = |scope: &'static str| {
        axum::middleware::from_fn_with_state((state.clone(), scope), auth::require_token)
    };
    let console = Router::new()
        .merge(clusters.clone())
        .merge(jobs.clone())
        .route("/schedulers", get(hosts::schedulers))
        .route("/seed-peers", get(hosts::seed_peers))
        .route("/peers", get(peers::list))
        .route_layer(session);
    // Sign-in needs no session; the user and token routes find the session themselves.
    let api = Router::new()
        .route("/users/signin", post(users::signin))
        .route("/users/signout", post(users::signout))
        .route("/users/me", get(users::me))
        .route("/users", get(users::list).post(users::create))
        .route("/users/{id}", axum::routing::delete(users::delete))
        .route(
            "/personal-access-tokens",
            post(tokens::create).get(tokens::list),
        )
        .route(
            "/personal-access-tokens/{id}",
            axum::routing::delete(tokens::revoke),
        )
        .merge(console);
    let oapi = Router::new()
        .merge(clusters.route_layer(token("cluster")))
        .merge(jobs.route_layer(token("job")));
    let routes = Router::new()
        .nest("/api/v1", api)
        .nest("/oapi/v1", oapi)
        .route("/healthy", get(|| async { "OK" }))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi::document))
        .route("/", get(console::page))
        .fallback(|| async {
            error::ApiError::status(
                axum::http::StatusCode::NOT_FOUND,
                "no such route; see /openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ));
    headers::with_security_headers(routes, tls).with_state(state)
}

async fn metrics_text(axum::extract::State(s): axum::extract::State<AppState>) -> String {
    s.metrics.render()
}

/// Counts requests by route and status, with their latency.
async fn count_requests(
    axum::extract::State(s): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    s.metrics
        .http_requests
        .with_label_values(&[&method, &route, res.status().as_str()])
        .inc();
    s.metrics
        .http_seconds
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    res
}
