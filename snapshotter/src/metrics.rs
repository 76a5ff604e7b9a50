//! Prometheus metrics of the daemon and the `/metrics` HTTP endpoint.
//!
//! Counters that live in libraries (the piece store's byte counts) are read when scraped;
//! everything else is recorded here by the module that does the work.

use std::sync::Arc;

use dragonfly_task::origin::OriginMetrics;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Called at scrape time to refresh gauges mirrored from other components.
pub type Refresher = Box<dyn Fn(&Metrics) + Send + Sync>;

/// All metrics of the daemon.
pub struct Metrics {
    registry: Registry,
    /// Snapshot API calls by operation and result code.
    pub snapshot_ops: IntCounterVec,
    /// Origin requests (registry, http): count, bytes, latency.
    pub origins: OriginMetrics,
    /// Bytes of blobs read from the local piece store instead of a source.
    pub cache_hit_bytes: IntGauge,
    /// Bytes of blobs fetched into the piece store from any source.
    pub cache_fetched_bytes: IntGauge,
    /// Of those, bytes fetched for a waiting reader (on-demand, prefetch, bulk).
    pub cache_fetched_urgent_bytes: IntGauge,
    /// Bytes currently held by the piece store.
    pub cache_usage_bytes: IntGauge,
    /// Fetches a reader waited for (not background fills).
    pub cache_urgent_fetches: IntGauge,
    /// Seconds those fetches spent, summed, by step (`gate`: waiting for a request slot,
    /// `source`: in the source, `store`: writing the pieces; their sync comes after).
    pub cache_urgent_fetch_seconds: GaugeVec,
    /// FUSE reads answered, by result.
    pub fuse_reads: IntCounterVec,
    /// Bytes returned to FUSE reads.
    pub fuse_read_bytes: IntCounter,
    /// Latency of FUSE reads that needed chunk data.
    pub fuse_read_seconds: HistogramVec,
    /// Chunks that failed verification against their chunkDigest.
    pub chunk_verify_failures: IntCounter,
    /// Compressed bytes of the distinct chunks lazy reads needed (each counted once per mount).
    pub chunk_needed_bytes: IntCounter,
    /// Lazy layers currently mounted.
    pub lazy_layers: IntGauge,
    /// Live FUSE connections adopted from a previous process.
    pub fuse_adopted: IntCounter,
    /// Held FUSE connections that could not be adopted (remounted instead), by reason.
    pub fuse_adoption_failures: IntCounterVec,
    /// Requests a previous process had read but not answered, resent by the kernel to us.
    pub fuse_resent: IntCounter,
    /// Lazy layer mount latency by result.
    pub mount_seconds: HistogramVec,
    /// Blob bytes obtained by the P2P engine, by source (`peer` or `origin`).
    pub p2p_bytes: IntCounterVec,
    /// Pieces obtained by the P2P engine, by source.
    pub p2p_pieces: IntCounterVec,
    /// Parents reported bad, by kind (`corrupt`, `failed`).
    pub p2p_bad_parents: IntCounterVec,
    /// Pieces uploaded to other peers, by result.
    pub p2p_uploads: IntCounterVec,
    /// Bytes uploaded to other peers.
    pub p2p_upload_bytes: IntCounter,
    /// Where a read a container waits for spends its time in the P2P engine, by step
    /// (`find_parents`, `wait`, `parents`, `origin`; on a seed, `demand_origin`), plus every
    /// registration with the scheduler (`register`, whatever read made it).
    pub p2p_demand_seconds: HistogramVec,
    refreshers: std::sync::Mutex<Vec<Refresher>>,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new_custom(Some("dragonfly_snapshotter".into()), None)
            .expect("a valid metrics prefix");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
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
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        Arc::new(Metrics {
            snapshot_ops: counter_vec(
                "snapshot_operations_total",
                "Snapshot API calls by operation and result code.",
                &["operation", "code"],
            ),
            origins: OriginMetrics::new(&registry),
            cache_hit_bytes: gauge(
                "cache_hit_bytes",
                "Blob bytes served from the local piece store without fetching.",
            ),
            cache_fetched_bytes: gauge(
                "cache_fetched_bytes",
                "Blob bytes fetched into the piece store from any source.",
            ),
            cache_fetched_urgent_bytes: gauge(
                "cache_fetched_urgent_bytes",
                "Blob bytes fetched for a waiting reader (on-demand, prefetch, whole-blob), not a background fill.",
            ),
            cache_usage_bytes: gauge(
                "cache_usage_bytes",
                "Bytes of blob pieces held by the piece store.",
            ),
            cache_urgent_fetches: gauge(
                "cache_urgent_fetches",
                "Fetches into the piece store that a reader waited for (not background fills).",
            ),
            cache_urgent_fetch_seconds: {
                let g = GaugeVec::new(
                    Opts::new(
                        "cache_urgent_fetch_seconds",
                        "Seconds the fetches a reader waited for spent, summed, by step (gate, source, store).",
                    ),
                    &["step"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            fuse_reads: counter_vec(
                "fuse_reads_total",
                "FUSE read requests on lazy layers by result.",
                &["result"],
            ),
            fuse_read_bytes: counter("fuse_read_bytes_total", "Bytes returned to FUSE reads."),
            fuse_read_seconds: histogram(
                "fuse_read_seconds",
                "Latency of FUSE reads on lazy layers.",
                &["source"],
            ),
            chunk_verify_failures: counter(
                "chunk_verify_failures_total",
                "Chunks whose bytes did not match their chunkDigest.",
            ),
            chunk_needed_bytes: counter(
                "chunk_needed_compressed_bytes_total",
                "Compressed bytes of the distinct chunks lazy reads needed, each counted once per mounted layer.",
            ),
            lazy_layers: gauge("lazy_layers", "Lazy layers currently mounted."),
            fuse_adopted: counter(
                "fuse_mounts_adopted_total",
                "Live FUSE connections of lazy layers adopted from a previous daemon process.",
            ),
            fuse_adoption_failures: counter_vec(
                "fuse_adoption_failures_total",
                "Held FUSE connections that could not be adopted and were remounted, by reason.",
                &["reason"],
            ),
            fuse_resent: counter(
                "fuse_requests_resent_total",
                "FUSE requests a previous daemon process had read but not answered, resent by the kernel.",
            ),
            p2p_bytes: counter_vec(
                "p2p_bytes_total",
                "Blob bytes obtained through the P2P engine by source (peer, origin).",
                &["source"],
            ),
            p2p_pieces: counter_vec(
                "p2p_pieces_total",
                "Pieces obtained through the P2P engine by source (peer, origin).",
                &["source"],
            ),
            p2p_bad_parents: counter_vec(
                "p2p_bad_parents_total",
                "Parents reported to the scheduler, by kind (corrupt, failed).",
                &["kind"],
            ),
            p2p_uploads: counter_vec(
                "p2p_uploads_total",
                "Piece uploads to other peers by result.",
                &["result"],
            ),
            p2p_upload_bytes: counter("p2p_upload_bytes_total", "Bytes uploaded to other peers."),
            p2p_demand_seconds: histogram(
                "p2p_demand_seconds",
                "Time reads a container waits for spend in the P2P engine, by step.",
                &["step"],
            ),
            mount_seconds: histogram(
                "lazy_mount_seconds",
                "Time to mount a lazy layer (footer, TOC, FUSE).",
                &["result"],
            ),
            registry,
            refreshers: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Registers a function run before each scrape.
    pub fn add_refresher(&self, f: Refresher) {
        self.refreshers.lock().expect("not poisoned").push(f);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        for f in self.refreshers.lock().expect("not poisoned").iter() {
            f(self);
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_with_prefix() {
        let m = Metrics::new();
        m.snapshot_ops.with_label_values(&["prepare", "ok"]).inc();
        m.add_refresher(Box::new(|m| m.cache_usage_bytes.set(42)));
        let text = m.render();
        assert!(text.contains("dragonfly_snapshotter_snapshot_operations_total{code=\"ok\",operation=\"prepare\"} 1"), "{text}");
        assert!(
            text.contains("dragonfly_snapshotter_cache_usage_bytes 42"),
            "{text}"
        );
    }
}
