//! Benchmark: peer-to-peer piece throughput on loopback. A blob sits in a piece store served by
//! the real peer port (raw-TCP piece protocol and gRPC, as between nodes); the real clients
//! fetch every piece with N requests in flight: transport alone, then checking each piece's
//! sha256 like the P2P source does.
//! Baselines in the same run: reading the pieces straight from the store, and sha256 on one
//! core (the receiver's verification bounds what a 2-core node can take in).
//! The uploader runs on its own runtime (threads `bench-server`), so the CPU each side spends
//! per GB is measured apart: on a real cluster the two sides are different machines, and a
//! side's CPU per GB is what bounds it there.
//! Run by `scripts/bench.sh pieces`; prints figures and writes JSON to the first argument.

use std::sync::Arc;
use std::time::Instant;

use dragonfly_membership::{Ca, Identity, Role};
use dragonfly_proto::peer::GetPieceRequest;
use dragonfly_snapshotter::config::P2pConfig;
use dragonfly_snapshotter::metrics::Metrics;
use dragonfly_snapshotter::p2p::membership::Membership;
use dragonfly_snapshotter::p2p::piece_server;
use dragonfly_snapshotter::p2p::piece_wire::PieceRequest;
use dragonfly_snapshotter::p2p::upload::PeerService;
use dragonfly_snapshotter::p2p::{ParentClients, SchedulerPool};
use dragonfly_storage::testing::MemSource;
use dragonfly_storage::{PieceStore, Priority, StoreConfig};
use futures::stream::{self, StreamExt};
use sha2::{Digest, Sha256};

const SIZE: usize = 512 << 20;

/// Both ends of the bench as one member of a fresh cluster (mutual TLS on loopback).
fn tls_membership() -> Membership {
    let ca = Ca::create("bench").unwrap();
    let me = Identity::new(Role::Peer, "bench").unwrap();
    let creds = ca
        .credentials(
            &me,
            &["127.0.0.1".parse().unwrap()],
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    Membership {
        acceptor: dragonfly_membership::server::Acceptor::tls(&creds).unwrap(),
        dialer: dragonfly_membership::client::Dialer::tls(&creds).unwrap(),
        identity: Some(me),
    }
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

/// Prefix of the uploader runtime's thread names.
const SERVER_THREADS: &str = "bench-server";

/// CPU seconds used so far: (the receiving side: every thread but the uploader's, the
/// uploader's threads). The uploader's threads never exit (their keep-alive is long), so
/// their counters are complete.
fn cpu_by_side() -> (f64, f64) {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let total = secs(usage.user_time()) + secs(usage.system_time());
    let mut server = 0.0;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(SERVER_THREADS) {
            continue;
        }
        // First field: nanoseconds on a CPU.
        let ns: f64 = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        server += ns / 1e9;
    }
    (total - server, server)
}

/// One measured transfer: throughput and each side's CPU seconds per GB.
#[derive(Clone, Copy)]
struct Measured {
    gbps: f64,
    receiver_cpu_s_per_gb: f64,
    sender_cpu_s_per_gb: f64,
}

impl Measured {
    fn json(&self) -> String {
        format!(
            "{{\"gbps\": {:.3}, \"receiver_cpu_s_per_gb\": {:.3}, \"sender_cpu_s_per_gb\": {:.3}}}",
            self.gbps, self.receiver_cpu_s_per_gb, self.sender_cpu_s_per_gb
        )
    }
}

#[tokio::main]
async fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench/pieces.json".into());
    let piece_length: u32 = std::env::var("BENCH_PIECE_LENGTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(StoreConfig::default().piece_length);
    let dir = tempfile::Builder::new()
        .prefix("dfly-piece-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    let store = PieceStore::open(
        dir.path(),
        StoreConfig {
            piece_length,
            ..StoreConfig::default()
        },
    )
    .await
    .unwrap();
    let source = MemSource::new(data);
    let blob_bytes = source.data.clone();
    let blob = store.blob(&digest, SIZE as u64, Arc::new(source)).unwrap();
    blob.fetch_all(Priority::OnDemand).await.unwrap();
    let pieces = (SIZE as u64).div_ceil(u64::from(piece_length)) as u32;
    // What the scheduler would hand the receiver: the digest of every piece.
    let expected: Vec<Vec<u8>> = (0..pieces)
        .map(|n| {
            let s = n as usize * piece_length as usize;
            Sha256::digest(&blob_bytes[s..(s + piece_length as usize).min(SIZE)]).to_vec()
        })
        .collect();
    let expected = &expected;

    // Baseline: the store itself.
    let started = Instant::now();
    for n in 0..pieces {
        let s = u64::from(n) * u64::from(piece_length);
        let b = blob
            .read_local(s..(s + u64::from(piece_length)).min(SIZE as u64))
            .await
            .unwrap()
            .unwrap();
        std::hint::black_box(b);
    }
    let local = gbps(SIZE, started.elapsed().as_secs_f64());

    // The peer service on loopback.
    let config = P2pConfig {
        schedulers: vec!["127.0.0.1:1".into()],
        advertise_ip: Some("127.0.0.1".parse().unwrap()),
        upload_slots: 64,
        ..P2pConfig::default()
    };
    let tls = std::env::var("BENCH_TLS").is_ok_and(|v| v == "1");
    let membership = if tls {
        tls_membership()
    } else {
        Membership::plain()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // The uploader on a runtime of its own, as many workers as the receiver's, so its CPU is
    // counted apart; its store reads run on that runtime's blocking threads.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(SERVER_THREADS)
        .thread_keep_alive(std::time::Duration::from_secs(24 * 3600))
        .enable_all()
        .build()
        .unwrap();
    let (serving_store, acceptor) = (store.clone(), membership.acceptor.clone());
    let (pool_config, pool_membership) = (config.clone(), membership.clone());
    server_rt
        .spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let pool = SchedulerPool::new(&pool_config, port, false, &pool_membership)
                .await
                .unwrap();
            let service = Arc::new(PeerService::new(
                serving_store,
                64,
                pool,
                Metrics::new(),
                None,
                0,
            ));
            // The daemon's peer port: raw-TCP piece connections served directly, the rest
            // to gRPC.
            piece_server::serve_peer_port(listener, service, 1024, acceptor);
        })
        .await
        .unwrap();
    // The clients the P2P source uses.
    let parents = Arc::new(ParentClients::new(membership.dialer.clone()));
    let client = parents.get("127.0.0.1", u32::from(port)).unwrap();
    let pl = piece_length as usize;
    // One piece over either transport.
    let fetch = |n: u32, tcp: bool| {
        let (mut c, parents, digest) = (client.clone(), parents.clone(), digest.clone());
        async move {
            if tcp {
                let req = PieceRequest {
                    task_id: digest,
                    number: n,
                    peer_id: "bench".into(),
                    fetch: false,
                    fetch_until: 0,
                };
                parents
                    .get_piece_tcp("127.0.0.1", u32::from(port), &req, pl)
                    .await
                    .unwrap()
            } else {
                c.get_piece(GetPieceRequest {
                    task_id: digest,
                    number: n,
                    peer_id: "bench".into(),
                    fetch: false,
                    fetch_until: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .data
            }
        }
    };
    // Every piece with `inflight` requests at once, optionally checking each piece's sha256
    // on the blocking pool like the P2P source does.
    let run = |tcp: bool, verify: bool, inflight: usize| async move {
        let cpu_before = cpu_by_side();
        let started = Instant::now();
        let total: usize = stream::iter(0..pieces)
            .map(|n| async move {
                let data = fetch(n, tcp).await;
                if verify {
                    let d = data.clone();
                    let ok = tokio::task::spawn_blocking(move || Sha256::digest(&d).to_vec())
                        .await
                        .unwrap();
                    assert_eq!(ok, expected[n as usize], "piece {n}");
                }
                data.len()
            })
            .buffer_unordered(inflight)
            .fold(0, |a, b| async move { a + b })
            .await;
        assert_eq!(total, SIZE);
        let secs = started.elapsed().as_secs_f64();
        let cpu_after = cpu_by_side();
        let gb = SIZE as f64 / 1e9;
        Measured {
            gbps: gbps(SIZE, secs),
            receiver_cpu_s_per_gb: (cpu_after.0 - cpu_before.0) / gb,
            sender_cpu_s_per_gb: (cpu_after.1 - cpu_before.1) / gb,
        }
    };
    // Transport alone (what a parent can push), then with the receiver's mandatory check.
    let transport = run(false, false, 8).await.gbps;
    let tcp_transport_measured = run(true, false, 8).await;
    let tcp_transport = tcp_transport_measured.gbps;
    let hash_started = Instant::now();
    std::hint::black_box(Sha256::digest(&blob_bytes));
    let sha256 = gbps(SIZE, hash_started.elapsed().as_secs_f64());
    let mut results = Vec::new();
    let mut tcp_results = Vec::new();
    let mut tcp_verified_measured = None;
    for inflight in [1usize, 4, 8] {
        results.push((inflight, run(false, true, inflight).await.gbps));
        let tcp = run(true, true, inflight).await;
        tcp_results.push((inflight, tcp.gbps));
        tcp_verified_measured = Some(tcp);
    }
    let tcp_verified_measured = tcp_verified_measured.expect("ran");
    let best_of = |r: &[(usize, f64)]| r.iter().map(|r| r.1).fold(0.0, f64::max);
    let per = |r: &[(usize, f64)]| {
        r.iter()
            .map(|(n, g)| format!("\"{n}\": {g:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (best, tcp_best) = (best_of(&results), best_of(&tcp_results));
    let json = format!(
        "{{\n  \"bench\": \"piece_transfer\",\n  \"tls\": {tls},\n  \"bytes\": {SIZE},\n  \"piece_length\": {piece_length},\n  \"store_read_gbps\": {local:.3},\n  \"sha256_one_core_gbps\": {sha256:.3},\n  \"grpc_transport_only_gbps\": {transport:.3},\n  \"tcp_transport_only_gbps\": {tcp_transport:.3},\n  \"grpc_verified_gbps_by_inflight\": {{{}}},\n  \"tcp_verified_gbps_by_inflight\": {{{}}},\n  \"best_grpc_verified_gbps\": {best:.3},\n  \"best_tcp_verified_gbps\": {tcp_best:.3},\n  \"tcp_vs_grpc_transport\": {:.3},\n  \"tcp_verified_vs_sha256_one_core\": {:.3},\n  \"tcp_transport_8_inflight\": {},\n  \"tcp_verified_8_inflight\": {}\n}}\n",
        per(&results),
        per(&tcp_results),
        tcp_transport / transport,
        tcp_best / sha256,
        tcp_transport_measured.json(),
        tcp_verified_measured.json()
    );
    if let Some(d) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(d).ok();
    }
    std::fs::write(&out, &json).unwrap();
    print!("{json}");
    println!(
        "peer-to-peer pieces over loopback, {} KiB pieces: raw-TCP transport {tcp_transport:.2} GB/s (target >= 1.5 GB/s), gRPC {transport:.2} GB/s ({:.2}x); verified (sha256 per piece) raw-TCP {tcp_best:.2} GB/s, gRPC {best:.2} GB/s; sha256 on one core {sha256:.2} GB/s; store read {local:.2} GB/s",
        piece_length >> 10,
        tcp_transport / transport
    );
    // Not dropped inside this async context (that would block it).
    server_rt.shutdown_background();
}
