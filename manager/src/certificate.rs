//! The gRPC `dragonfly.manager.v1.Certificate` service: a member sends a certificate request
//! with a join token (first contact) or over mutual TLS with its current certificate
//! (renewal), and gets a certificate from the manager's CA. The rules:
//! - a token gives certificates for its own role only, never a manager's;
//! - a renewal names exactly the caller's identity;
//! - every address a certificate names is the caller's source address (unless `ca.any_ip`);
//! - an ID stays with the addresses it first joined from, until an operator forgets it;
//! - a revoked ID gets nothing.

use std::net::IpAddr;
use std::sync::Arc;

use dragonfly_membership::server::ConnPeer;
use dragonfly_membership::{CertRequest, Identity, Role};
use dragonfly_proto::manager as pb;
use dragonfly_proto::manager::certificate_server::Certificate;
use tonic::{Request, Response, Status};

use crate::issuer::Issuer;
use crate::store::Db;

/// The service.
pub struct CertificateService {
    db: Db,
    issuer: Arc<Issuer>,
}

impl CertificateService {
    /// Issues from `issuer`, recording members in `db`.
    pub fn new(db: Db, issuer: Arc<Issuer>) -> CertificateService {
        CertificateService { db, issuer }
    }
}

fn unavailable(e: crate::store::StoreError) -> Status {
    Status::unavailable(format!("the manager's database: {e}"))
}

/// The addresses as stored: sorted, comma-separated.
fn ip_list(ips: &[IpAddr]) -> String {
    let mut v: Vec<String> = ips.iter().map(|i| i.to_canonical().to_string()).collect();
    v.sort();
    v.join(",")
}

impl CertificateService {
    /// Who may have a certificate for `req`: the caller renewing its own, or a token holder
    /// of the same role.
    async fn authorize(
        &self,
        caller: Option<&Identity>,
        token: &str,
        req: &CertRequest,
    ) -> Result<(), Status> {
        let wanted = &req.identity;
        if wanted.role == Role::Manager {
            return Err(Status::permission_denied(
                "the manager's certificate is never issued over the network",
            ));
        }
        if token.is_empty() {
            return match caller {
                Some(me) if me == wanted => Ok(()),
                Some(me) => Err(Status::permission_denied(format!(
                    "{me} may renew only its own certificate, not one for {wanted}"
                ))),
                None => Err(Status::unauthenticated(
                    "a join token or a current certificate is required",
                )),
            };
        }
        let role = self
            .db
            .join_token_role(&dragonfly_membership::token_key(token))
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Status::unauthenticated("the join token is unknown, expired or deleted; ask the operator for a current one (dragonfly-manager join-token create)"))?;
        if role != wanted.role.as_str() {
            return Err(Status::permission_denied(format!(
                "this join token is for a {role}, not a {}",
                wanted.role.as_str()
            )));
        }
        Ok(())
    }

    /// The addresses a certificate may name, and the binding of an ID to them.
    async fn check_binding(
        &self,
        renewal: bool,
        source: Option<IpAddr>,
        req: &CertRequest,
    ) -> Result<(), Status> {
        if !self.issuer.any_ip {
            let source = source.map(|s| s.to_canonical());
            if let Some(ip) = req.ips.iter().find(|ip| Some(ip.to_canonical()) != source) {
                return Err(Status::permission_denied(format!(
                    "the certificate may name only the address the request comes from ({}), not {ip} (or set ca.any_ip on the manager for members behind NAT)",
                    source.map_or("unknown".into(), |s| s.to_string())
                )));
            }
        }
        let who = &req.identity;
        let known = self
            .db
            .issued_member(who.role.as_str(), &who.id)
            .await
            .map_err(unavailable)?;
        match known {
            Some(m) if !m.revoked_at.is_empty() => Err(Status::permission_denied(format!(
                "{who} was revoked at {}; an operator must forget it before it joins again",
                m.revoked_at
            ))),
            Some(m) if !renewal && !self.issuer.any_ip && m.ips != ip_list(&req.ips) => {
                Err(Status::permission_denied(format!(
                    "{who} already belongs to a member at {:?}; an operator must forget it (dragonfly-manager members forget) before another address takes it",
                    m.ips
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Most MACs one GetCa answers with (tokens of one role).
const MAX_MACS: i64 = 64;

#[tonic::async_trait]
impl Certificate for CertificateService {
    async fn get_ca(
        &self,
        req: Request<pb::GetCaRequest>,
    ) -> Result<Response<pb::GetCaResponse>, Status> {
        let role: Role =
            req.get_ref()
                .role
                .parse()
                .map_err(|e: dragonfly_membership::MembershipError| {
                    Status::invalid_argument(e.to_string())
                })?;
        if role == Role::Manager {
            return Err(Status::invalid_argument(
                "there are no join tokens for managers",
            ));
        }
        let hashes = self
            .db
            .join_token_hashes(role.as_str(), MAX_MACS)
            .await
            .map_err(unavailable)?;
        let der = &self.issuer.ca_der;
        Ok(Response::new(pb::GetCaResponse {
            ca: self.issuer.ca.cert_pem().to_owned(),
            macs: hashes
                .iter()
                .map(|h| dragonfly_membership::ca_mac(h, der))
                .collect(),
        }))
    }

    async fn issue_certificate(
        &self,
        req: Request<pb::IssueCertificateRequest>,
    ) -> Result<Response<pb::IssueCertificateResponse>, Status> {
        let peer = req.extensions().get::<ConnPeer>().cloned();
        let Some(peer) = peer.filter(|p| p.encrypted) else {
            return Err(Status::failed_precondition(
                "certificates are issued only over TLS",
            ));
        };
        let r = req.into_inner();
        let csr =
            CertRequest::parse(&r.csr).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let caller = peer.identity.as_ref();
        self.authorize(caller, &r.token, &csr).await?;
        self.check_binding(r.token.is_empty(), peer.remote.map(|a| a.ip()), &csr)
            .await?;
        let cert = self
            .issuer
            .ca
            .sign(&csr, self.issuer.validity)
            .map_err(|e| Status::internal(e.to_string()))?;
        let not_after = chrono::Utc::now()
            + chrono::Duration::from_std(self.issuer.validity).unwrap_or_default();
        let who = &csr.identity;
        self.db
            .record_issued(
                who.role.as_str(),
                &who.id,
                &ip_list(&csr.ips),
                &crate::store::rfc3339(not_after),
            )
            .await
            .map_err(unavailable)?;
        tracing::info!(member = %who, ips = %ip_list(&csr.ips), renewal = r.token.is_empty(), remote = ?peer.remote, "certificate issued");
        Ok(Response::new(pb::IssueCertificateResponse {
            certificate: cert,
            ca: self.issuer.ca.cert_pem().to_owned(),
        }))
    }
}
