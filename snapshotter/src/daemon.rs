//! Wiring: builds every component from the configuration and serves containerd's snapshots
//! API on a unix socket until a stop signal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use dragonfly_proto::snapshots::snapshots_server::SnapshotsServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use dragonfly_storage::PieceStore;
use dragonfly_task::origin::Origins;

use crate::api::download::DownloadService;
use crate::api::images::ImageService;
use crate::config::Config;
use crate::handoff::Handoff;
use crate::layer::manager::Held;
use crate::layer::{LayerManager, LayerSettings};
use crate::metrics::Metrics;
use crate::p2p::membership::Membership;
use crate::p2p::triggered::TriggeredDownloads;
use crate::p2p::upload::PeerService;
use crate::p2p::{P2p, ParentClients, SchedulerPool, Swarm};
use crate::snapshot::remote::RemoteLayers;
use crate::snapshot::service::SnapshotService;
use crate::snapshot::Snapshotter;
use dragonfly_proto::dfdaemon::download_server::DownloadServer;
use dragonfly_proto::dfdaemon::image_server::ImageServer;

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    for dir in [
        config.root.clone(),
        config.snapshots_dir(),
        config.cache_dir(),
    ] {
        private_dir(&dir)?;
    }
    let metrics = Metrics::new();
    let handoff = if config.snapshot.lazy {
        let h = Handoff::open(&config.handoff_dir(), config.fuse.handoff)
            .context("cannot set up keeping FUSE connections across restarts (fuse.handoff)")?;
        Some(Arc::new(h))
    } else {
        None
    };
    let held = handoff
        .as_deref()
        .map(|h| held_connections(h, &config.snapshots_dir()))
        .unwrap_or_default();
    let keep: Vec<PathBuf> = held.values().map(|h| h.record.mountpoint.clone()).collect();
    let mut download = None;
    let mut image = None;
    let mut store_at_stop = None;
    let remote: Option<Arc<LayerManager>> = if config.snapshot.lazy {
        let store = PieceStore::open(&config.cache_dir(), config.cache.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot open the piece store in {}",
                    config.cache_dir().display()
                )
            })?;
        export_store_metrics(&metrics, store.clone());
        store_at_stop = Some(store.clone());
        let origins = Origins::new(config.registry.clone(), metrics.origins.clone())
            .context("invalid registry configuration")?;
        let swarm = start_swarm(&config, store, origins, &metrics).await?;
        download = Some(DownloadServer::new(DownloadService::new(swarm.clone())));
        image = Some(ImageServer::new(ImageService::new(
            swarm.clone(),
            config.p2p.manager.clone(),
        )));
        Some(LayerManager::new(
            swarm,
            metrics.clone(),
            LayerSettings {
                prefetch: config.prefetch.clone(),
                fuse: config.fuse.clone(),
                allow_unverified_toc: config.snapshot.allow_unverified_toc,
                opaque_xattr: "trusted.overlay.opaque".into(),
                unpack: config.unpack,
            },
            config.containerd.address.clone().map(|a| {
                let r = &config.registry;
                let known = r
                    .plain_http
                    .iter()
                    .chain(r.mirrors.keys())
                    .chain(r.credentials.keys())
                    .cloned()
                    .collect();
                crate::layer::discover::Discovery::new(
                    a,
                    std::time::Duration::from_millis(config.containerd.lookup_timeout_ms.max(1)),
                    known,
                )
            }),
            handoff.clone(),
        ))
    } else {
        None
    };
    let snapshotter = Arc::new(
        Snapshotter::open(
            &config.snapshots_dir(),
            &config.metadata_path(),
            remote.clone().map(|r| r as Arc<dyn RemoteLayers>),
            &keep,
        )
        .await
        .context("cannot open the snapshotter")?,
    );
    if let Some(manager) = &remote {
        let layers = snapshotter
            .remote_snapshots()
            .await
            .context("cannot list lazy layers to re-mount")?
            .into_iter()
            .map(|(name, id, labels)| (name, id, snapshotter.layer_dir(id), labels))
            .collect();
        manager.restore(layers, held).await;
    }
    if let Some(h) = &handoff {
        h.ready();
    }

    if let Some(addr) = config.metrics.address {
        let m = metrics.clone();
        dragonfly_runtime::metrics::spawn(addr, move || m.render());
    }

    let listener = bind_socket(&config.address, config.address_group.as_deref())?;
    tracing::info!(address = %config.address.display(), root = %config.root.display(), "serving containerd snapshots API");
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(SnapshotService::new(
            snapshotter.clone(),
            metrics.clone(),
        )))
        .add_optional_service(download)
        .add_optional_service(image)
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            dragonfly_runtime::shutdown::signal_received(),
        )
        .await
        .context("gRPC server failed")?;
    if let Some(store) = store_at_stop {
        if let Err(e) = store.flush().await {
            tracing::warn!(error = %e, "cannot sync the piece store; pieces fetched last may be fetched again after the restart");
        }
    }
    if let (Some(h), Some(manager)) = (&handoff, &remote) {
        h.stopping();
        let grace = std::time::Duration::from_millis(config.fuse.handoff_grace_ms);
        manager.hand_over_all(grace).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The live FUSE connections a previous process left with their records. A held fd without
/// a record, or a record without a held fd, is stale and dropped here.
/// A record's mount point must be a snapshot's under `snapshots`: nothing else is ever
/// detached or adopted on its word.
fn held_connections(handoff: &Handoff, snapshots: &Path) -> BTreeMap<String, Held> {
    let mut out = BTreeMap::new();
    for (name, fd) in handoff.take_held() {
        match handoff.records().read(&name) {
            Ok(Some(record))
                if record.mountpoint.starts_with(snapshots)
                    && record.mountpoint.components().all(|c| {
                        matches!(
                            c,
                            std::path::Component::RootDir | std::path::Component::Normal(_)
                        )
                    }) =>
            {
                out.insert(name, Held { fd, record });
            }
            Ok(Some(record)) => {
                tracing::warn!(name, mountpoint = %record.mountpoint.display(), "held FUSE connection's record names a mount point outside the snapshots; released");
                handoff.release(&name);
            }
            Ok(None) => {
                tracing::warn!(name, "held FUSE connection has no record; released");
                handoff.release(&name);
            }
            Err(e) => {
                tracing::warn!(name, error = %e, "held FUSE connection has an unreadable record; released");
                handoff.release(&name);
            }
        }
    }
    for name in handoff.records().names() {
        if !out.contains_key(&name) {
            tracing::info!(
                name,
                "record of a FUSE connection nobody holds any more; removed"
            );
            handoff.records().remove(&name);
        }
    }
    if !out.is_empty() {
        tracing::info!(
            connections = out.len(),
            "live FUSE connections held from a previous daemon"
        );
    }
    out
}

/// Creates `dir` if missing and makes it 0700 (also when it exists, from an older version):
/// pulled images hold set-uid binaries and device nodes no other local user may reach, the
/// class of containerd's CVE-2021-41103.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))
}

/// Listens on `path`, mode 0660, owned by root and `group` (if given): whoever can connect
/// can pull images and download files (as themselves). The socket is bound in a private
/// directory beside `path`, given its mode and group there, then renamed into place, so
/// nobody can connect while it still has the umask's mode.
fn bind_socket(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".dragonfly-socket-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a private directory in {}", dir.display()))?;
    let tmp = staging.path().join("socket");
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("cannot listen on {}", tmp.display()))?;
    if let Some(name) = group {
        let gid = nix::unistd::Group::from_name(name)
            .with_context(|| format!("cannot look up address_group {name:?}"))?
            .with_context(|| format!("address_group {name:?} does not exist on this host"))?
            .gid;
        nix::unistd::chown(&tmp, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {name}", path.display()))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    // Over a stale socket from an earlier run, if any.
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot move the socket to {}", path.display()))?;
    Ok(listener)
}

/// This host's membership: from certificate files, or joined through the manager with a
/// token (kept under the root, renewed in the background), or none.
async fn membership(config: &Config, seed: bool) -> anyhow::Result<Membership> {
    let Some(join) = &config.security.join else {
        return Membership::from_files(&config.security, seed)
            .context("cannot load the cluster credentials (security:)");
    };
    let ip = crate::p2p::schedulers::advertised_ip(&config.p2p, &join.manager)
        .await
        .map_err(|e| anyhow::anyhow!("cannot join the cluster: {e}"))?;
    use dragonfly_membership::Role;
    let role = if seed { Role::Seed } else { Role::Peer };
    let id = crate::p2p::schedulers::default_host_id(&config.p2p, ip, seed);
    let me = dragonfly_membership::join::Member {
        identity: dragonfly_membership::Identity::new(role, &id)
            .context("p2p.host_id cannot be a member ID")?,
        ips: vec![ip],
        names: Vec::new(),
    };
    let obtained = config
        .security
        .join(me, &config.root.join("credentials"))
        .await
        .context("cannot join the cluster (security.join)")?;
    if let Some(renewal) = obtained.renewal {
        tokio::spawn(renewal);
    }
    Ok(Membership::from_credentials(&obtained.credentials, seed)?)
}

/// The swarm every task is opened through; with schedulers (or a manager) configured, P2P
/// too: serves pieces to other peers and takes triggered downloads, announces this host and
/// keeps it alive.
async fn start_swarm(
    config: &Config,
    store: PieceStore,
    origins: Origins,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<Swarm>> {
    if config.p2p.schedulers.is_empty() && config.p2p.manager.is_empty() {
        return Ok(Swarm::new(store, None, origins, metrics.clone()));
    }
    let listener = tokio::net::TcpListener::bind(config.p2p.listen)
        .await
        .with_context(|| format!("cannot listen on p2p.listen {}", config.p2p.listen))?;
    let port = listener.local_addr()?.port();
    let seed = config.p2p.seed_peer;
    let membership = membership(config, seed).await?;
    match &membership.identity {
        Some(me) => tracing::info!(identity = %me, "cluster members authenticate with mutual TLS"),
        None => tracing::warn!("no cluster credentials (security: ca, cert, key): anyone who reaches the peer port may read pieces, trigger downloads and delete unused tasks; use it only on loopback or a network only members reach"),
    }
    let pool = SchedulerPool::new(&config.p2p, port, seed, &membership)
        .await
        .map_err(|e| anyhow::anyhow!("cannot set up P2P: {e}"))?;
    if config.p2p.schedulers.is_empty() {
        tokio::spawn(crate::p2p::dynconfig::run(
            pool.clone(),
            config.p2p.manager.clone(),
            config.root.join("schedulers.json"),
            std::time::Duration::from_secs(config.p2p.manager_refresh_secs.max(1)),
        ));
    }
    let p2p = Arc::new(P2p {
        pool: pool.clone(),
        parents: Arc::new(ParentClients::new(membership.dialer.clone())),
        parallel: config.p2p.parallel_parents,
    });
    let swarm = Swarm::new(store.clone(), Some(p2p), origins, metrics.clone());
    // Before the first announcement, which registers them.
    crate::p2p::restored::offer_restored(&swarm);
    tokio::spawn(pool.clone().keepalive_loop());
    // Every peer takes triggered downloads: seeds for first downloads, all for preheat jobs.
    let downloader = Some(TriggeredDownloads::new(swarm.clone()));
    let service = PeerService::new(
        store.clone(),
        config.p2p.upload_slots,
        pool.clone(),
        metrics.clone(),
        downloader,
        config.p2p.upload_rate_bytes_per_sec,
    );
    crate::p2p::piece_server::serve_peer_port(
        listener,
        Arc::new(service),
        config.p2p.max_connections.get(),
        membership.acceptor.clone(),
    );
    if seed && !config.p2p.manager.is_empty() {
        let host = pool.host().clone();
        let who = dragonfly_runtime::registration::Registrant {
            source_type: dragonfly_proto::manager::SourceType::SeedPeer,
            ip: host.ip.clone(),
            port: u32::from(port),
        };
        let req = dragonfly_proto::manager::UpdateSeedPeerRequest {
            hostname: host.hostname,
            ip: host.ip,
            port: u32::from(port),
            idc: host.idc,
            location: host.location,
            scheduler_cluster_id: config.p2p.scheduler_cluster_id,
        };
        tokio::spawn(dragonfly_runtime::registration::keep_registered(
            config.p2p.manager.clone(),
            who,
            membership.dialer.clone(),
            move |mut c| {
                let req = req.clone();
                async move { c.update_seed_peer(req).await.map(|_| ()) }
            },
        ));
    }
    tracing::info!(port, host = pool.host_id(), seed, schedulers = ?config.p2p.schedulers, "P2P enabled");
    Ok(swarm)
}

/// Mirrors the piece store's counters into Prometheus at scrape time.
fn export_store_metrics(metrics: &Metrics, store: PieceStore) {
    metrics.add_refresher(Box::new(move |m| {
        let stats = store.stats();
        m.cache_hit_bytes.set(stats.hit_bytes as i64);
        m.cache_fetched_bytes.set(stats.fetched_bytes as i64);
        m.cache_fetched_urgent_bytes
            .set(stats.fetched_urgent_bytes as i64);
        m.cache_usage_bytes.set(store.usage().bytes_on_disk as i64);
        m.cache_urgent_fetches.set(stats.urgent_runs as i64);
        for (step, micros) in [
            ("gate", stats.urgent_gate_micros),
            ("source", stats.urgent_source_micros),
            ("store", stats.urgent_store_micros),
        ] {
            m.cache_urgent_fetch_seconds
                .with_label_values(&[step])
                .set(micros as f64 / 1e6);
        }
    }));
}
