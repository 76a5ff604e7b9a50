//! One wrapper counts every origin fetch the same way: requests by origin kind and result,
//! bytes, latency. The daemon registers the metrics; the adapters count nothing themselves.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dragonfly_storage::{Priority, RangeSource, RangeStream, SourceError};
use futures::future::{BoxFuture, FutureExt};
use futures::StreamExt;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Counters of origin fetches, labelled by origin kind (`registry`, `http`).
#[derive(Clone)]
pub struct OriginMetrics {
    fetches: IntCounterVec,
    bytes: IntCounterVec,
    seconds: HistogramVec,
}

/// Latency buckets of origin requests, in seconds.
const BUCKETS: &[f64] = &[0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl OriginMetrics {
    /// The metrics, registered in `registry` (`origin_fetches_total`,
    /// `origin_fetch_bytes_total`, `origin_fetch_seconds`).
    pub fn new(registry: &Registry) -> OriginMetrics {
        let fetches = IntCounterVec::new(
            Opts::new(
                "origin_fetches_total",
                "Origin requests (registry, http) by result.",
            ),
            &["origin", "result"],
        )
        .expect("valid metric");
        let bytes = IntCounterVec::new(
            Opts::new(
                "origin_fetch_bytes_total",
                "Bytes fetched from origins (registry, http).",
            ),
            &["origin"],
        )
        .expect("valid metric");
        let seconds = HistogramVec::new(
            HistogramOpts::new("origin_fetch_seconds", "Latency of origin requests.")
                .buckets(BUCKETS.to_vec()),
            &["origin", "result"],
        )
        .expect("valid metric");
        for m in [
            Box::new(fetches.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(bytes.clone()),
            Box::new(seconds.clone()),
        ] {
            registry
                .register(m)
                .expect("origin metrics registered once");
        }
        OriginMetrics {
            fetches,
            bytes,
            seconds,
        }
    }

    /// Metrics registered nowhere (tools and tests).
    pub fn unregistered() -> OriginMetrics {
        OriginMetrics::new(&Registry::new())
    }

    /// Counts one request to an origin of `kind`.
    pub fn observe(&self, kind: &str, ok: bool, bytes: u64, elapsed: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.fetches.with_label_values(&[kind, result]).inc();
        self.seconds
            .with_label_values(&[kind, result])
            .observe(elapsed.as_secs_f64());
        if bytes > 0 {
            self.bytes.with_label_values(&[kind]).inc_by(bytes);
        }
    }
}

/// An origin with every fetch counted.
pub struct Metered {
    inner: Arc<dyn RangeSource>,
    kind: &'static str,
    metrics: OriginMetrics,
}

impl Metered {
    /// `inner`, counted as an origin of `kind`.
    pub fn new(inner: Arc<dyn RangeSource>, kind: &'static str, metrics: OriginMetrics) -> Metered {
        Metered {
            inner,
            kind,
            metrics,
        }
    }
}

impl RangeSource for Metered {
    fn fetch(
        &self,
        range: Range<u64>,
        priority: Priority,
    ) -> BoxFuture<'static, Result<Bytes, SourceError>> {
        let fetch = self.inner.fetch(range, priority);
        let (kind, metrics) = (self.kind, self.metrics.clone());
        async move {
            let started = Instant::now();
            let res = fetch.await;
            let bytes = res.as_ref().map_or(0, |b| b.len() as u64);
            metrics.observe(kind, res.is_ok(), bytes, started.elapsed());
            res
        }
        .boxed()
    }

    /// Counted once the stream has ended (with what it delivered) or failed.
    fn fetch_stream(
        &self,
        range: Range<u64>,
        priority: Priority,
    ) -> BoxFuture<'static, Result<RangeStream, SourceError>> {
        let fetch = self.inner.fetch_stream(range, priority);
        let (kind, metrics) = (self.kind, self.metrics.clone());
        async move {
            let started = Instant::now();
            let body = match fetch.await {
                Ok(body) => body,
                Err(e) => {
                    metrics.observe(kind, false, 0, started.elapsed());
                    return Err(e);
                }
            };
            let count = Count {
                kind,
                metrics,
                started,
                bytes: 0,
                ok: true,
            };
            Ok(body
                .scan(count, |count, chunk| {
                    match &chunk {
                        Ok(b) => count.bytes += b.len() as u64,
                        Err(_) => count.ok = false,
                    }
                    futures::future::ready(Some(chunk))
                })
                .boxed())
        }
        .boxed()
    }
}

/// What a streamed fetch delivered, counted when it is dropped (ended, failed or abandoned).
struct Count {
    kind: &'static str,
    metrics: OriginMetrics,
    started: Instant,
    bytes: u64,
    ok: bool,
}

impl Drop for Count {
    fn drop(&mut self) {
        self.metrics
            .observe(self.kind, self.ok, self.bytes, self.started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<Bytes, SourceError>);

    impl RangeSource for Fixed {
        fn fetch(
            &self,
            _: Range<u64>,
            _: Priority,
        ) -> BoxFuture<'static, Result<Bytes, SourceError>> {
            let r = self.0.clone();
            async move { r }.boxed()
        }
    }

    #[tokio::test]
    async fn every_fetch_is_counted_by_kind_and_result() {
        let registry = Registry::new();
        let metrics = OriginMetrics::new(&registry);
        let ok = Metered::new(
            Arc::new(Fixed(Ok(Bytes::from_static(b"abcd")))),
            "http",
            metrics.clone(),
        );
        let bad = Metered::new(
            Arc::new(Fixed(Err(SourceError::new("down".into(), true)))),
            "registry",
            metrics.clone(),
        );
        ok.fetch(0..4, Priority::OnDemand).await.unwrap();
        ok.fetch(0..4, Priority::Background).await.unwrap();
        assert!(bad.fetch(0..4, Priority::OnDemand).await.is_err());
        assert_eq!(metrics.fetches.with_label_values(&["http", "ok"]).get(), 2);
        assert_eq!(metrics.bytes.with_label_values(&["http"]).get(), 8);
        assert_eq!(
            metrics
                .fetches
                .with_label_values(&["registry", "error"])
                .get(),
            1
        );
    }

    /// A streamed fetch is counted once, when its stream ends, with the bytes it delivered; one
    /// that fails to start is counted as an error.
    #[tokio::test]
    async fn a_streamed_fetch_is_counted_once_it_ends() {
        let metrics = OriginMetrics::unregistered();
        let ok = Metered::new(
            Arc::new(Fixed(Ok(Bytes::from_static(b"abcdef")))),
            "registry",
            metrics.clone(),
        );
        let mut body = ok.fetch_stream(0..6, Priority::OnDemand).await.unwrap();
        let ok_count = || metrics.fetches.with_label_values(&["registry", "ok"]).get();
        assert_eq!(ok_count(), 0, "not counted while the body is unread");
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b"abcdef");
        assert!(body.next().await.is_none());
        drop(body);
        assert_eq!(ok_count(), 1);
        assert_eq!(metrics.bytes.with_label_values(&["registry"]).get(), 6);

        let bad = Metered::new(
            Arc::new(Fixed(Err(SourceError::new("down".into(), true)))),
            "registry",
            metrics.clone(),
        );
        assert!(bad.fetch_stream(0..6, Priority::OnDemand).await.is_err());
        let errors = metrics.fetches.with_label_values(&["registry", "error"]);
        assert_eq!(errors.get(), 1);
    }
}
