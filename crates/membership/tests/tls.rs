//! Mutual TLS between members: who is let in, who is refused, and what servers learn.

use std::time::Duration;

use dragonfly_membership::client::Dialer;
use dragonfly_membership::server::{require, Acceptor, ConnPeer};
use dragonfly_membership::{Ca, Credentials, Identity, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const HOUR: Duration = Duration::from_secs(3600);

fn member(ca: &Ca, role: Role, id: &str) -> Credentials {
    ca.credentials(
        &Identity::new(role, id).unwrap(),
        &["127.0.0.1".parse().unwrap()],
        HOUR,
    )
    .unwrap()
}

/// A server on loopback answering one line per connection with the caller's identity.
async fn serve(acceptor: Acceptor) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut c) = acceptor.accept(s).await {
                    let who = c.peer().identity.clone().map(|i| i.to_string());
                    let _ = c.write_all(who.unwrap_or_default().as_bytes()).await;
                    let _ = c.shutdown().await;
                }
            });
        }
    });
    addr
}

async fn hello(dialer: &Dialer, addr: &str, roles: &[Role]) -> std::io::Result<String> {
    let mut c = dialer.connect(addr, roles).await?;
    let mut out = String::new();
    c.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn members_meet_over_mutual_tls_and_strangers_do_not() {
    let ca = Ca::create("cluster").unwrap();
    let scheduler = member(&ca, Role::Scheduler, "sched-1");
    let peer = member(&ca, Role::Peer, "node-1");
    let addr = serve(Acceptor::tls(&scheduler).unwrap()).await;

    let d = Dialer::tls(&peer).unwrap();
    assert_eq!(
        hello(&d, &addr, &[Role::Scheduler]).await.unwrap(),
        "peer node-1"
    );
    // The client checks the server's role.
    let e = hello(&d, &addr, &[Role::Seed, Role::Peer])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("scheduler sched-1"), "{e}");
    // No certificate, or one from another CA: no connection.
    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("node"),
        "{answer:?}"
    );
    let stranger = member(&Ca::create("other").unwrap(), Role::Peer, "node-1");
    assert!(
        hello(&Dialer::tls(&stranger).unwrap(), &addr, &[Role::Scheduler])
            .await
            .is_err()
    );
    // Credentials whose certificate is not from the CA given are refused up front.
    let other = Ca::create("other").unwrap();
    let foreign = other
        .issue(&Identity::new(Role::Peer, "x").unwrap(), &[], &[], HOUR)
        .unwrap();
    assert!(Credentials::from_pem(ca.cert_pem(), &foreign.cert_pem, &foreign.key_pem).is_err());
}

#[test]
fn handlers_let_in_the_roles_they_name() {
    let peer = |tls, identity: Option<Identity>| {
        let mut r = tonic::Request::new(());
        r.extensions_mut().insert(ConnPeer {
            identity,
            cert_ips: Vec::new(),
            tls,
            encrypted: tls,
            remote: None,
        });
        r
    };
    let sched = Identity::new(Role::Scheduler, "s").unwrap();
    let r = peer(true, Some(sched.clone()));
    assert_eq!(
        require(&r, "TriggerDownload", &[Role::Scheduler]).unwrap(),
        Some(sched)
    );
    let r = peer(true, Some(Identity::new(Role::Peer, "p").unwrap()));
    let e = require(&r, "TriggerDownload", &[Role::Scheduler]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    let e = require(&peer(true, None), "TriggerDownload", &[Role::Scheduler]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(require(&peer(false, None), "x", &[]).unwrap(), None);
    let e = require(&tonic::Request::new(()), "x", &[Role::Peer]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}
