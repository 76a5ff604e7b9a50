//! Benchmark: the manager's job API. 1,000 job creations (`POST /oapi/v1/jobs`) and 10,000
//! job polls (`GET /oapi/v1/jobs/{id}`) against a manager started in this process on a fresh
//! SQLite file (or PostgreSQL: `BENCH_DATABASE_URL`), each with 16 requests in flight, next to
//! `GET /healthy` (no database) as the same run's baseline. Prints requests/s and latency
//! percentiles and writes JSON to the first argument. Run by `scripts/bench.sh manager`.

use std::time::{Duration, Instant};

use dragonfly_manager::config::Config;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

const INFLIGHT: usize = 16;

struct Figures {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn measure<F, Fut>(n: usize, f: F) -> Figures
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let mut lat: Vec<Duration> = stream::iter(0..n)
        .map(|i| {
            let fut = f(i);
            async move {
                let t = Instant::now();
                fut.await;
                t.elapsed()
            }
        })
        .buffer_unordered(INFLIGHT)
        .collect()
        .await;
    let total = started.elapsed();
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    Figures {
        per_sec: n as f64 / total.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

#[tokio::main]
async fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench/manager.json".into());
    let dir = tempfile::Builder::new()
        .prefix("dfly-manager-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    config.database.url = std::env::var("BENCH_DATABASE_URL").unwrap_or_default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.grpc.listen = "127.0.0.1:0".parse().unwrap();
    config.auth.root_password = Some("bench-password".into());
    let backend = if config.database.url.is_empty() {
        "sqlite"
    } else {
        "postgres"
    };
    let running = dragonfly_manager::server::start(config).await.unwrap();
    let base = format!("http://{}", running.http);
    let http = reqwest::Client::new();
    // Set-up calls: POST `body` to `path` with `token`; the JSON answer.
    let post = |path: &str, token: &str, body: Value| {
        let r = http
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body);
        async move { r.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let v = post(
        "/api/v1/users/signin",
        "",
        json!({"name": "root", "password": "bench-password"}),
    )
    .await;
    let session = v["token"].as_str().unwrap().to_owned();
    let v = post(
        "/api/v1/personal-access-tokens",
        &session,
        json!({"name": "bench", "scopes": ["job", "cluster"]}),
    )
    .await;
    let token = v["token"].as_str().unwrap().to_owned();
    // A cluster whose rate limit does not get in the way.
    let v = post(
        "/oapi/v1/clusters",
        &token,
        json!({"name": "bench", "config": {"job_rate_limit": 1000000}}),
    )
    .await;
    let cluster = v["id"].as_i64().unwrap();

    let healthy = measure(10_000, |_| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http.get(format!("{base}/healthy")).send().await.unwrap();
            assert!(r.status().is_success());
        }
    })
    .await;
    let ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let create = measure(1_000, |i| {
        let (http, base, token, ids) = (http.clone(), base.clone(), token.clone(), ids.clone());
        async move {
            let r = http
                .post(format!("{base}/oapi/v1/jobs"))
                .bearer_auth(&token)
                .json(&json!({"type": "preheat", "args": {"type": "file", "url": format!("http://127.0.0.1:1/file-{i}")}, "scheduler_cluster_ids": [cluster]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201);
            let v: Value = r.json().await.unwrap();
            ids.lock().unwrap().push(v["id"].as_i64().unwrap());
        }
    })
    .await;
    let ids = ids.lock().unwrap().clone();
    let poll = measure(10_000, |i| {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        let id = ids[i % ids.len()];
        async move {
            let r = http
                .get(format!("{base}/oapi/v1/jobs/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    })
    .await;
    let json = json!({
        "bench": "manager_api",
        "database": backend,
        "inflight": INFLIGHT,
        "healthy": {"requests": 10000, "per_sec": healthy.per_sec, "p50_ms": healthy.p50_ms, "p99_ms": healthy.p99_ms},
        "job_create": {"requests": 1000, "per_sec": create.per_sec, "p50_ms": create.p50_ms, "p99_ms": create.p99_ms},
        "job_poll": {"requests": 10000, "per_sec": poll.per_sec, "p50_ms": poll.p50_ms, "p99_ms": poll.p99_ms},
        "create_vs_healthy": create.per_sec / healthy.per_sec,
        "poll_vs_healthy": poll.per_sec / healthy.per_sec,
    });
    if let Some(d) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(d).ok();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("{}", serde_json::to_string_pretty(&json).unwrap());
    println!(
        "manager ({backend}), {INFLIGHT} in flight: 1,000 job creations {:.0}/s (p99 {:.1} ms), 10,000 job polls {:.0}/s (p99 {:.1} ms); /healthy baseline {:.0}/s (p99 {:.1} ms)",
        create.per_sec, create.p99_ms, poll.per_sec, poll.p99_ms, healthy.per_sec, healthy.p99_ms
    );
}
