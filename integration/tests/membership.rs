//! A cluster whose scheduler, seed peer and nodes authenticate each other (mutual TLS with
//! certificates from one CA, as files or joined with tokens): pulls work through it, a process
//! without a certificate gets UNAUTHENTICATED and a member acting out of its role
//! PERMISSION_DENIED, and neither changes anything.

use dragonfly_integration::fixtures;
use dragonfly_integration::openapi::{job_token, wait_job, Http};
use dragonfly_integration::swarm::Swarm;
use dragonfly_membership::client::Dialer;
use dragonfly_membership::{Credentials, Identity, Role};
use dragonfly_proto::peer::peer_client::PeerClient;
use dragonfly_proto::peer::{GetPieceRequest, TriggerDownloadRequest};
use dragonfly_proto::scheduler as pb;
use dragonfly_proto::scheduler::scheduler_client::SchedulerClient;
use dragonfly_runtime::grpc::{member_channel, Timeouts};
use tonic::transport::Channel;
use tonic::Code;

/// A `role` member `id` of the swarm's cluster.
fn credentials(swarm: &Swarm, role: Role, id: &str) -> Credentials {
    let ca = swarm.ca.as_ref().expect("a TLS swarm");
    ca.credentials(
        &Identity::new(role, id).unwrap(),
        &["127.0.0.1".parse().unwrap()],
        std::time::Duration::from_secs(3600),
    )
    .unwrap()
}

fn channel(dialer: &Dialer, addr: &str, roles: &'static [Role]) -> Channel {
    member_channel(addr, Timeouts::CONTROL, dialer, roles).unwrap()
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.map_or_else(|e| e.code(), |_| Code::Ok)
}

/// Where each announced host serves pieces, as the manager would read it.
async fn hosts(swarm: &Swarm) -> Vec<pb::Host> {
    let manager = Dialer::tls(&credentials(swarm, Role::Manager, "manager")).unwrap();
    let mut c = SchedulerClient::new(channel(&manager, &swarm.scheduler.addr, &[Role::Scheduler]));
    c.list_hosts(pb::ListHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts
}

#[test]
fn a_cluster_of_members_pulls_and_strangers_and_rogue_members_change_nothing() {
    let swarm = Swarm::start_tls(1, 3, "prefetch: {background: false}").expect("swarm");
    let img = fixtures::large().expect("fixture");
    let [_, esgz, _] = swarm.publish("large", &img).expect("publish").refs();
    let want = fixtures::large_huge_sha256();
    for i in [1, 2] {
        let node = &swarm.nodes[i];
        node.containerd.rpull(&esgz).expect("rpull");
        let (ok, out) = node.containerd.run_once(
            "dragonfly",
            &esgz,
            &format!("read-{i}"),
            &["/bin/sha256sum", "/data/huge.bin"],
        );
        assert!(
            ok && out.contains(&want),
            "node {i}: {out}\n{}",
            swarm.logs()
        );
    }
    for n in &swarm.nodes {
        assert!(n.daemon.log().contains("authenticate with mutual TLS"));
    }
    assert!(swarm
        .scheduler
        .log()
        .contains("authenticate with mutual TLS"));
    let from_peers = swarm.nodes[2].metric("dragonfly_snapshotter_p2p_bytes_total", "peer");
    assert!(
        from_peers > 0.0,
        "no piece travelled over TLS\n{}",
        swarm.logs()
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let before = hosts(&swarm).await;
        let node1 = before
            .iter()
            .find(|h| h.id == "node-1")
            .expect("node-1")
            .clone();
        let node1_addr = format!("{}:{}", node1.ip, node1.upload_port);
        let task = pb::Task {
            id: format!("task:{}", "a".repeat(64)),
            url: "http://127.0.0.1:1/metadata".into(),
            ..Default::default()
        };

        // No TLS at all: UNAUTHENTICATED too (the ports tell a plain-text client apart).
        let plain = Dialer::plain();
        let mut s = SchedulerClient::new(channel(&plain, &swarm.scheduler.addr, &[]));
        assert_eq!(
            code(
                s.leave_host(pb::LeaveHostRequest {
                    host_id: "node-1".into()
                })
                .await
            ),
            Code::Unauthenticated
        );
        let mut p = PeerClient::new(channel(&plain, &node1_addr, &[]));
        assert_eq!(
            code(
                p.trigger_download(TriggerDownloadRequest {
                    task: Some(task.clone()),
                    background: false,
                })
                .await
            ),
            Code::Unauthenticated
        );

        // A TLS client without a certificate: UNAUTHENTICATED everywhere.
        let fingerprint = swarm.ca.as_ref().unwrap().fingerprint().unwrap();
        strangers_are_unauthenticated(&swarm, &fingerprint, &node1_addr).await;

        // A member out of its role: a peer cannot trigger downloads, speak for another host,
        // announce itself as a seed, make another host leave, or get or delete tasks.
        let rogue = Dialer::tls(&credentials(&swarm, Role::Peer, "rogue")).unwrap();
        let mut p = PeerClient::new(channel(&rogue, &node1_addr, &[Role::Peer]));
        assert_eq!(
            code(
                p.trigger_download(TriggerDownloadRequest {
                    task: Some(task.clone()),
                    background: false,
                })
                .await
            ),
            Code::PermissionDenied
        );
        let mut s =
            SchedulerClient::new(channel(&rogue, &swarm.scheduler.addr, &[Role::Scheduler]));
        let mut fake = node1.clone();
        fake.upload_port = 1;
        for host in [fake.clone(), {
            let mut seed = fake.clone();
            seed.id = "rogue".into();
            seed.r#type = pb::HostType::Seed as i32;
            seed
        }] {
            assert_eq!(
                code(
                    s.announce_host(pb::AnnounceHostRequest {
                        protocol: pb::PROTOCOL,
                        fresh_start: false,
                        host: Some(host),
                    })
                    .await
                ),
                Code::PermissionDenied
            );
        }
        assert_eq!(
            code(
                s.leave_host(pb::LeaveHostRequest {
                    host_id: "node-1".into()
                })
                .await
            ),
            Code::PermissionDenied
        );
        // Nor delete a task from a peer, nor ask the scheduler to get or delete one.
        let digest = fixtures::layers(&esgz).unwrap()[1].0.clone();
        assert_eq!(
            code(
                p.delete_task(dragonfly_proto::peer::DeleteTaskRequest {
                    task_id: digest.clone()
                })
                .await
            ),
            Code::PermissionDenied
        );
        assert_eq!(
            code(
                s.delete_task(pb::DeleteTaskRequest {
                    task_id: digest.clone(),
                    ..Default::default()
                })
                .await
            ),
            Code::PermissionDenied
        );
        assert_eq!(
            code(
                s.get_task(pb::GetTaskRequest {
                    task_id: digest.clone()
                })
                .await
            ),
            Code::PermissionDenied
        );
        // A member may read pieces (it is one of the swarm).
        let piece = p
            .get_piece(GetPieceRequest {
                task_id: digest,
                number: 0,
                peer_id: "rogue".into(),
                fetch: false,
                fetch_until: 0,
            })
            .await;
        assert!(piece.is_ok(), "{piece:?}");

        // Nothing changed: the same hosts, node-1 where it was.
        let after = hosts(&swarm).await;
        let ids = |h: &[pb::Host]| {
            let mut v: Vec<_> = h.iter().map(|h| (h.id.clone(), h.upload_port)).collect();
            v.sort();
            v
        };
        assert_eq!(ids(&before), ids(&after), "{}", swarm.logs());
    });
}

/// What a TLS client without a certificate gets from every call of a scheduler and of a
/// peer port: UNAUTHENTICATED (the handshake completes; the call is refused).
async fn strangers_are_unauthenticated(swarm: &Swarm, fingerprint: &str, peer_addr: &str) {
    let stranger = Dialer::pinned(fingerprint, None).unwrap();
    let mut s = SchedulerClient::new(channel(
        &stranger,
        &swarm.scheduler.addr,
        &[Role::Scheduler],
    ));
    let task = pb::Task {
        id: format!("task:{}", "b".repeat(64)),
        url: "http://127.0.0.1:1/metadata".into(),
        content_length: 1,
        ..Default::default()
    };
    let host = pb::Host {
        id: "node-1".into(),
        ip: "127.0.0.1".into(),
        upload_port: 1,
        ..Default::default()
    };
    let peer_id = || "stranger-peer".to_owned();
    let calls = [
        (
            "AnnounceHost",
            code(
                s.announce_host(pb::AnnounceHostRequest {
                    protocol: pb::PROTOCOL,
                    fresh_start: false,
                    host: Some(host),
                })
                .await,
            ),
        ),
        (
            "KeepAlive",
            code(
                s.keep_alive(pb::KeepAliveRequest {
                    host_id: "node-1".into(),
                    active_uploads: 0,
                })
                .await,
            ),
        ),
        (
            "LeaveHost",
            code(
                s.leave_host(pb::LeaveHostRequest {
                    host_id: "node-1".into(),
                })
                .await,
            ),
        ),
        (
            "RegisterPeer",
            code(
                s.register_peer(pb::RegisterPeerRequest {
                    host_id: "node-1".into(),
                    peer_id: peer_id(),
                    task: Some(task.clone()),
                })
                .await,
            ),
        ),
        (
            "ReportPieces",
            code(
                s.report_pieces(tokio_stream::iter(Vec::<pb::PieceFinished>::new()))
                    .await,
            ),
        ),
        (
            "FindParents",
            code(
                s.find_parents(pb::FindParentsRequest {
                    peer_id: peer_id(),
                    task_id: task.id.clone(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "ReportBadParent",
            code(
                s.report_bad_parent(pb::ReportBadParentRequest {
                    peer_id: peer_id(),
                    task_id: task.id.clone(),
                    parent_id: "node-1".into(),
                    corrupt: true,
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "LeavePeer",
            code(
                s.leave_peer(pb::LeavePeerRequest {
                    peer_id: peer_id(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "Preheat",
            code(
                s.preheat(pb::PreheatRequest {
                    tasks: vec![task.clone()],
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "PreheatWithProgress",
            code(
                s.preheat_with_progress(pb::PreheatRequest {
                    tasks: vec![task.clone()],
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "ListHosts",
            code(s.list_hosts(pb::ListHostsRequest {}).await),
        ),
        (
            "StatTask",
            code(
                s.stat_task(pb::StatTaskRequest {
                    task_id: task.id.clone(),
                })
                .await,
            ),
        ),
    ];
    let mut p = PeerClient::new(channel(&stranger, peer_addr, &[Role::Peer, Role::Seed]));
    let peer_calls = [
        (
            "TriggerDownload",
            code(
                p.trigger_download(TriggerDownloadRequest {
                    task: Some(task.clone()),
                    background: false,
                })
                .await,
            ),
        ),
        (
            "GetPiece",
            code(
                p.get_piece(GetPieceRequest {
                    task_id: format!("sha256:{}", "c".repeat(64)),
                    number: 0,
                    peer_id: peer_id(),
                    fetch: false,
                    fetch_until: 0,
                })
                .await,
            ),
        ),
        (
            "peer StatTask",
            code(
                p.stat_task(dragonfly_proto::peer::StatTaskRequest {
                    task_id: task.id.clone(),
                })
                .await,
            ),
        ),
    ];
    for (call, got) in calls.into_iter().chain(peer_calls) {
        assert_eq!(got, Code::Unauthenticated, "{call}");
    }
}

#[test]
fn members_that_join_with_tokens_pull_over_tls_and_keep_their_certificates() {
    let mut swarm = Swarm::start_joined(1, 2, "prefetch: {background: false}").expect("swarm");
    let img = fixtures::large().expect("fixture");
    let [_, esgz, _] = swarm.publish("large", &img).expect("publish").refs();
    let joined = swarm.manager.as_ref().expect("a manager");
    let node = &swarm.nodes[1];
    node.containerd.rpull(&esgz).expect("rpull");
    let (ok, out) = node.containerd.run_once(
        "dragonfly",
        &esgz,
        "read-joined",
        &["/bin/sha256sum", "/data/huge.bin"],
    );
    assert!(
        ok && out.contains(&fixtures::large_huge_sha256()),
        "{out}\n{}",
        swarm.logs()
    );
    assert!(
        node.metric("dragonfly_snapshotter_p2p_bytes_total", "peer") > 0.0,
        "no piece came from the seed peer\n{}",
        swarm.logs()
    );
    for (i, n) in swarm.nodes.iter().enumerate() {
        assert!(n.daemon.log().contains("joined the cluster"), "node-{i}");
        let key = swarm.path().join(format!("node-{i}/tls/key.pem"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }
    assert!(swarm.scheduler.log().contains("joined the cluster"));
    let issued = joined.manager.log().matches("certificate issued").count();
    assert_eq!(issued, 3, "{}", joined.manager.log());

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        strangers_are_unauthenticated(&swarm, &joined.fingerprint, &peer_addr(&swarm, 0)).await;
    });
    drop(rt);

    // The scheduler, restarted to register with the manager, keeps its certificate; the
    // manager preheats a file through it over mutual TLS.
    let (grpc, url) = (joined.manager.grpc.clone(), joined.manager.url.clone());
    swarm
        .scheduler
        .use_manager(&grpc)
        .expect("scheduler with manager");
    let http = Http::new(&url);
    let token = job_token(&http);
    let digest = &img.layers[1];
    let file_url = format!("http://{}/v2/large/blobs/{digest}", swarm.registry.addr);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let job = loop {
        let (status, v) = http.post(
            "/oapi/v1/jobs",
            &token,
            serde_json::json!({"type": "preheat", "args": {"type": "file", "url": file_url}}),
        );
        assert_eq!(status, 201, "{v}");
        let id = v["id"].as_i64().unwrap();
        let job = wait_job(&http, &token, id, std::time::Duration::from_secs(60));
        // Until the scheduler has registered and the hosts announced to it again.
        let log = job["log"].as_str().unwrap_or_default();
        let early = log.contains("no active scheduler") || log.contains("no seed peer");
        if job["state"] == "SUCCESS" || !early || std::time::Instant::now() > deadline {
            break job;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let manager_log = swarm.manager.as_ref().unwrap().manager.log();
    assert_eq!(
        job["state"],
        "SUCCESS",
        "{job}\n{manager_log}\n{}",
        swarm.logs()
    );
    assert_eq!(
        swarm.scheduler.log().matches("joined the cluster").count(),
        1,
        "the restarted scheduler reused its stored certificate"
    );
}

/// Where node `i` of the swarm serves pieces, from its log.
fn peer_addr(swarm: &Swarm, i: usize) -> String {
    let log = swarm.nodes[i].daemon.log();
    let port = log
        .lines()
        .find(|l| l.contains("P2P enabled"))
        .and_then(|l| l.split("port=").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .expect("the daemon logs its peer port");
    format!("127.0.0.{}:{port}", 10 + i)
}
