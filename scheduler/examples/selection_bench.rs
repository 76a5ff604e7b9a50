//! Benchmark: parent selections per second with 10,000 simulated peers, and the scheduler's
//! memory for them. Run by `scripts/bench.sh swarm` (release build); prints figures and writes
//! JSON to the path given as the first argument.
//!
//! The swarm: 10,000 hosts with one peer each on one task of 1,024 pieces; every peer holds a
//! random 30 % of the pieces. Each selection asks for 16 pieces for a random peer. The baseline
//! in the same run is a full scan (every holder scored), to show what sampling buys.

use std::time::Instant;

use dragonfly_proto::scheduler as pb;
use dragonfly_scheduler::config::SchedulingConfig;
use dragonfly_scheduler::scheduling::find_parents;
use dragonfly_scheduler::state::State;
use rand::{Rng, SeedableRng};

const PEERS: usize = 10_000;
const PIECES: u32 = 1024;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn selections_per_sec(state: &State, cfg: &SchedulingConfig, n: usize) -> f64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let started = Instant::now();
    let mut parents = 0usize;
    for _ in 0..n {
        let peer = rng.random_range(0..PEERS);
        let first = rng.random_range(0..PIECES - 16);
        let req = pb::FindParentsRequest {
            peer_id: format!("peer-{peer}"),
            task_id: "sha256:bench".into(),
            pieces: (first..first + 16).collect(),
            limit: 0,
            urgent: false,
        };
        let (r, _) = find_parents(state, cfg, &req, &mut rng).expect("selection");
        parents += r.parents.len();
    }
    assert!(parents > 0);
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/bench/scheduler.json".into());
    let rss_before = rss_kib();
    let state = State::default();
    let task = pb::Task {
        id: "sha256:bench".into(),
        content_length: u64::from(PIECES) << 20,
        piece_length: 1 << 20,
        ..Default::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for i in 0..PEERS {
        let id = format!("host-{i}");
        state
            .announce_host(
                1000,
                &pb::Host {
                    id: id.clone(),
                    hostname: id.clone(),
                    ip: format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                    upload_port: 4000,
                    r#type: pb::HostType::Normal as i32,
                    idc: format!("dc{}", i % 4),
                    location: format!("eu|r{}", i % 16),
                    upload_slots: 32,
                    tcp_pieces: true,
                    demand_pieces: true,
                },
            )
            .unwrap();
        state
            .register_peer(&id, &format!("peer-{i}"), &task)
            .unwrap();
        for n in 0..PIECES {
            if rng.random_bool(0.3) {
                state
                    .piece_finished(&pb::PieceFinished {
                        peer_id: format!("peer-{i}"),
                        task_id: "sha256:bench".into(),
                        piece: Some(pb::PieceInfo {
                            number: n,
                            digest: format!("sha256:{:064x}", n),
                            length: 1 << 20,
                        }),
                        parent_id: String::new(),
                        cost_ms: 3,
                    })
                    .unwrap();
            }
        }
    }
    let rss_after = rss_kib();
    let sampled = SchedulingConfig::default();
    let full = SchedulingConfig {
        filter_parent_limit: PEERS,
        scan_limit: PEERS,
        ..SchedulingConfig::default()
    };
    let fast = selections_per_sec(&state, &sampled, 200_000);
    let slow = selections_per_sec(&state, &full, 2_000);
    let json = format!(
        "{{\n  \"bench\": \"scheduler_selection\",\n  \"peers\": {PEERS},\n  \"pieces\": {PIECES},\n  \"selections_per_sec\": {fast:.0},\n  \"full_scan_selections_per_sec\": {slow:.0},\n  \"speedup_vs_full_scan\": {:.1},\n  \"memory_mib_for_swarm\": {:.1}\n}}\n",
        fast / slow,
        (rss_after.saturating_sub(rss_before)) as f64 / 1024.0
    );
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&out, &json).expect("write JSON");
    print!("{json}");
    println!(
        "parent selections with {PEERS} peers: {fast:.0}/s sampled (target >= 50000/s), {slow:.0}/s full scan => {:.1}x; swarm state {:.1} MiB",
        fast / slow,
        (rss_after.saturating_sub(rss_before)) as f64 / 1024.0
    );
}
