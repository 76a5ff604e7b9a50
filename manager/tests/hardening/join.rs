//! Members joining with a token: the manager's CA issues, members keep and renew their
//! certificates, and the certificate service refuses every request a token, a certificate or
//! the caller's address does not allow.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dragonfly_manager::store::Db;
use dragonfly_membership::client::Dialer;
use dragonfly_membership::join::{self, JoinSpec, Member};
use dragonfly_membership::{Credentials, Identity, Role};
use dragonfly_proto::manager::manager_client::ManagerClient;
use dragonfly_proto::manager::ListSchedulersRequest;
use tonic::transport::Endpoint;

use crate::harness::{database_url, start_in, TestManager};

/// A manager that is the cluster's CA, its database, and the CA's fingerprint.
async fn manager_with_ca() -> (TestManager, Db, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let url = database_url(dir.path());
    let m = start_in(dir, |c| c.ca.dir = Some(ca_dir.clone())).await;
    let fingerprint = dragonfly_manager::certs::load(&ca_dir)
        .unwrap()
        .fingerprint()
        .unwrap();
    (m, Db::open(&url).await.unwrap(), fingerprint)
}

fn spec(m: &TestManager, token: &str, fingerprint: &str) -> JoinSpec {
    JoinSpec {
        manager: m.grpc.to_string(),
        token: token.into(),
        token_file: None,
        ca_fingerprint: fingerprint.into(),
    }
}

fn member(role: Role, id: &str, ips: &[&str]) -> Member {
    Member {
        identity: Identity::new(role, id).unwrap(),
        ips: ips.iter().map(|i| i.parse::<IpAddr>().unwrap()).collect(),
        names: Vec::new(),
    }
}

async fn token(db: &Db, role: Role) -> String {
    dragonfly_manager::issuer::new_join_token(db, role, 1)
        .await
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Whether `creds` are accepted by the manager as a peer's.
async fn manager_accepts(m: &TestManager, creds: &Credentials) -> bool {
    let endpoint = Endpoint::from_shared(format!("http://{}", m.grpc)).unwrap();
    let Ok(channel) = Dialer::tls(creds)
        .unwrap()
        .connect_channel(endpoint, &[Role::Manager])
        .await
    else {
        return false;
    };
    ManagerClient::new(channel)
        .list_schedulers(ListSchedulersRequest::default())
        .await
        .is_ok()
}

async fn refused(spec: &JoinSpec, dir: &Path, me: &Member) -> String {
    match join::obtain(spec, dir, me).await {
        Ok(c) => panic!("{} was issued", c.identity()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_member_joins_with_a_token_keeps_its_files_and_renews_in_place() {
    let (m, db, fp) = manager_with_ca().await;
    assert_eq!(
        db.join_tokens().await.unwrap().len(),
        3,
        "one per role at first start"
    );
    let dir = tempfile::tempdir().unwrap();
    let creds_dir = dir.path().join("creds");
    let me = member(Role::Peer, "node-1", &["127.0.0.1"]);
    let s = spec(&m, &token(&db, Role::Peer).await, &fp);
    let creds = join::obtain(&s, &creds_dir, &me).await.unwrap();
    assert_eq!(creds.identity(), &me.identity);
    assert_eq!(mode(&creds_dir), 0o700);
    assert_eq!(mode(&creds_dir.join("key.pem")), 0o600);
    assert!(manager_accepts(&m, &creds).await);

    // The next start uses the stored files (the token is not needed again).
    let cert = std::fs::read_to_string(creds_dir.join("cert.pem")).unwrap();
    let again = join::obtain(&spec(&m, "dfjoin_wrong", &fp), &creds_dir, &me)
        .await
        .unwrap();
    assert_eq!(again.identity(), &me.identity);
    assert_eq!(
        std::fs::read_to_string(creds_dir.join("cert.pem")).unwrap(),
        cert
    );

    // Renewal over mutual TLS: a new certificate in the files and in use, no token.
    join::renew(&spec(&m, "", &fp), &creds_dir, &me, &creds)
        .await
        .unwrap();
    assert_ne!(
        std::fs::read_to_string(creds_dir.join("cert.pem")).unwrap(),
        cert
    );
    assert!(manager_accepts(&m, &creds).await);
    let members = db.issued_members().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].ips, "127.0.0.1");
}

#[tokio::test]
async fn the_certificate_service_refuses_what_neither_token_nor_certificate_allows() {
    let (m, db, fp) = manager_with_ca().await;
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let peer_token = token(&db, Role::Peer).await;
    let peer = spec(&m, &peer_token, &fp);
    let node1 = member(Role::Peer, "node-1", &["127.0.0.1"]);

    let e = refused(&spec(&m, "dfjoin_peer_guess", &fp), &d("a"), &node1).await;
    assert!(
        e.contains("Unauthenticated") && e.contains("unknown, expired"),
        "{e}"
    );
    let e = refused(
        &peer,
        &d("b"),
        &member(Role::Scheduler, "s1", &["127.0.0.1"]),
    )
    .await;
    assert!(
        e.contains("PermissionDenied") && e.contains("for a peer"),
        "{e}"
    );
    let e = refused(&peer, &d("c"), &member(Role::Manager, "m2", &[])).await;
    assert!(e.contains("never issued"), "{e}");
    let e = refused(&peer, &d("d"), &member(Role::Peer, "n9", &["10.9.9.9"])).await;
    assert!(e.contains("only the address"), "{e}");
    let other_ca = format!("sha256:{}", "0".repeat(64));
    let e = refused(&spec(&m, &peer_token, &other_ca), &d("e"), &node1).await;
    assert!(e.contains("ca_fingerprint"), "{e}");

    // An ID stays with the address it joined from.
    let creds = join::obtain(&peer, &d("f"), &node1).await.unwrap();
    let e = refused(&peer, &d("g"), &member(Role::Peer, "node-1", &[])).await;
    assert!(e.contains("already belongs"), "{e}");
    // A certificate renews only itself.
    let e = join::renew(
        &spec(&m, "", &fp),
        &d("h"),
        &member(Role::Peer, "node-2", &["127.0.0.1"]),
        &creds,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("only its own"), "{e}");

    // Revoked: neither renewal nor the token gets it a certificate, until it is forgotten.
    db.revoke_member("peer", "node-1").await.unwrap();
    let e = join::renew(&spec(&m, "", &fp), &d("f"), &node1, &creds)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("revoked"), "{e}");
    assert!(refused(&peer, &d("i"), &node1).await.contains("revoked"));
    db.forget_member("peer", "node-1").await.unwrap();
    join::obtain(&peer, &d("j"), &node1).await.unwrap();

    // Deleted and expired tokens are unknown.
    let t = db.join_tokens().await.unwrap();
    for row in t.iter().filter(|t| t.role == "peer") {
        db.delete_join_token(row.id).await.unwrap();
    }
    let n2 = member(Role::Peer, "node-2", &["127.0.0.1"]);
    assert!(refused(&peer, &d("k"), &n2)
        .await
        .contains("Unauthenticated"));
    let expired = "dfjoin_peer_expired";
    db.create_join_token(
        "peer",
        &dragonfly_membership::token_key(expired),
        "2020-01-01T00:00:00.000Z",
    )
    .await
    .unwrap();
    let e = refused(&spec(&m, expired, &fp), &d("l"), &n2).await;
    assert!(e.contains("Unauthenticated"), "{e}");
}

#[tokio::test]
async fn a_client_without_a_certificate_or_without_tls_gets_unauthenticated_from_the_manager() {
    let (m, _db, fp) = manager_with_ca().await;
    let endpoint = Endpoint::from_shared(format!("http://{}", m.grpc)).unwrap();
    let channel = Dialer::pinned(&fp, None)
        .unwrap()
        .connect_channel(endpoint, &[Role::Manager])
        .await
        .unwrap();
    let e = ManagerClient::new(channel)
        .list_schedulers(ListSchedulersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    // In plain text: UNAUTHENTICATED too, and no certificate (a token would cross in the
    // clear).
    let endpoint = Endpoint::from_shared(format!("http://{}", m.grpc)).unwrap();
    let channel = endpoint.connect().await.unwrap();
    let e = ManagerClient::new(channel.clone())
        .list_schedulers(ListSchedulersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let new = dragonfly_membership::CertRequest::create(
        &Identity::new(Role::Peer, "p").unwrap(),
        &[],
        &[],
    )
    .unwrap();
    let e = dragonfly_proto::manager::certificate_client::CertificateClient::new(channel)
        .issue_certificate(dragonfly_proto::manager::IssueCertificateRequest {
            csr: new.csr_pem,
            token: "dfjoin_peer_x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
}

#[tokio::test]
async fn a_member_registers_only_an_address_its_certificate_names() {
    use dragonfly_proto::manager::UpdateSchedulerRequest;
    let (m, db, fp) = manager_with_ca().await;
    let dir = tempfile::tempdir().unwrap();
    let me = member(Role::Scheduler, "sched-1", &["127.0.0.1"]);
    let s = spec(&m, &token(&db, Role::Scheduler).await, &fp);
    let creds = join::obtain(&s, dir.path(), &me).await.unwrap();
    let endpoint = Endpoint::from_shared(format!("http://{}", m.grpc)).unwrap();
    let channel = Dialer::tls(&creds)
        .unwrap()
        .connect_channel(endpoint, &[Role::Manager])
        .await
        .unwrap();
    let mut c = ManagerClient::new(channel);
    let register = |ip: &str| UpdateSchedulerRequest {
        hostname: "sched-1".into(),
        ip: ip.into(),
        port: 8002,
        ..Default::default()
    };
    let e = c.update_scheduler(register("10.1.1.1")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("certificate names"), "{e:?}");
    c.update_scheduler(register("127.0.0.1")).await.unwrap();
}

#[tokio::test]
async fn with_only_a_token_a_member_trusts_the_ca_its_token_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("join");
    std::fs::create_dir_all(&tokens).unwrap();
    let token = "dfjoin_peer_from_a_kubernetes_secret";
    std::fs::write(tokens.join("peer"), format!("{token}\n")).unwrap();
    let ca_dir = dir.path().join("ca");
    let (t, c) = (tokens.clone(), ca_dir.clone());
    let m = start_in(dir, move |cfg| {
        cfg.ca.dir = Some(c);
        cfg.ca.tokens_dir = Some(t);
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let me = member(Role::Peer, "node-9", &["127.0.0.1"]);
    // No fingerprint: the CA comes with MACs, one of them made with this token's hash.
    let creds = join::obtain(&spec(&m, token, ""), &work.path().join("a"), &me)
        .await
        .unwrap();
    let fp = dragonfly_manager::certs::load(&ca_dir)
        .unwrap()
        .fingerprint()
        .unwrap();
    assert_eq!(dragonfly_membership::fingerprint(&creds.ca_der()[0]), fp);
    assert!(manager_accepts(&m, &creds).await);
    // A token the manager does not know vouches for nothing.
    let e = refused(
        &spec(&m, "dfjoin_peer_not_the_right_one", ""),
        &work.path().join("b"),
        &me,
    )
    .await;
    assert!(e.contains("not vouched for"), "{e}");
    // A token of another role neither.
    let e = refused(
        &spec(&m, token, ""),
        &work.path().join("c"),
        &member(Role::Seed, "seed-9", &["127.0.0.1"]),
    )
    .await;
    assert!(e.contains("not vouched for"), "{e}");
}

#[tokio::test]
async fn a_due_certificate_is_used_while_the_manager_is_away_and_a_moved_member_renews() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let c = ca_dir.clone();
    let m = start_in(dir, move |cfg| {
        cfg.ca.dir = Some(c);
        cfg.ca.any_ip = true;
    })
    .await;
    let db = Db::open(&database_url(&m.config.data_dir)).await.unwrap();
    let ca = dragonfly_manager::certs::load(&ca_dir).unwrap();
    let fp = ca.fingerprint().unwrap();
    let me = member(Role::Peer, "node-1", &["127.0.0.1"]);
    // A certificate past two thirds of its life (issued backdated, for a minute) in the files.
    let work = tempfile::tempdir().unwrap();
    let creds_dir = work.path().join("creds");
    std::fs::create_dir_all(&creds_dir).unwrap();
    let issued = ca
        .issue(
            &me.identity,
            &me.ips,
            &[],
            std::time::Duration::from_secs(60),
        )
        .unwrap();
    std::fs::write(creds_dir.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(creds_dir.join("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(creds_dir.join("key.pem"), &issued.key_pem).unwrap();
    // The manager cannot be reached: the stored certificate is used, not an error.
    let closed = format!("127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let away = JoinSpec {
        manager: closed,
        ..spec(&m, "dfjoin_unused", &fp)
    };
    let creds = join::obtain(&away, &creds_dir, &me).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(creds_dir.join("cert.pem")).unwrap(),
        issued.cert_pem,
        "kept"
    );
    assert!(manager_accepts(&m, &creds).await);
    // Reachable again, and the member now advertises another address: it renews for it.
    let moved = member(Role::Peer, "node-1", &["127.0.0.1", "127.0.0.9"]);
    let token = token(&db, Role::Peer).await;
    let renewed = join::obtain(&spec(&m, &token, &fp), &creds_dir, &moved)
        .await
        .unwrap();
    assert!(
        renewed.ips().contains(&"127.0.0.9".parse().unwrap()),
        "{:?}",
        renewed.ips()
    );
}
