//! Starting the manager: open the store, create the root user, start the job runner, the
//! member expiry loop, the HTTP server and the gRPC server.

use std::net::SocketAddr;
use std::sync::Arc;

use dragonfly_proto::manager::certificate_server::CertificateServer;
use dragonfly_proto::manager::manager_server::ManagerServer;

use crate::api::{router, AppState};
use crate::config::Config;
use crate::jobs::runner::Runner;
use crate::listener::{Peer, TlsListener};
use crate::metrics::Metrics;
use crate::store::Db;

/// A running manager's addresses.
pub struct Running {
    /// HTTP.
    pub http: SocketAddr,
    /// gRPC.
    pub grpc: SocketAddr,
}

/// Starts everything; returns once listening. Servers run until the process ends.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    use anyhow::Context;
    let config = Arc::new(config);
    if config.database.url.is_empty() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    }
    let url = config.database_url();
    let db = Db::open(&url).await.with_context(|| {
        format!(
            "cannot open the database {}",
            url.split('@').next_back().unwrap_or_default()
        )
    })?;
    let root_password = std::env::var("DRAGONFLY_ROOT_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
        .or_else(|| config.auth.root_password.clone());
    if let Some(p) = &root_password {
        anyhow::ensure!(
            p.len() >= crate::auth::MIN_PASSWORD,
            "the root password must have at least {} characters",
            crate::auth::MIN_PASSWORD
        );
    }
    crate::auth::ensure_root(&db, root_password.as_deref()).await?;
    db.default_cluster().await?;
    let metrics = Metrics::new();
    let issuer = crate::issuer::Issuer::open(&config.ca)?.map(|(i, created)| {
        if created {
            tracing::info!(fingerprint = %i.fingerprint, "cluster CA created");
        }
        Arc::new(i)
    });
    let (acceptor, dialer) = membership(&config, issuer.as_ref())?;
    let job_created = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(
        Runner::new(
            db.clone(),
            config.clone(),
            job_created.clone(),
            metrics.clone(),
            dialer.clone(),
        )
        .run(),
    );
    tokio::spawn(crate::grpc::expire_loop(
        db.clone(),
        config.grpc.keepalive_interval_secs,
        metrics.clone(),
    ));

    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on http.listen {}", config.http.listen))?;
    let http_addr = http.local_addr()?;
    let app = router(AppState::new(
        db.clone(),
        config.clone(),
        metrics.clone(),
        job_created,
        dialer,
    ));
    let app = app.into_make_service_with_connect_info::<Peer>();
    match &config.http.tls {
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(http, app).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }),
        Some(files) => {
            let https = TlsListener::new(http, crate::listener::acceptor(files)?)?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(https, app).await {
                    tracing::error!(error = %e, "HTTPS server failed");
                }
            })
        }
    };

    let grpc = tokio::net::TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| format!("cannot listen on grpc.listen {}", config.grpc.listen))?;
    let grpc_addr = grpc.local_addr()?;
    let service = crate::grpc::ManagerService::new(db.clone(), config.grpc.keepalive_interval_secs);
    let certificates = issuer.as_ref().map(|i| {
        CertificateServer::new(crate::certificate::CertificateService::new(
            db.clone(),
            i.clone(),
        ))
    });
    if let Some(i) = &issuer {
        crate::issuer::register_token_files(&db, &config.ca).await?;
        crate::issuer::first_start(&db, i, &config, grpc_addr).await?;
    }
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(ManagerServer::new(service))
            .add_optional_service(certificates)
            .serve_with_incoming(dragonfly_membership::server::incoming(grpc, acceptor))
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    tracing::info!(http = %http_addr, tls = config.http.tls.is_some(), grpc = %grpc_addr, database = ?url.split("://").next(), "manager ready");
    Ok(Running {
        http: http_addr,
        grpc: grpc_addr,
    })
}

/// How the manager's gRPC accepts schedulers, seed peers and peers, and how it dials
/// schedulers: mutual TLS with `security:` (a manager's certificate) or with a certificate
/// from its own CA (`ca:`), or plain (said in the log: for loopback use only).
fn membership(
    config: &Arc<Config>,
    issuer: Option<&Arc<crate::issuer::Issuer>>,
) -> anyhow::Result<(
    dragonfly_membership::server::Acceptor,
    dragonfly_membership::client::Dialer,
)> {
    use anyhow::Context;
    use dragonfly_membership::{client::Dialer, server::Acceptor, Role};
    let creds = config
        .security
        .credentials()
        .context("cannot load the cluster credentials (security:)")?;
    let creds = match (creds, issuer) {
        (Some(c), Some(i)) => {
            let same = c
                .ca_der()
                .iter()
                .any(|d| dragonfly_membership::fingerprint(d) == i.fingerprint);
            anyhow::ensure!(
                same,
                "security.ca is not the CA in ca.dir; members joining with a token would not be trusted"
            );
            Some(c)
        }
        (Some(c), None) => Some(c),
        (None, Some(i)) => {
            let c = i.own_credentials(config)?;
            tokio::spawn(i.clone().refresh_loop(config.clone(), c.clone()));
            Some(c)
        }
        (None, None) => None,
    };
    match creds {
        Some(c) => {
            anyhow::ensure!(
                c.identity().role == Role::Manager,
                "security.cert is the certificate of a {}, not of a manager",
                c.identity().role.as_str()
            );
            tracing::info!(identity = %c.identity(), "cluster members authenticate with mutual TLS");
            Ok((Acceptor::tls(&c)?, Dialer::tls(&c)?))
        }
        None => {
            tracing::warn!("no cluster credentials (security: ca, cert, key, or ca.dir): anyone who reaches the gRPC port may register as a scheduler or seed peer and receive preheats' registry credentials; use it only on loopback or a network only members reach");
            Ok((Acceptor::plain(), Dialer::plain()))
        }
    }
}
