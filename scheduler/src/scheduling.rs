//! Answering FindParents: sample the peers that hold pieces of the task, drop the ones this
//! peer must not use, score the rest, return the best; with none, make the peer wait for a seed
//! peer (triggering one if the task has none) or send it to the origin.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dragonfly_proto::scheduler as pb;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::config::SchedulingConfig;
use crate::evaluator::{score, Candidate, Child};
use crate::state::{HostInfo, PeerState, SeedStatus, State, StateError, TaskState};

/// At most this many pieces per FindParents.
pub const MAX_PIECES_PER_REQUEST: usize = 4096;

/// How an on-demand seed parent that has no peer of the task yet is named (`host:<host id>`),
/// so a report that it is unreachable still finds the seed.
pub const HOST_PARENT_PREFIX: &str = "host:";

/// A seed peer to start on a task (done by the caller, outside every lock).
#[derive(Debug)]
pub struct SeedTrigger {
    /// The seed host.
    pub host: HostInfo,
    /// The task, with origin headers.
    pub task: pb::Task,
    /// Fill at background priority (the seed serves demand first); preheats fill at full
    /// speed.
    pub background: bool,
}

/// The seed host responsible for `task`: rendezvous hashing over the seed hosts, so every
/// scheduler picks the same one and tasks spread evenly.
pub fn pick_seed<'a>(
    task: &str,
    seeds: impl Iterator<Item = &'a HostInfo>,
) -> Option<&'a HostInfo> {
    seeds.max_by_key(|h| {
        let d = Sha256::new()
            .chain_update(task.as_bytes())
            .chain_update([0])
            .chain_update(h.id.as_bytes())
            .finalize();
        u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
    })
}

fn response(decision: pb::Decision, reason: &str) -> pb::FindParentsResponse {
    pb::FindParentsResponse {
        decision: decision as i32,
        reason: reason.to_owned(),
        ..Default::default()
    }
}

/// The best `limit` parents for `child` among the task's holders: a random sample of at most
/// `scan_limit` holders, skipping the child itself, its own host, blocklisted and avoided
/// peers and peers with none of `pieces`, scored until `filter_parent_limit` candidates.
fn scan_candidates<'t>(
    t: &'t TaskState,
    hosts: &HashMap<Arc<str>, HostInfo>,
    child: &PeerState,
    pieces: &[u32],
    cfg: &SchedulingConfig,
    limit: usize,
    rng: &mut impl Rng,
) -> Result<Vec<(f64, &'t Arc<str>)>, StateError> {
    let child_host = hosts
        .get(&child.host_id)
        .ok_or_else(|| StateError::UnknownHost(child.host_id.to_string()))?;
    let child_place = Child {
        idc: &child_host.idc,
        location: &child_host.location,
    };
    let mut scored: Vec<(f64, &Arc<str>)> = Vec::with_capacity(cfg.filter_parent_limit.min(64));
    let n = t.holders.len();
    if n == 0 || pieces.is_empty() {
        return Ok(Vec::new());
    }
    let start = rng.random_range(0..n);
    for i in 0..n.min(cfg.scan_limit) {
        let id = &t.holders[(start + i) % n];
        if *id == child.id || t.blocklist.contains(id) || child.avoid.contains(id) {
            continue;
        }
        let Some(p) = t.peers.get(id) else { continue };
        if p.host_id == child.host_id {
            continue;
        }
        let Some(host) = hosts.get(&p.host_id) else {
            continue;
        };
        let has = pieces.iter().filter(|n| p.pieces.contains(**n)).count();
        if has == 0 {
            continue;
        }
        let s = score(
            child_place,
            Candidate {
                has,
                asked: pieces.len(),
                active_uploads: host.active_uploads,
                upload_slots: host.upload_slots,
                uploads_ok: p.uploads_ok,
                uploads_failed: p.uploads_failed,
                cost_ms: p.cost_ms,
                idc: &host.idc,
                location: &host.location,
                seed: host.seed,
                complete: t.is_complete(p),
            },
        );
        scored.push((s, id));
        if scored.len() >= cfg.filter_parent_limit {
            break;
        }
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.truncate(limit);
    Ok(scored)
}

/// The answer entries of the chosen parents: address and which of `pieces` each has.
fn to_parents(
    t: &TaskState,
    hosts: &HashMap<Arc<str>, HostInfo>,
    pieces: &[u32],
    chosen: Vec<(f64, &Arc<str>)>,
) -> Vec<pb::Parent> {
    chosen
        .into_iter()
        .filter_map(|(s, id)| {
            let p = t.peers.get(id)?;
            let host = hosts.get(&p.host_id)?;
            Some(pb::Parent {
                peer_id: id.to_string(),
                host_id: host.id.to_string(),
                ip: host.ip.clone(),
                upload_port: host.upload_port,
                pieces: pieces
                    .iter()
                    .copied()
                    .filter(|n| p.pieces.contains(*n))
                    .collect(),
                score: s,
                tcp_pieces: host.tcp_pieces,
                on_demand: false,
            })
        })
        .collect()
}

/// Decides for one FindParents request.
pub fn find_parents(
    state: &State,
    cfg: &SchedulingConfig,
    req: &pb::FindParentsRequest,
    rng: &mut impl Rng,
) -> Result<(pb::FindParentsResponse, Option<SeedTrigger>), StateError> {
    if req.pieces.len() > MAX_PIECES_PER_REQUEST {
        return Err(StateError::Invalid(format!(
            "at most {MAX_PIECES_PER_REQUEST} pieces per request"
        )));
    }
    let task = state
        .task(&req.task_id)
        .ok_or_else(|| StateError::UnknownTask(req.task_id.clone()))?;
    let mut t = task.lock().expect("task lock");
    let child = t
        .peers
        .get(req.peer_id.as_str())
        .ok_or_else(|| StateError::UnknownPeer(req.peer_id.clone(), req.task_id.clone()))?;
    let child_host_id = child.host_id.clone();
    let limit = match req.limit as usize {
        0 => cfg.candidate_parent_limit,
        n => n.min(20),
    };
    let digests: Vec<pb::PieceInfo> = req
        .pieces
        .iter()
        .filter_map(|n| {
            t.piece_digests.get(n).map(|d| pb::PieceInfo {
                number: *n,
                digest: d.clone(),
                length: 0,
            })
        })
        .collect();
    // Holders are offered only for pieces whose digest is recorded (by the seed or a peer
    // sent to the origin): what they send can be checked on arrival, and blamed on them.
    let recorded: Vec<u32> = digests.iter().map(|d| d.number).collect();
    // Score candidates without allocating; build the answer for the winners only.
    let parents = state.with_hosts(|hosts| -> Result<_, StateError> {
        let chosen = scan_candidates(&t, hosts, child, &recorded, cfg, limit, rng)?;
        Ok(to_parents(&t, hosts, &recorded, chosen))
    })?;
    if !parents.is_empty() {
        if let Some(c) = t.peers.get_mut(req.peer_id.as_str()) {
            c.waiting_since = None;
        }
        let mut r = response(pb::Decision::Parents, "");
        r.parents = parents;
        r.digests = digests;
        return Ok((r, None));
    }
    // Nobody has the pieces.
    let child_is_seed = state.host(&child_host_id).is_some_and(|h| h.seed);
    let ask = Asker {
        peer_id: &req.peer_id,
        host: &child_host_id,
        is_seed: child_is_seed,
        urgent: req.urgent,
        pieces: &req.pieces,
    };
    let (mut resp, trigger) = decide_without_parents(state, cfg, &mut t, &ask);
    resp.digests = digests;
    Ok((resp, trigger))
}

/// Who asks for pieces nobody has.
struct Asker<'a> {
    peer_id: &'a str,
    host: &'a Arc<str>,
    is_seed: bool,
    /// A reader waits for the pieces.
    urgent: bool,
    pieces: &'a [u32],
}

/// `seed` as the parent that fetches `pieces` from the origin on demand, unless it cannot
/// (an old peer service) or the child stopped trusting it.
fn demand_parent(
    t: &TaskState,
    seed: &HostInfo,
    ask: &Asker<'_>,
) -> Option<pb::FindParentsResponse> {
    let peer_id = t
        .peers
        .values()
        .find(|p| p.host_id == seed.id)
        .map(|p| p.id.to_string())
        .unwrap_or_else(|| format!("{HOST_PARENT_PREFIX}{}", seed.id));
    let avoided = t
        .peers
        .get(ask.peer_id)
        .is_some_and(|c| c.avoid.contains(peer_id.as_str()));
    if !ask.urgent || !seed.demand_pieces || avoided {
        return None;
    }
    let mut r = response(
        pb::Decision::Parents,
        "the seed peer fetches the pieces from the origin now",
    );
    r.parents = vec![pb::Parent {
        peer_id,
        host_id: seed.id.to_string(),
        ip: seed.ip.clone(),
        upload_port: seed.upload_port,
        pieces: ask.pieces.to_vec(),
        score: 0.0,
        tcp_pieces: seed.tcp_pieces,
        on_demand: true,
    }];
    Some(r)
}

/// No peer holds the pieces: a waiting reader is sent to the seed, which fetches them on
/// demand (triggering the seed first if the task has none); a background fill waits for the
/// seed's own fill; the seed itself, a peer already at the origin, or anyone when no seed can
/// help, fetches from the origin.
fn decide_without_parents(
    state: &State,
    cfg: &SchedulingConfig,
    t: &mut TaskState,
    ask: &Asker<'_>,
) -> (pb::FindParentsResponse, Option<SeedTrigger>) {
    let wait = |reason: &str| {
        let mut r = response(pb::Decision::Wait, reason);
        r.retry_after_ms = cfg.retry_after_ms;
        r
    };
    let now = Instant::now();
    let seed_wait = Duration::from_millis(cfg.seed_wait_timeout_ms);
    let already_origin = t.peers.get(ask.peer_id).is_some_and(|p| p.back_to_source);
    if ask.is_seed || already_origin {
        return back_to_source(
            t,
            ask.peer_id,
            "seed peers and peers already at the origin fetch from it",
        );
    }
    match t.seed.clone() {
        SeedStatus::Triggered { host, at } => {
            let progress = t.last_seed_piece.map_or(at, |p| p.max(at));
            if let Some(seed) = state.host(&host) {
                if let Some(r) = demand_parent(t, &seed, ask) {
                    return (r, None);
                }
                // A waiting reader that cannot use the seed goes to the origin now.
                if now.duration_since(progress) < seed_wait && !ask.urgent {
                    return (
                        wait("a seed peer is fetching the task from the origin"),
                        None,
                    );
                }
            }
        }
        SeedStatus::Failed { at } if now.duration_since(at) < seed_wait => {}
        // A task no peer has named a URL for (registered only by peers that restarted with
        // it stored) cannot be fetched by a seed: the asker goes to the origin it knows.
        SeedStatus::None | SeedStatus::Failed { .. } if !t.url.is_empty() => {
            let seeds = state.seed_hosts();
            if let Some(seed) = pick_seed(&t.id, seeds.iter().filter(|h| h.id != *ask.host)) {
                t.seed = SeedStatus::Triggered {
                    host: seed.id.clone(),
                    at: now,
                };
                // Triggered by a reader blocked on chunks, the seed's fill yields to demand;
                // by a whole-blob download, the fill is what everyone waits for: full speed.
                let trigger = Some(SeedTrigger {
                    host: seed.clone(),
                    task: t.to_proto(),
                    background: ask.urgent,
                });
                let answer = demand_parent(t, seed, ask)
                    .unwrap_or_else(|| wait("triggered a seed peer for the task"));
                return (answer, trigger);
            }
        }
        SeedStatus::None | SeedStatus::Failed { .. } => {}
    }
    if t.back_to_source_peers() >= cfg.back_to_source_limit {
        return (
            wait("too many peers of this task are fetching from the origin"),
            None,
        );
    }
    back_to_source(
        t,
        ask.peer_id,
        "no peer has the pieces and no seed peer can fetch them",
    )
}

fn back_to_source(
    t: &mut TaskState,
    peer_id: &str,
    reason: &str,
) -> (pb::FindParentsResponse, Option<SeedTrigger>) {
    if let Some(p) = t.peers.get_mut(peer_id) {
        p.back_to_source = true;
    }
    (response(pb::Decision::BackToSource, reason), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use rand::SeedableRng;

    fn host(id: &str, seed: bool, idc: &str) -> pb::Host {
        pb::Host {
            id: id.into(),
            hostname: id.into(),
            ip: "127.0.0.1".into(),
            upload_port: 4000,
            r#type: if seed {
                pb::HostType::Seed
            } else {
                pb::HostType::Normal
            } as i32,
            idc: idc.into(),
            location: String::new(),
            upload_slots: 10,
            tcp_pieces: true,
            demand_pieces: true,
        }
    }

    fn task() -> pb::Task {
        pb::Task {
            id: "sha256:task".into(),
            content_length: 10 * 65536,
            piece_length: 65536,
            url: "oci://r/x@sha256:task".into(),
            digest: String::new(),
            origin_headers: [("authorization".to_string(), "Bearer secret".to_string())].into(),
        }
    }

    fn digest(n: u32) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(n.to_be_bytes())))
    }

    fn piece(peer: &str, n: u32, parent: &str) -> pb::PieceFinished {
        pb::PieceFinished {
            peer_id: peer.into(),
            task_id: "sha256:task".into(),
            piece: Some(pb::PieceInfo {
                number: n,
                digest: digest(n),
                length: 65536,
            }),
            parent_id: parent.into(),
            cost_ms: 10,
        }
    }

    fn ask(
        state: &State,
        cfg: &SchedulingConfig,
        peer: &str,
        pieces: &[u32],
    ) -> (pb::FindParentsResponse, Option<SeedTrigger>) {
        ask_as(state, cfg, peer, pieces, false)
    }

    fn ask_as(
        state: &State,
        cfg: &SchedulingConfig,
        peer: &str,
        pieces: &[u32],
        urgent: bool,
    ) -> (pb::FindParentsResponse, Option<SeedTrigger>) {
        let req = pb::FindParentsRequest {
            peer_id: peer.into(),
            task_id: "sha256:task".into(),
            pieces: pieces.to_vec(),
            limit: 0,
            urgent,
        };
        find_parents(state, cfg, &req, &mut rand::rngs::StdRng::seed_from_u64(1)).unwrap()
    }

    fn decision(r: &pb::FindParentsResponse) -> pb::Decision {
        pb::Decision::try_from(r.decision).unwrap()
    }

    /// Hosts a..e (normal), peers pa..pe registered on the task.
    fn swarm(seed_host: bool) -> State {
        let s = State::default();
        for h in ["a", "b", "c", "d", "e"] {
            s.announce_host(1000, &host(h, false, if h == "c" { "dc1" } else { "dc2" }))
                .unwrap();
            s.register_peer(h, &format!("p{h}"), &task()).unwrap();
        }
        if seed_host {
            s.announce_host(1000, &host("seed", true, "")).unwrap();
        }
        s
    }

    /// Marks `peer` as sent to the origin by the scheduler (what a BackToSource answer does).
    fn sent_to_origin(s: &State, peer: &str) {
        let task = s.task("sha256:task").unwrap();
        task.lock()
            .unwrap()
            .peers
            .get_mut(peer)
            .unwrap()
            .back_to_source = true;
    }

    #[test]
    fn parents_are_ranked_and_filtered() {
        let s = swarm(false);
        let cfg = SchedulingConfig::default();
        sent_to_origin(&s, "pc");
        // pb has 1 piece, pc has 3 (origin), pd has 3 but is avoided later.
        for n in 0..3 {
            s.piece_finished(&piece("pc", n, "")).unwrap();
            s.piece_finished(&piece("pd", n, "pc")).unwrap();
        }
        s.piece_finished(&piece("pb", 0, "pc")).unwrap();
        // A second peer of host a must never be its own host's parent.
        s.register_peer("a", "pa2", &task()).unwrap();
        s.piece_finished(&piece("pa2", 0, "pc")).unwrap();
        let (r, trig) = ask(&s, &cfg, "pa", &[0, 1, 2]);
        assert!(trig.is_none());
        assert_eq!(decision(&r), pb::Decision::Parents);
        let ids: Vec<&str> = r.parents.iter().map(|p| p.peer_id.as_str()).collect();
        assert!(!ids.contains(&"pa") && !ids.contains(&"pa2"), "{ids:?}");
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert_eq!(ids[2], "pb", "fewest pieces ranks last: {ids:?}");
        assert_eq!(
            r.parents.iter().find(|p| p.peer_id == "pb").unwrap().pieces,
            vec![0]
        );
        assert_eq!(r.digests.len(), 3);
        assert_eq!(r.digests[1].digest, digest(1));

        // Reported failures keep a parent away from this child; corruption from everyone.
        s.bad_parent(&pb::ReportBadParentRequest {
            peer_id: "pa".into(),
            task_id: "sha256:task".into(),
            parent_id: "pd".into(),
            corrupt: false,
            reason: "timeout".into(),
            unreachable: false,
        })
        .unwrap();
        s.bad_parent(&pb::ReportBadParentRequest {
            peer_id: "pe".into(),
            task_id: "sha256:task".into(),
            parent_id: "pc".into(),
            corrupt: true,
            reason: "digest".into(),
            unreachable: false,
        })
        .unwrap();
        let (r, _) = ask(&s, &cfg, "pa", &[0, 1, 2]);
        let ids: Vec<&str> = r.parents.iter().map(|p| p.peer_id.as_str()).collect();
        assert_eq!(ids, vec!["pb"]);
        let (r, _) = ask(&s, &cfg, "pb", &[1]);
        let ids: Vec<&str> = r.parents.iter().map(|p| p.peer_id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["pd"],
            "pc is blocklisted for the task, pd still fine for others"
        );
    }

    #[test]
    fn contradicting_digests_are_refused_and_bad_input_is_an_error() {
        let s = swarm(false);
        sent_to_origin(&s, "pc");
        assert!(s.piece_finished(&piece("pc", 1, "")).unwrap());
        let mut liar = piece("pd", 1, "");
        liar.piece.as_mut().unwrap().digest = digest(99);
        assert!(!s.piece_finished(&liar).unwrap());
        let (r, _) = ask(&s, &SchedulingConfig::default(), "pa", &[1]);
        assert_eq!(
            r.parents.len(),
            1,
            "the refused report did not make pd a holder"
        );
        assert!(
            matches!(
                s.piece_finished(&piece("pc", 10, "")),
                Err(StateError::Invalid(_))
            ),
            "past the end"
        );
        let mut bad = piece("pc", 1, "");
        bad.piece.as_mut().unwrap().digest = "md5:x".into();
        assert!(matches!(
            s.piece_finished(&bad),
            Err(StateError::Invalid(_))
        ));
        assert!(matches!(
            s.piece_finished(&piece("nobody", 1, "")),
            Err(StateError::UnknownPeer(..))
        ));
        assert!(matches!(
            s.register_peer("ghost", "p", &task()),
            Err(StateError::UnknownHost(_))
        ));
        let mut t = task();
        t.piece_length = 1000;
        assert!(matches!(
            s.register_peer("a", "p", &t),
            Err(StateError::Invalid(_))
        ));
    }

    #[test]
    fn without_parents_a_seed_is_triggered_once_and_peers_wait_for_it() {
        let s = swarm(true);
        let cfg = SchedulingConfig::default();
        let (r, trig) = ask(&s, &cfg, "pa", &[0]);
        assert_eq!(decision(&r), pb::Decision::Wait);
        let trig = trig.expect("a seed trigger");
        assert_eq!(&*trig.host.id, "seed");
        assert!(
            !trig.background,
            "a whole-blob download waits for the fill: it runs at full speed"
        );
        assert_eq!(trig.task.origin_headers["authorization"], "Bearer secret");
        let (r, trig) = ask(&s, &cfg, "pb", &[0]);
        assert_eq!(decision(&r), pb::Decision::Wait);
        assert!(trig.is_none(), "triggered once");
        // The seed registers, goes to the origin, reports a piece: it becomes a parent.
        s.register_peer("seed", "pseed", &task()).unwrap();
        let (r, _) = ask(&s, &cfg, "pseed", &[0]);
        assert_eq!(decision(&r), pb::Decision::BackToSource);
        s.piece_finished(&piece("pseed", 0, "")).unwrap();
        let (r, _) = ask(&s, &cfg, "pa", &[0]);
        assert_eq!(decision(&r), pb::Decision::Parents);
        assert_eq!(r.parents[0].peer_id, "pseed");
    }

    /// A task registered without a URL (by a peer offering what it stored before a restart)
    /// triggers no seed; once a peer names the URL, the next asker's does.
    #[test]
    fn a_task_without_a_url_triggers_no_seed_until_a_peer_names_one() {
        let s = State::default();
        s.announce_host(1000, &host("a", false, "")).unwrap();
        s.announce_host(1000, &host("b", false, "")).unwrap();
        s.announce_host(1000, &host("seed", true, "")).unwrap();
        let stored = pb::Task {
            url: String::new(),
            ..task()
        };
        s.register_peer("a", "pa", &stored).unwrap();
        let cfg = SchedulingConfig::default();
        let (r, trig) = ask(&s, &cfg, "pa", &[0]);
        assert!(trig.is_none(), "a seed cannot fetch a task without a URL");
        assert_eq!(decision(&r), pb::Decision::BackToSource);
        s.register_peer("b", "pb", &task()).unwrap();
        let (_, trig) = ask(&s, &cfg, "pb", &[1]);
        assert_eq!(trig.expect("a seed trigger").task.url, task().url);
    }

    #[test]
    fn a_waiting_reader_is_sent_to_the_seed_on_demand_and_a_fill_waits() {
        let s = swarm(true);
        let cfg = SchedulingConfig::default();
        let (r, trig) = ask_as(&s, &cfg, "pa", &[0, 1], true);
        assert_eq!(decision(&r), pb::Decision::Parents);
        let seed = &r.parents[0];
        assert!(seed.on_demand && seed.pieces == [0, 1], "{r:?}");
        assert_eq!(
            seed.peer_id, "host:seed",
            "the seed has no peer of the task yet"
        );
        let trig = trig.expect("the seed is triggered");
        assert!(trig.background, "its fill yields to demand");
        // Another reader shares the seed (the seed's store fetches a piece once); a background
        // fill waits for the seed instead of adding demand.
        let (r, trig) = ask_as(&s, &cfg, "pb", &[1], true);
        assert!(trig.is_none() && r.parents[0].on_demand);
        assert_eq!(decision(&ask(&s, &cfg, "pc", &[1]).0), pb::Decision::Wait);
        // Once the seed has a peer, that peer is named.
        s.register_peer("seed", "pseed", &task()).unwrap();
        let (r, _) = ask_as(&s, &cfg, "pa", &[2], true);
        assert_eq!(r.parents[0].peer_id, "pseed");
        // A reader that found the seed failing is not sent back to it, nor made to wait: it
        // goes to the origin; an unreachable seed sends everyone there.
        let bad = |parent: &str, unreachable: bool| pb::ReportBadParentRequest {
            peer_id: "pa".into(),
            task_id: "sha256:task".into(),
            parent_id: parent.into(),
            corrupt: false,
            reason: "fetch failed".into(),
            unreachable,
        };
        s.bad_parent(&bad("pseed", false)).unwrap();
        assert_eq!(
            decision(&ask_as(&s, &cfg, "pa", &[2], true).0),
            pb::Decision::BackToSource
        );
        s.bad_parent(&bad("host:seed", true)).unwrap();
        assert_eq!(
            decision(&ask_as(&s, &cfg, "pb", &[2], true).0),
            pb::Decision::BackToSource
        );
    }

    #[test]
    fn peers_go_to_the_origin_when_no_seed_can_help() {
        let s = swarm(false);
        let cfg = SchedulingConfig {
            back_to_source_limit: 2,
            ..Default::default()
        };
        assert_eq!(
            decision(&ask(&s, &cfg, "pa", &[0]).0),
            pb::Decision::BackToSource
        );
        assert_eq!(
            decision(&ask(&s, &cfg, "pb", &[0]).0),
            pb::Decision::BackToSource
        );
        assert_eq!(
            decision(&ask(&s, &cfg, "pc", &[0]).0),
            pb::Decision::Wait,
            "origin limit reached"
        );
        // A seed that stops making progress is given up on.
        let s = swarm(true);
        let cfg = SchedulingConfig {
            seed_wait_timeout_ms: 0,
            ..Default::default()
        };
        let (r, trig) = ask(&s, &cfg, "pa", &[0]);
        assert!(trig.is_some() && decision(&r) == pb::Decision::Wait);
        assert_eq!(
            decision(&ask(&s, &cfg, "pa", &[0]).0),
            pb::Decision::BackToSource
        );
        // A seed that failed to trigger sends peers to the origin.
        let s = swarm(true);
        let cfg = SchedulingConfig::default();
        ask(&s, &cfg, "pa", &[0]);
        s.task("sha256:task").unwrap().lock().unwrap().seed =
            SeedStatus::Failed { at: Instant::now() };
        assert_eq!(
            decision(&ask(&s, &cfg, "pb", &[0]).0),
            pb::Decision::BackToSource
        );
    }

    #[test]
    fn an_unreachable_seed_is_not_waited_for() {
        let s = swarm(true);
        let cfg = SchedulingConfig::default();
        let (_, trig) = ask(&s, &cfg, "pa", &[0, 1]);
        assert!(trig.is_some());
        s.register_peer("seed", "pseed", &task()).unwrap();
        s.piece_finished(&piece("pseed", 0, "")).unwrap();
        let bad = |parent: &str, unreachable: bool| pb::ReportBadParentRequest {
            peer_id: "pa".into(),
            task_id: "sha256:task".into(),
            parent_id: parent.into(),
            corrupt: false,
            reason: "GetPiece 0: connection refused".into(),
            unreachable,
        };
        // A refused request (no free slot) keeps the seed: peers still wait for piece 1.
        s.bad_parent(&bad("pseed", false)).unwrap();
        assert_eq!(decision(&ask(&s, &cfg, "pb", &[1]).0), pb::Decision::Wait);
        // An unreachable seed: waiting peers go to the origin instead.
        s.bad_parent(&bad("pseed", true)).unwrap();
        assert_eq!(
            decision(&ask(&s, &cfg, "pb", &[1]).0),
            pb::Decision::BackToSource
        );
    }

    /// A piece's digest is what the seed or a peer the scheduler sent to the origin reported;
    /// any other peer claiming a piece with no parent becomes a holder but records nothing.
    #[test]
    fn only_origin_facing_peers_record_piece_digests() {
        let cfg = SchedulingConfig::default();
        let recorded = |s: &State, n: u32| {
            let (r, _) = ask(s, &cfg, "pa", &[n]);
            r.digests
                .iter()
                .find(|d| d.number == n)
                .map(|d| d.digest.clone())
        };
        let s = swarm(true);
        s.register_peer("seed", "pseed", &task()).unwrap();
        let mut forged = piece("pd", 2, "");
        forged.piece.as_mut().unwrap().digest = digest(99);
        assert!(s.piece_finished(&forged).unwrap(), "a holder, but...");
        assert_eq!(recorded(&s, 2), None, "...its digest is not the piece's");
        assert!(s.piece_finished(&piece("pseed", 2, "")).unwrap());
        assert_eq!(recorded(&s, 2), Some(digest(2)), "the seed's report is");
        assert!(
            !s.piece_finished(&forged).unwrap(),
            "and now pd contradicts it"
        );
        // A child of a parent never records.
        assert!(s.piece_finished(&piece("pb", 3, "pseed")).unwrap());
        assert_eq!(recorded(&s, 3), None);

        // Without a seed, the peer the scheduler sends to the origin records.
        let s = swarm(false);
        let (r, _) = ask(&s, &cfg, "pe", &[4]);
        assert_eq!(decision(&r), pb::Decision::BackToSource, "{r:?}");
        assert!(s.piece_finished(&piece("pe", 4, "")).unwrap());
        assert_eq!(recorded(&s, 4), Some(digest(4)));
    }

    /// Hosts, tasks and peers per task stop at their limits; fields are bounded; unknown
    /// parents in reports record nothing.
    #[test]
    fn what_callers_make_the_scheduler_keep_is_bounded() {
        let s = State::with_limits(crate::state::Limits {
            max_hosts: 2,
            max_tasks: 1,
            max_peers_per_task: 2,
        });
        s.announce_host(1000, &host("a", false, "")).unwrap();
        s.announce_host(1000, &host("b", false, "")).unwrap();
        s.announce_host(1000, &host("a", false, "")).unwrap();
        let full = |e: Option<StateError>| matches!(e, Some(StateError::Full(_)));
        assert!(full(s.announce_host(1000, &host("c", false, "")).err()));
        s.register_peer("a", "pa", &task()).unwrap();
        s.register_peer("b", "pb", &task()).unwrap();
        assert!(full(s.register_peer("b", "pb2", &task()).err()));
        let mut other = task();
        other.id = "sha256:other".into();
        assert!(full(s.register_peer("a", "pa", &other).err()));

        let mut bad = host("d", false, "");
        bad.ip = "not-an-ip".into();
        assert!(matches!(
            s.announce_host(1000, &bad),
            Err(StateError::Invalid(_))
        ));
        bad.ip = "127.0.0.1".into();
        bad.location = "x".repeat(10_000);
        assert!(matches!(
            s.announce_host(1000, &bad),
            Err(StateError::Invalid(_))
        ));
        let mut huge = task();
        huge.id = "sha256:huge".into();
        huge.content_length = u64::MAX / 2;
        huge.piece_length = 16384;
        let s2 = State::default();
        s2.announce_host(1000, &host("a", false, "")).unwrap();
        assert!(matches!(
            s2.register_peer("a", "p", &huge),
            Err(StateError::Invalid(_))
        ));
        // A report about a parent nobody named is accepted and records nothing.
        s.bad_parent(&pb::ReportBadParentRequest {
            peer_id: "pa".into(),
            task_id: "sha256:task".into(),
            parent_id: "made-up".into(),
            corrupt: true,
            reason: "x".repeat(100_000),
            unreachable: false,
        })
        .unwrap();
        let t = s.task("sha256:task").unwrap();
        let t = t.lock().unwrap();
        assert!(t.blocklist.is_empty() && t.peers["pa"].avoid.is_empty());
    }

    #[test]
    fn silent_hosts_expire_with_their_peers() {
        let s = swarm(false);
        sent_to_origin(&s, "pc");
        s.piece_finished(&piece("pc", 0, "")).unwrap();
        let (r, _) = ask(&s, &SchedulingConfig::default(), "pa", &[0]);
        assert_eq!(r.parents.len(), 1, "{r:?}");
        std::thread::sleep(Duration::from_millis(20));
        for h in ["a", "b", "d", "e"] {
            assert!(s.keepalive(h, 0));
        }
        let (hosts, _) = s.expire(Duration::from_millis(10), Duration::from_secs(60));
        assert_eq!(hosts, 1);
        assert!(s.host("c").is_none() && !s.keepalive("c", 0));
        let (r, _) = ask(&s, &SchedulingConfig::default(), "pa", &[0]);
        assert!(r.parents.is_empty(), "expired host's peer is gone");
    }

    #[test]
    fn seeds_are_picked_stably_and_spread() {
        let s = State::default();
        for i in 0..4 {
            s.announce_host(1000, &host(&format!("seed{i}"), true, ""))
                .unwrap();
        }
        let seeds = s.seed_hosts();
        let mut counts = std::collections::HashMap::new();
        for t in 0..400 {
            let a = pick_seed(&format!("task{t}"), seeds.iter())
                .unwrap()
                .id
                .clone();
            let b = pick_seed(&format!("task{t}"), seeds.iter().rev())
                .unwrap()
                .id
                .clone();
            assert_eq!(a, b, "independent of order");
            *counts.entry(a).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|c| *c > 50), "{counts:?}");
    }
}
