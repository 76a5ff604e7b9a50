//! The gRPC `dragonfly.scheduler.v1.Scheduler` service over the in-memory [`State`].

use std::sync::Arc;
use std::time::Instant;

use dragonfly_proto::scheduler as pb;
use dragonfly_proto::scheduler::scheduler_server::Scheduler;
use tonic::{Request, Response, Status, Streaming};

use crate::authz;
use crate::config::SchedulingConfig;
use crate::metrics::Metrics;
use crate::scheduling::find_parents;
use crate::state::{State, StateError};
use dragonfly_membership::client::Dialer;

/// The service.
#[derive(Clone)]
pub struct SchedulerService {
    state: Arc<State>,
    config: SchedulingConfig,
    metrics: Arc<Metrics>,
    /// How peers are dialled (triggers, preheats).
    dialer: Dialer,
}

impl SchedulerService {
    /// A service over `state`, dialling peers through `dialer`.
    pub fn new(
        state: Arc<State>,
        config: SchedulingConfig,
        metrics: Arc<Metrics>,
        dialer: Dialer,
    ) -> SchedulerService {
        SchedulerService {
            state,
            config,
            metrics,
            dialer,
        }
    }
}

fn status(e: StateError) -> Status {
    match e {
        StateError::UnknownHost(_) | StateError::UnknownTask(_) | StateError::UnknownPeer(..) => {
            Status::not_found(e.to_string())
        }
        StateError::Invalid(_) => Status::invalid_argument(e.to_string()),
        StateError::Full(_) => Status::resource_exhausted(e.to_string()),
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn announce_host(
        &self,
        req: Request<pb::AnnounceHostRequest>,
    ) -> Result<Response<pb::AnnounceHostResponse>, Status> {
        if let Some(host) = &req.get_ref().host {
            authz::announce(&req, host)?;
        }
        let r = req.into_inner();
        if r.protocol / 1000 != pb::PROTOCOL / 1000 {
            return Err(Status::failed_precondition(format!(
                "protocol {} is not spoken here (scheduler speaks {}.x); upgrade the peer or the scheduler",
                r.protocol,
                pb::PROTOCOL / 1000
            )));
        }
        let host = r
            .host
            .ok_or_else(|| Status::invalid_argument("host is required"))?;
        self.state
            .announce_host(r.protocol, &host)
            .map_err(status)?;
        if r.fresh_start {
            let dropped = self.state.drop_peers_of(&host.id);
            if dropped > 0 {
                tracing::info!(host = %host.id, dropped, "host started anew: the peers it registered before are dropped");
            }
        }
        tracing::debug!(host = %host.id, seed = host.r#type == pb::HostType::Seed as i32, "host announced");
        Ok(Response::new(pb::AnnounceHostResponse {
            protocol: pb::PROTOCOL,
            keepalive_interval_secs: self.config.keepalive_interval_secs,
        }))
    }

    async fn keep_alive(
        &self,
        req: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        authz::as_host(&req, "KeepAlive", &req.get_ref().host_id)?;
        let r = req.into_inner();
        Ok(Response::new(pb::KeepAliveResponse {
            known: self.state.keepalive(&r.host_id, r.active_uploads),
        }))
    }

    async fn leave_host(
        &self,
        req: Request<pb::LeaveHostRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        authz::as_host(&req, "LeaveHost", &req.get_ref().host_id)?;
        self.state.leave_host(&req.into_inner().host_id);
        Ok(Response::new(pb::Empty {}))
    }

    async fn register_peer(
        &self,
        req: Request<pb::RegisterPeerRequest>,
    ) -> Result<Response<pb::RegisterPeerResponse>, Status> {
        authz::as_host(&req, "RegisterPeer", &req.get_ref().host_id)?;
        let r = req.into_inner();
        let task = r
            .task
            .ok_or_else(|| Status::invalid_argument("task is required"))?;
        let (content_length, piece_length) = self
            .state
            .register_peer(&r.host_id, &r.peer_id, &task)
            .map_err(status)?;
        Ok(Response::new(pb::RegisterPeerResponse {
            content_length,
            piece_length,
        }))
    }

    async fn report_pieces(
        &self,
        req: Request<Streaming<pb::PieceFinished>>,
    ) -> Result<Response<pb::ReportPiecesResponse>, Status> {
        let who = authz::host(&req, "ReportPieces")?;
        let mut stream = req.into_inner();
        let (mut accepted, mut refused) = (0, 0);
        while let Some(report) = stream.message().await? {
            authz::owns_peer(
                &self.state,
                &who,
                "ReportPieces",
                &report.task_id,
                &report.peer_id,
            )?;
            match self.state.piece_finished(&report) {
                Ok(true) => accepted += 1,
                Ok(false) => refused += 1,
                Err(e) => return Err(status(e)),
            }
        }
        self.metrics
            .piece_reports
            .with_label_values(&["accepted"])
            .inc_by(accepted);
        self.metrics
            .piece_reports
            .with_label_values(&["refused"])
            .inc_by(refused);
        Ok(Response::new(pb::ReportPiecesResponse {
            accepted,
            refused,
        }))
    }

    async fn find_parents(
        &self,
        req: Request<pb::FindParentsRequest>,
    ) -> Result<Response<pb::FindParentsResponse>, Status> {
        let started = Instant::now();
        authz::for_peer(
            &self.state,
            &req,
            "FindParents",
            &req.get_ref().task_id,
            &req.get_ref().peer_id,
        )?;
        let r = req.into_inner();
        let (resp, trigger) =
            find_parents(&self.state, &self.config, &r, &mut rand::rng()).map_err(status)?;
        let decision = match pb::Decision::try_from(resp.decision) {
            Ok(pb::Decision::Parents) => "parents",
            Ok(pb::Decision::Wait) => "wait",
            _ => "back_to_source",
        };
        self.metrics.decisions.with_label_values(&[decision]).inc();
        self.metrics
            .find_parents_seconds
            .with_label_values(&[decision])
            .observe(started.elapsed().as_secs_f64());
        if let Some(t) = trigger {
            self.metrics
                .seed_triggers
                .with_label_values(&["sent"])
                .inc();
            let (state, dialer) = (self.state.clone(), self.dialer.clone());
            tokio::spawn(async move { crate::seed::trigger(&state, &dialer, t).await });
        }
        Ok(Response::new(resp))
    }

    async fn report_bad_parent(
        &self,
        req: Request<pb::ReportBadParentRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        authz::for_peer(
            &self.state,
            &req,
            "ReportBadParent",
            &req.get_ref().task_id,
            &req.get_ref().peer_id,
        )?;
        let r = req.into_inner();
        self.metrics
            .bad_parents
            .with_label_values(&[if r.corrupt { "corrupt" } else { "failed" }])
            .inc();
        self.state.bad_parent(&r).map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn leave_peer(
        &self,
        req: Request<pb::LeavePeerRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        authz::for_peer(
            &self.state,
            &req,
            "LeavePeer",
            &req.get_ref().task_id,
            &req.get_ref().peer_id,
        )?;
        let r = req.into_inner();
        self.state.leave_peer(&r.task_id, &r.peer_id);
        Ok(Response::new(pb::Empty {}))
    }

    async fn stat_task(
        &self,
        req: Request<pb::StatTaskRequest>,
    ) -> Result<Response<pb::StatTaskResponse>, Status> {
        dragonfly_membership::server::require(&req, "StatTask", authz::MEMBERS)?;
        let r = req.into_inner();
        let resp = match self.state.task(&r.task_id) {
            Some(t) => {
                let t = t.lock().expect("task lock");
                pb::StatTaskResponse {
                    known: t.content_length > 0,
                    content_length: t.content_length,
                    piece_length: t.piece_length,
                    peers: t.peers.len() as u32,
                }
            }
            None => pb::StatTaskResponse::default(),
        };
        Ok(Response::new(resp))
    }

    async fn preheat(
        &self,
        req: Request<pb::PreheatRequest>,
    ) -> Result<Response<pb::PreheatResponse>, Status> {
        dragonfly_membership::server::require(&req, "Preheat", authz::MANAGER)?;
        crate::preheat::preheat(
            self.state.clone(),
            self.dialer.clone(),
            req.into_inner(),
            None,
        )
        .await
        .map(Response::new)
    }

    type PreheatWithProgressStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::PreheatEvent, Status>>;

    async fn preheat_with_progress(
        &self,
        req: Request<pb::PreheatRequest>,
    ) -> Result<Response<Self::PreheatWithProgressStream>, Status> {
        dragonfly_membership::server::require(&req, "PreheatWithProgress", authz::MANAGER)?;
        let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut work = tokio::spawn(crate::preheat::preheat(
            self.state.clone(),
            self.dialer.clone(),
            req.into_inner(),
            Some(progress_tx),
        ));
        tokio::spawn(async move {
            // The sink closes when the preheat ends; whatever queued up meanwhile goes as one
            // event. A caller that went away stops the preheat's polling.
            while let Some(first) = progress.recv().await {
                let mut batch = vec![first];
                while let Ok(p) = progress.try_recv() {
                    batch.push(p);
                }
                let event = pb::PreheatEvent {
                    progress: batch,
                    done: None,
                };
                if tx.send(Ok(event)).await.is_err() {
                    work.abort();
                    return;
                }
            }
            let last = match (&mut work).await {
                Ok(r) => r.map(|done| pb::PreheatEvent {
                    progress: Vec::new(),
                    done: Some(done),
                }),
                Err(e) => Err(Status::internal(format!("preheat task failed: {e}"))),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        dragonfly_membership::server::require(&req, "GetTask", authz::MANAGER)?;
        crate::task_jobs::get_task(&self.state, req.get_ref()).map(Response::new)
    }

    async fn delete_task(
        &self,
        req: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<pb::DeleteTaskResponse>, Status> {
        dragonfly_membership::server::require(&req, "DeleteTask", authz::MANAGER)?;
        crate::task_jobs::delete_task(self.state.clone(), self.dialer.clone(), req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_hosts(
        &self,
        req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        dragonfly_membership::server::require(&req, "ListHosts", authz::MANAGER)?;
        let hosts = self.state.hosts();
        let statuses = self.state.host_statuses(&hosts);
        Ok(Response::new(pb::ListHostsResponse { hosts, statuses }))
    }
}
