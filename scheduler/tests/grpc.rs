//! The real `dragonfly-scheduler` binary over gRPC: a swarm's conversation, a seed trigger
//! received by a peer service (test code speaking the proto), and malformed requests answered
//! with gRPC errors, never a crash.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dragonfly_proto::peer as peerpb;
use dragonfly_proto::peer::peer_server::{Peer, PeerServer};
use dragonfly_proto::scheduler as pb;
use dragonfly_proto::scheduler::scheduler_client::SchedulerClient;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

struct Scheduler {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start() -> (Scheduler, SchedulerClient<Channel>) {
    let (s, c) = start_with(|_| String::new()).await;
    (s, c.expect("a plain client"))
}

/// A scheduler whose config ends with what `extra` writes for its directory; with a plain
/// client unless the config gives it credentials.
async fn start_with(
    extra: impl FnOnce(&std::path::Path) -> String,
) -> (Scheduler, Option<SchedulerClient<Channel>>) {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = dir.path().join("scheduler.yaml");
    let extra = extra(dir.path());
    let tls = !extra.is_empty();
    std::fs::write(&cfg, format!("address: {addr}\nmetrics: {{address: null}}\nscheduling: {{keepalive_interval_secs: 1}}\n{extra}")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_dragonfly-scheduler"))
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Scheduler {
        child,
        addr: addr.clone(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tls {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return (s, None);
            }
        } else if let Ok(c) = SchedulerClient::connect(format!("http://{addr}")).await {
            return (s, Some(c));
        }
        assert!(Instant::now() < deadline, "scheduler did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn host(id: &str, port: u32, seed: bool) -> pb::AnnounceHostRequest {
    pb::AnnounceHostRequest {
        protocol: pb::PROTOCOL,
        fresh_start: false,
        host: Some(pb::Host {
            id: id.into(),
            hostname: id.into(),
            ip: "127.0.0.1".into(),
            upload_port: port,
            r#type: if seed {
                pb::HostType::Seed
            } else {
                pb::HostType::Normal
            } as i32,
            idc: String::new(),
            location: String::new(),
            upload_slots: 8,
            tcp_pieces: false,
            demand_pieces: false,
        }),
    }
}

fn task() -> pb::Task {
    pb::Task {
        id: "sha256:abc".into(),
        content_length: 4 << 20,
        piece_length: 1 << 20,
        url: "oci://127.0.0.1:5000/x@sha256:abc".into(),
        digest: String::new(),
        origin_headers: [("authorization".to_string(), "Basic c2VjcmV0".to_string())].into(),
    }
}

fn report(peer: &str, n: u32, parent: &str) -> pb::PieceFinished {
    pb::PieceFinished {
        peer_id: peer.into(),
        task_id: "sha256:abc".into(),
        piece: Some(pb::PieceInfo {
            number: n,
            digest: format!("sha256:{}", hex::encode(Sha256::digest([n as u8]))),
            length: 1 << 20,
        }),
        parent_id: parent.into(),
        cost_ms: 5,
    }
}

/// A seed peer's service that records triggers.
#[derive(Clone, Default)]
struct FakeSeed {
    triggers: Arc<Mutex<Vec<pb::Task>>>,
}

#[tonic::async_trait]
impl Peer for FakeSeed {
    async fn get_piece(
        &self,
        _r: Request<peerpb::GetPieceRequest>,
    ) -> Result<Response<peerpb::GetPieceResponse>, Status> {
        Err(Status::not_found("no pieces here"))
    }
    async fn trigger_download(
        &self,
        r: Request<peerpb::TriggerDownloadRequest>,
    ) -> Result<Response<peerpb::TriggerDownloadResponse>, Status> {
        self.triggers
            .lock()
            .unwrap()
            .push(r.into_inner().task.unwrap());
        Ok(Response::new(peerpb::TriggerDownloadResponse {
            started: true,
        }))
    }
    /// A triggered task is complete at once; anything else unknown.
    async fn stat_task(
        &self,
        r: Request<peerpb::StatTaskRequest>,
    ) -> Result<Response<peerpb::StatTaskResponse>, Status> {
        let id = r.into_inner().task_id;
        let size = self
            .triggers
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.id == id)
            .map(|t| t.content_length);
        Ok(Response::new(peerpb::StatTaskResponse {
            known: size.is_some(),
            complete: size.is_some(),
            content_length: size.unwrap_or(0),
            present_bytes: size.unwrap_or(0),
            ..Default::default()
        }))
    }
    /// A triggered task is held and deleted (the last one stays: "in use").
    async fn delete_task(
        &self,
        r: Request<peerpb::DeleteTaskRequest>,
    ) -> Result<Response<peerpb::DeleteTaskResponse>, Status> {
        let id = r.into_inner().task_id;
        let mut triggers = self.triggers.lock().unwrap();
        let Some(i) = triggers.iter().position(|t| t.id == id) else {
            return Ok(Response::new(peerpb::DeleteTaskResponse::default()));
        };
        let freed = triggers[i].content_length;
        triggers.remove(i);
        Ok(Response::new(peerpb::DeleteTaskResponse {
            held: true,
            deleted: true,
            freed_bytes: freed,
            reason: String::new(),
        }))
    }
}

impl FakeSeed {
    /// Serves a new fake seed on a free port; the seed (to inspect) and the port.
    fn serve() -> (FakeSeed, u16) {
        let seed = FakeSeed::default();
        let port = free_port();
        let svc = seed.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(svc))
                .serve(format!("127.0.0.1:{port}").parse().unwrap())
                .await
        });
        (seed, port)
    }
}

#[tokio::test]
async fn a_swarm_conversation_with_a_seed_trigger() {
    let (_s, mut c) = start().await;
    let (seed, seed_port) = FakeSeed::serve();
    c.announce_host(host("seed-1", seed_port as u32, true))
        .await
        .unwrap();
    for h in ["n1", "n2"] {
        let r = c
            .announce_host(host(h, 4000, false))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.keepalive_interval_secs, 1);
        c.register_peer(pb::RegisterPeerRequest {
            host_id: h.into(),
            peer_id: format!("p-{h}"),
            task: Some(task()),
        })
        .await
        .unwrap();
    }
    // Nobody has anything: wait for the seed, which gets the trigger with the credentials.
    let ask = |peer: &str| pb::FindParentsRequest {
        peer_id: peer.into(),
        task_id: "sha256:abc".into(),
        pieces: vec![0, 1, 2, 3],
        limit: 0,
        urgent: false,
    };
    let r = c.find_parents(ask("p-n1")).await.unwrap().into_inner();
    assert_eq!(r.decision, pb::Decision::Wait as i32, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while seed.triggers.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the seed was not triggered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = seed.triggers.lock().unwrap()[0].clone();
    assert_eq!(
        (t.id.as_str(), t.origin_headers["authorization"].as_str()),
        ("sha256:abc", "Basic c2VjcmV0")
    );

    // The seed downloads from the origin and reports on a stream; n1 then gets it as parent.
    c.register_peer(pb::RegisterPeerRequest {
        host_id: "seed-1".into(),
        peer_id: "p-seed".into(),
        task: Some(task()),
    })
    .await
    .unwrap();
    let r = c.find_parents(ask("p-seed")).await.unwrap().into_inner();
    assert_eq!(r.decision, pb::Decision::BackToSource as i32);
    let reports = tokio_stream::iter((0..4).map(|n| report("p-seed", n, "")));
    let ack = c.report_pieces(reports).await.unwrap().into_inner();
    assert_eq!((ack.accepted, ack.refused), (4, 0));
    let r = c.find_parents(ask("p-n1")).await.unwrap().into_inner();
    assert_eq!(r.decision, pb::Decision::Parents as i32);
    assert_eq!(r.parents[0].peer_id, "p-seed");
    assert_eq!(r.parents[0].upload_port, seed_port as u32);
    assert_eq!(r.digests.len(), 4);

    // n1 reports pieces it got from the seed; a corrupt report about the seed blocklists it.
    let ack = c
        .report_pieces(tokio_stream::iter(
            (0..2).map(|n| report("p-n1", n, "p-seed")),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.accepted, 2);
    c.report_bad_parent(pb::ReportBadParentRequest {
        peer_id: "p-n2".into(),
        task_id: "sha256:abc".into(),
        parent_id: "p-seed".into(),
        corrupt: true,
        reason: "digest mismatch".into(),
        unreachable: false,
    })
    .await
    .unwrap();
    let r = c.find_parents(ask("p-n2")).await.unwrap().into_inner();
    let ids: Vec<_> = r.parents.iter().map(|p| p.peer_id.as_str()).collect();
    assert_eq!(ids, vec!["p-n1"]);
    assert_eq!(r.parents[0].pieces, vec![0, 1]);
    c.leave_peer(pb::LeavePeerRequest {
        peer_id: "p-n1".into(),
        task_id: "sha256:abc".into(),
    })
    .await
    .unwrap();
    let r = c.find_parents(ask("p-n2")).await.unwrap().into_inner();
    assert!(r.parents.is_empty());
}

#[tokio::test]
async fn malformed_requests_get_grpc_errors_and_the_scheduler_lives_on() {
    let (mut s, mut c) = start().await;
    let mut old = host("n1", 4000, false);
    old.protocol = 2000;
    assert_eq!(
        c.announce_host(old).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let e = c
        .announce_host(pb::AnnounceHostRequest {
            protocol: pb::PROTOCOL,
            fresh_start: false,
            host: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut no_port = host("n1", 0, false);
    no_port.host.as_mut().unwrap().upload_port = 0;
    assert_eq!(
        c.announce_host(no_port).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let e = c
        .register_peer(pb::RegisterPeerRequest {
            host_id: "ghost".into(),
            peer_id: "p".into(),
            task: Some(task()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("AnnounceHost"), "{}", e.message());
    let e = c
        .find_parents(pb::FindParentsRequest {
            peer_id: "p".into(),
            task_id: "nope".into(),
            pieces: vec![1],
            limit: 0,
            urgent: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    c.announce_host(host("n1", 4000, false)).await.unwrap();
    c.register_peer(pb::RegisterPeerRequest {
        host_id: "n1".into(),
        peer_id: "p".into(),
        task: Some(task()),
    })
    .await
    .unwrap();
    let e = c
        .find_parents(pb::FindParentsRequest {
            peer_id: "p".into(),
            task_id: "sha256:abc".into(),
            pieces: vec![0; 5000],
            limit: 0,
            urgent: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut bad = report("p", 0, "");
    bad.piece = None;
    assert_eq!(
        c.report_pieces(tokio_stream::iter(vec![bad]))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    // Raw garbage on the HTTP/2 port does not take it down.
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let _ = raw
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x00\x01garbage")
        .await;
    drop(raw);
    assert!(s.child.try_wait().unwrap().is_none(), "scheduler crashed");
    // Hosts that stop keeping alive are expired (3 intervals of 1 s).
    assert!(
        c.keep_alive(pb::KeepAliveRequest {
            host_id: "n1".into(),
            active_uploads: 0
        })
        .await
        .unwrap()
        .into_inner()
        .known
    );
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(
        !c.keep_alive(pb::KeepAliveRequest {
            host_id: "n1".into(),
            active_uploads: 0
        })
        .await
        .unwrap()
        .into_inner()
        .known
    );
}

#[tokio::test]
async fn preheat_fills_the_scope_and_reports_per_host() {
    let (_s, mut c) = start().await;
    let (seed, seed_port) = FakeSeed::serve();
    let task = |n: u8| pb::Task {
        id: format!("sha256:{}", hex::encode(Sha256::digest([n]))),
        url: format!(
            "oci://127.0.0.1:5000/app@sha256:{}",
            hex::encode(Sha256::digest([n]))
        ),
        content_length: 100,
        ..Default::default()
    };
    let ask = |scope: pb::PreheatScope, tasks: Vec<pb::Task>| pb::PreheatRequest {
        tasks,
        scope: scope as i32,
        timeout_secs: 5,
        targets: None,
    };
    // No seed yet: a failed result that says so.
    let r = c
        .preheat(ask(pb::PreheatScope::SingleSeedPeer, vec![task(1)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 1);
    assert!(!r.results[0].ok && r.results[0].description.contains("no seed peer"));

    c.announce_host(host("seed-1", seed_port as u32, true))
        .await
        .unwrap();
    // A normal host whose peer port nobody listens on.
    c.announce_host(host("n1", free_port() as u32, false))
        .await
        .unwrap();
    let r = c
        .preheat(ask(
            pb::PreheatScope::SingleSeedPeer,
            vec![task(1), task(2)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 2);
    assert!(
        r.results.iter().all(|x| x.ok && x.host_id == "seed-1"),
        "{r:?}"
    );
    assert_eq!(seed.triggers.lock().unwrap().len(), 2);

    let r = c
        .preheat(ask(pb::PreheatScope::AllPeers, vec![task(3)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 2);
    let n1 = r.results.iter().find(|x| x.host_id == "n1").unwrap();
    assert!(!n1.ok && n1.description.contains("cannot"), "{n1:?}");
    assert!(r.results.iter().any(|x| x.host_id == "seed-1" && x.ok));
    let hosts = c
        .list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 2);

    // With live progress: what the seed holds as it gets it, then the same results.
    let mut events = c
        .preheat_with_progress(ask(pb::PreheatScope::AllPeers, vec![task(5)]))
        .await
        .unwrap()
        .into_inner();
    let (mut progress, mut done) = (Vec::new(), None);
    while let Some(e) = events.message().await.unwrap() {
        assert!(done.is_none(), "the results come last");
        progress.extend(e.progress);
        done = e.done;
    }
    assert!(
        progress.iter().any(|p| p.host_id == "seed-1"
            && p.task_id == task(5).id
            && (p.present_bytes, p.content_length) == (100, 100)),
        "{progress:?}"
    );
    let done = done.expect("a last event with the results");
    assert_eq!(done.results.len(), 2, "{done:?}");

    // Bad requests.
    for bad in [
        ask(pb::PreheatScope::AllPeers, vec![]),
        ask(
            pb::PreheatScope::AllPeers,
            vec![pb::Task {
                id: "sha256:nothex".into(),
                url: "x".into(),
                ..Default::default()
            }],
        ),
        pb::PreheatRequest {
            scope: 99,
            ..ask(pb::PreheatScope::AllPeers, vec![task(4)])
        },
    ] {
        let e = c.preheat(bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
}

#[tokio::test]
async fn get_task_names_the_holders_and_delete_task_evicts_them_everywhere() {
    let (_s, mut c) = start().await;
    let (seed, seed_port) = FakeSeed::serve();
    c.announce_host(host("seed-1", seed_port as u32, true))
        .await
        .unwrap();
    // A host whose peer port nobody listens on: its answer is a failure, not silence.
    c.announce_host(host("n1", free_port() as u32, false))
        .await
        .unwrap();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(b"layer")));
    let t = pb::Task {
        id: digest.clone(),
        content_length: 40_000,
        piece_length: 16 << 10,
        url: format!("oci://127.0.0.1:5000/app@{digest}"),
        ..Default::default()
    };
    c.preheat(pb::PreheatRequest {
        tasks: vec![t.clone()],
        scope: pb::PreheatScope::SingleSeedPeer as i32,
        timeout_secs: 5,
        targets: None,
    })
    .await
    .unwrap();
    c.register_peer(pb::RegisterPeerRequest {
        host_id: "seed-1".into(),
        peer_id: "seed-1-p".into(),
        task: Some(t.clone()),
    })
    .await
    .unwrap();
    let piece = |n: u32, len: u32| pb::PieceFinished {
        peer_id: "seed-1-p".into(),
        task_id: digest.clone(),
        piece: Some(pb::PieceInfo {
            number: n,
            digest: format!("sha256:{}", hex::encode(Sha256::digest([n as u8]))),
            length: len,
        }),
        parent_id: String::new(),
        cost_ms: 1,
    };
    // Pieces 0 and 2 (the short last one): 16384 + 7232 bytes.
    c.report_pieces(tokio_stream::iter([piece(0, 16384), piece(2, 7232)]))
        .await
        .unwrap();
    let got = c
        .get_task(pb::GetTaskRequest {
            task_id: digest.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.known, "{got:?}");
    assert_eq!(got.peers.len(), 1, "{got:?}");
    let p = &got.peers[0];
    assert_eq!(
        (p.host_id.as_str(), p.hostname.as_str()),
        ("seed-1", "seed-1")
    );
    assert_eq!(p.host_type, pb::HostType::Seed as i32);
    assert_eq!(
        (p.pieces, p.present_bytes, p.finished),
        (2, 16384 + 7232, false)
    );
    assert!(
        p.created_at_ms > 0 && p.updated_at_ms >= p.created_at_ms,
        "{p:?}"
    );

    let deleted = c
        .delete_task(pb::DeleteTaskRequest {
            task_id: digest.clone(),
            timeout_secs: 5,
            concurrent_peer_count: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.hosts_asked, 2, "{deleted:?}");
    assert_eq!(deleted.results.len(), 2, "{deleted:?}");
    let (n1, s1) = (&deleted.results[0], &deleted.results[1]);
    assert!(!n1.ok && n1.description.contains("cannot ask"), "{n1:?}");
    assert!(s1.ok && s1.freed_bytes == 40_000, "{s1:?}");
    assert!(
        seed.triggers.lock().unwrap().is_empty(),
        "the seed deleted it"
    );
    // The only holder deleted it: the scheduler forgot the task, digests and all.
    let got = c
        .get_task(pb::GetTaskRequest { task_id: digest })
        .await
        .unwrap()
        .into_inner();
    assert!(!got.known && got.peers.is_empty(), "{got:?}");
    // Malformed task IDs are refused by both.
    for bad in ["sha256:nothex", "", "../x"] {
        let e = c
            .delete_task(pb::DeleteTaskRequest {
                task_id: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        let e = c
            .get_task(pb::GetTaskRequest {
                task_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
    }
}

/// A daemon that restarts announces a fresh start: the peers it registered in its old life
/// leave every task (each restart would otherwise leave one more behind, counted against the
/// task's peer limit and named as a parent); a plain re-announcement and other hosts' peers
/// are untouched.
#[tokio::test]
async fn a_fresh_start_drops_the_hosts_old_peers_and_nobody_elses() {
    let (_s, mut c) = start().await;
    for h in ["n1", "n2"] {
        c.announce_host(host(h, 4000, false)).await.unwrap();
    }
    let t = pb::Task {
        id: format!("sha256:{}", "ab".repeat(32)),
        ..task()
    };
    let register = |host: &str, peer: &str| pb::RegisterPeerRequest {
        host_id: host.into(),
        peer_id: peer.into(),
        task: Some(t.clone()),
    };
    let report = |peer: &str, n: u32| pb::PieceFinished {
        task_id: t.id.clone(),
        ..report(peer, n, "")
    };
    let peers = |mut c: SchedulerClient<Channel>, task_id: String| async move {
        let got = c
            .get_task(pb::GetTaskRequest { task_id })
            .await
            .unwrap()
            .into_inner();
        let mut ids: Vec<String> = got.peers.into_iter().map(|p| p.peer_id).collect();
        ids.sort();
        ids
    };
    c.register_peer(register("n1", "n1-old")).await.unwrap();
    c.register_peer(register("n2", "n2-p")).await.unwrap();
    c.report_pieces(tokio_stream::iter([report("n1-old", 0), report("n2-p", 1)]))
        .await
        .unwrap();
    c.announce_host(host("n1", 4000, false)).await.unwrap();
    assert_eq!(peers(c.clone(), t.id.clone()).await, ["n1-old", "n2-p"]);

    let mut fresh = host("n1", 4000, false);
    fresh.fresh_start = true;
    c.announce_host(fresh).await.unwrap();
    assert_eq!(peers(c.clone(), t.id.clone()).await, ["n2-p"]);
    // The old peer is gone for good: its reports are refused, the new one's taken.
    let e = c
        .report_pieces(tokio_stream::iter([report("n1-old", 2)]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    c.register_peer(register("n1", "n1-new")).await.unwrap();
    assert_eq!(peers(c.clone(), t.id.clone()).await, ["n1-new", "n2-p"]);
}

/// A client of `addr` with a `role` certificate for `id` from `ca`.
fn member_client(
    ca: &dragonfly_membership::Ca,
    role: dragonfly_membership::Role,
    id: &str,
    addr: &str,
) -> SchedulerClient<Channel> {
    use dragonfly_membership::{client::Dialer, Identity, Role};
    let creds = ca
        .credentials(
            &Identity::new(role, id).unwrap(),
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let ch = dragonfly_runtime::grpc::member_channel(
        addr,
        dragonfly_runtime::grpc::Timeouts::CONTROL,
        &Dialer::tls(&creds).unwrap(),
        &[Role::Scheduler],
    )
    .unwrap();
    SchedulerClient::new(ch)
}

/// With credentials, the scheduler talks only to members, and each only as itself: a host
/// announces, registers and asks only for itself, only a seed peer announces as a seed, only
/// the manager starts preheats; a client without a certificate gets no answer at all.
#[tokio::test]
async fn with_credentials_only_members_steer_the_scheduler_each_as_itself() {
    use dragonfly_membership::{Ca, Identity, Role};
    let ca = Ca::create("test cluster").unwrap();
    let (s, _) = start_with(|dir| {
        let issued = ca
            .issue(
                &Identity::new(Role::Scheduler, "sched").unwrap(),
                &["127.0.0.1".parse().unwrap()],
                &[],
                Duration::from_secs(3600),
            )
            .unwrap();
        for (name, pem) in [
            ("ca.pem", ca.cert_pem()),
            ("cert.pem", &issued.cert_pem),
            ("key.pem", &issued.key_pem),
        ] {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        format!(
            "security: {{ca: {d}/ca.pem, cert: {d}/cert.pem, key: {d}/key.pem}}\n",
            d = dir.display()
        )
    })
    .await;
    fn code<T>(r: Result<tonic::Response<T>, Status>) -> Code {
        r.map(|_| ()).map_or_else(|e| e.code(), |()| Code::Ok)
    }

    // No certificate: no TLS, no conversation.
    let plain = SchedulerClient::connect(format!("http://{}", s.addr)).await;
    if let Ok(mut c) = plain {
        assert_ne!(
            code(c.announce_host(host("n1", 4000, false)).await),
            Code::Ok
        );
    }
    let mut n1 = member_client(&ca, Role::Peer, "n1", &s.addr);
    n1.announce_host(host("n1", 4000, false)).await.unwrap();
    assert_eq!(
        code(n1.announce_host(host("n2", 4000, false)).await),
        Code::PermissionDenied,
        "n1 cannot announce (or overwrite) another host"
    );
    assert_eq!(
        code(n1.announce_host(host("n1", 4000, true)).await),
        Code::PermissionDenied,
        "a peer's certificate cannot announce a seed peer"
    );
    let mut seed = member_client(&ca, Role::Seed, "seed", &s.addr);
    seed.announce_host(host("seed", 4001, true)).await.unwrap();
    let register = |h: &str, p: &str| pb::RegisterPeerRequest {
        host_id: h.into(),
        peer_id: p.into(),
        task: Some(task()),
    };
    n1.register_peer(register("n1", "p1")).await.unwrap();
    assert_eq!(
        code(n1.register_peer(register("seed", "p-seed")).await),
        Code::PermissionDenied
    );
    seed.register_peer(register("seed", "p-seed"))
        .await
        .unwrap();
    // n1 cannot report pieces for the seed's peer, nor ask, leave or blame for it.
    assert_eq!(
        code(
            n1.report_pieces(tokio_stream::iter(vec![report("p-seed", 0, "")]))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            n1.leave_peer(pb::LeavePeerRequest {
                peer_id: "p-seed".into(),
                task_id: "sha256:abc".into(),
            })
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            n1.leave_host(pb::LeaveHostRequest {
                host_id: "seed".into()
            })
            .await
        ),
        Code::PermissionDenied
    );
    let ack = seed
        .report_pieces(tokio_stream::iter(vec![report("p-seed", 0, "")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.accepted, 1);
    assert_eq!(
        code(
            n1.preheat(pb::PreheatRequest {
                tasks: vec![task()],
                ..Default::default()
            })
            .await
        ),
        Code::PermissionDenied,
        "only the manager starts preheats"
    );
    assert_eq!(
        code(n1.list_hosts(pb::ListHostsRequest {}).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(n1.get_task(pb::GetTaskRequest { task_id: task().id }).await),
        Code::PermissionDenied,
        "only the manager looks up tasks"
    );
    assert_eq!(
        code(
            n1.delete_task(pb::DeleteTaskRequest {
                task_id: task().id,
                ..Default::default()
            })
            .await
        ),
        Code::PermissionDenied,
        "only the manager deletes tasks"
    );
    // A certificate from another CA is no member.
    let mut stranger = member_client(&Ca::create("other").unwrap(), Role::Peer, "n1", &s.addr);
    assert_ne!(
        code(stranger.announce_host(host("n1", 4000, false)).await),
        Code::Ok
    );
}
