//! Who may call what on the scheduler. With cluster credentials (mutual TLS): peers and seed
//! peers act only as their own host (announce, keep alive, leave, register peers, report and
//! ask for their own peers), only seed peers announce as seeds, only the manager starts
//! preheats, lists hosts and gets or deletes tasks. Without credentials anyone may (loopback use).

use dragonfly_membership::server::require;
use dragonfly_membership::{Identity, Role};
use dragonfly_proto::scheduler as pb;
use tonic::{Request, Status};

use crate::state::State;

/// Hosts of the swarm.
const HOSTS: &[Role] = &[Role::Peer, Role::Seed];
/// Any member.
pub const MEMBERS: &[Role] = &[Role::Peer, Role::Seed, Role::Scheduler, Role::Manager];
/// The manager.
pub const MANAGER: &[Role] = &[Role::Manager];

/// The caller, who must be host `host_id` itself (`None` on a server without credentials).
pub fn as_host<T>(req: &Request<T>, what: &str, host_id: &str) -> Result<Option<Identity>, Status> {
    match require(req, what, HOSTS)? {
        Some(id) if id.id != host_id => Err(Status::permission_denied(format!(
            "{id} may call {what} only as host {}, not {host_id}",
            id.id
        ))),
        who => Ok(who),
    }
}

/// The caller of `AnnounceHost` for `host`: that host, and a seed peer if it says it is one.
pub fn announce<T>(req: &Request<T>, host: &pb::Host) -> Result<(), Status> {
    let who = as_host(req, "AnnounceHost", &host.id)?;
    let seed = host.r#type == pb::HostType::Seed as i32;
    match who {
        Some(id) if seed && id.role != Role::Seed => Err(Status::permission_denied(format!(
            "{id} may not announce itself as a seed peer; its certificate is a peer's"
        ))),
        _ => Ok(()),
    }
}

/// The caller (a host), returned so each of a stream's reports can be checked.
pub fn host<T>(req: &Request<T>, what: &str) -> Result<Option<Identity>, Status> {
    require(req, what, HOSTS)
}

/// Whether `who` (from [`host`]) may act for peer `peer_id` of `task_id`: the peer must be
/// one of its own host's (an unknown peer is left to the call itself to refuse).
pub fn owns_peer(
    state: &State,
    who: &Option<Identity>,
    what: &str,
    task_id: &str,
    peer_id: &str,
) -> Result<(), Status> {
    let Some(id) = who else { return Ok(()) };
    match state.peer_host(task_id, peer_id) {
        Some(host) if *host != *id.id => Err(Status::permission_denied(format!(
            "{id} may call {what} only for its own peers; {peer_id} is host {host}'s"
        ))),
        _ => Ok(()),
    }
}

/// The caller of a peer's call: a host acting for its own peer.
pub fn for_peer<T>(
    state: &State,
    req: &Request<T>,
    what: &str,
    task_id: &str,
    peer_id: &str,
) -> Result<(), Status> {
    let who = host(req, what)?;
    owns_peer(state, &who, what, task_id, peer_id)
}
