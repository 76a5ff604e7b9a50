//! Prometheus metrics of the manager, served on `/metrics`.

use prometheus::{Encoder, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The manager's metrics.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by method, route and status.
    pub http_requests: IntCounterVec,
    /// HTTP latency by method and route.
    pub http_seconds: HistogramVec,
    /// Jobs by event: created, rate_limited, success, failure.
    pub jobs: IntCounterVec,
    /// Registered schedulers and seed peers by kind and state.
    pub members: IntGaugeVec,
}

impl Metrics {
    /// Registers everything.
    pub fn new() -> std::sync::Arc<Metrics> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "dragonfly_manager_http_requests_total",
                "HTTP requests by method, route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("metric");
        let http_seconds = HistogramVec::new(
            prometheus::HistogramOpts::new(
                "dragonfly_manager_http_request_seconds",
                "HTTP request latency",
            ),
            &["method", "route"],
        )
        .expect("metric");
        let jobs = IntCounterVec::new(
            Opts::new(
                "dragonfly_manager_jobs_total",
                "Jobs by event (created, rate_limited, success, failure)",
            ),
            &["event"],
        )
        .expect("metric");
        let members = IntGaugeVec::new(
            Opts::new(
                "dragonfly_manager_members",
                "Registered schedulers and seed peers by kind and state",
            ),
            &["kind", "state"],
        )
        .expect("metric");
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_seconds.clone()),
            Box::new(jobs.clone()),
            Box::new(members.clone()),
        ] {
            registry.register(c).expect("register metric");
        }
        std::sync::Arc::new(Metrics {
            registry,
            http_requests,
            http_seconds,
            jobs,
            members,
        })
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encode metrics");
        String::from_utf8(out).expect("utf-8 metrics")
    }
}
