//! The Dragonfly-rs manager.
//!
//! It keeps scheduler clusters, the schedulers and seed peers registered with it, users and
//! their personal access tokens, and preheat jobs in an SQL database (SQLite by default,
//! PostgreSQL for several managers), serves the console's REST API (`/api/v1`), the Open API
//! for automation (`/oapi/v1`, personal access tokens) and a gRPC service for schedulers,
//! seed peers and peers, and runs preheat jobs durably: a job survives a manager restart.
//!
//! * [`store`] — the SQL store (migrations, one module per table family).
//! * [`auth`] — password hashing, tokens, the root user.
//! * [`api`] — HTTP routes, extractors, errors, OpenAPI document, console.
//! * [`jobs`] — the preheat contract, image resolution, rate limits, the durable runner.
//! * [`grpc`] — registration and keepalive of schedulers and seed peers; scheduler lists.
//! * [`scopes`] — which cluster serves a peer.
//! * [`listener`] — the HTTP listener, plain or TLS.
//! * [`redact`] — URLs as shown and logged (no query values, no user info).
//! * [`certs`] — the cluster CA and member certificates (`dragonfly-manager certs`).
//! * [`server`] — wiring it all together.

pub mod api;
pub mod auth;
pub mod certificate;
pub mod certs;
pub mod config;
pub mod grpc;
pub mod issuer;
pub mod jobs;
pub mod listener;
pub mod metrics;
pub mod redact;
pub mod scopes;
pub mod server;
pub mod store;
