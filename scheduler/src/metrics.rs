//! Prometheus metrics of the scheduler, served on `/metrics`.

use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::state::State;

/// The scheduler's metrics.
pub struct Metrics {
    registry: Registry,
    /// FindParents answers by decision.
    pub decisions: IntCounterVec,
    /// Time to answer FindParents.
    pub find_parents_seconds: HistogramVec,
    /// Piece reports by result (accepted/refused).
    pub piece_reports: IntCounterVec,
    /// Bad-parent reports by kind (corrupt/failed).
    pub bad_parents: IntCounterVec,
    /// Seed triggers.
    pub seed_triggers: IntCounterVec,
    hosts: IntGauge,
    tasks: IntGauge,
    peers: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Metrics> {
        let registry =
            Registry::new_custom(Some("dragonfly_scheduler".into()), None).expect("valid prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let decisions = counter(
            "find_parents_total",
            "FindParents answers by decision.",
            &["decision"],
        );
        let piece_reports = counter(
            "piece_reports_total",
            "Piece reports by result.",
            &["result"],
        );
        let bad_parents = counter(
            "bad_parent_reports_total",
            "Bad-parent reports by kind.",
            &["kind"],
        );
        let seed_triggers = counter("seed_triggers_total", "Seed peer triggers.", &["result"]);
        let find_parents_seconds = HistogramVec::new(
            HistogramOpts::new("find_parents_seconds", "Time to answer FindParents.").buckets(
                vec![0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05],
            ),
            &["decision"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(find_parents_seconds.clone()))
            .expect("unique metric");
        Arc::new(Metrics {
            decisions,
            find_parents_seconds,
            piece_reports,
            bad_parents,
            seed_triggers,
            hosts: gauge("hosts", "Hosts announced and alive."),
            tasks: gauge("tasks", "Tasks known."),
            peers: gauge("peers", "Peers registered."),
            registry,
        })
    }

    /// The text exposition, with the gauges refreshed from `state`.
    pub fn render(&self, state: &State) -> String {
        let (h, t, p) = state.counts();
        self.hosts.set(h as i64);
        self.tasks.set(t as i64);
        self.peers.set(p as i64);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encodes");
        String::from_utf8(out).expect("utf-8")
    }
}
