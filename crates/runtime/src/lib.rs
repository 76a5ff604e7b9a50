//! Process plumbing shared by every Dragonfly-rs binary, so each behaves the same way:
//!
//! - [`log`]: the `log:` config section and the tracing set-up (a bad filter is an error).
//! - [`metrics`]: the Prometheus `/metrics` HTTP endpoint.
//! - [`shutdown`]: waiting for SIGTERM or SIGINT.
//! - [`grpc`]: tonic endpoints with one [`grpc::Timeouts`] struct.
//! - [`registration`]: staying registered with the manager (schedulers, seed peers).

pub mod grpc;
pub mod log;
pub mod metrics;
pub mod registration;
pub mod shutdown;
