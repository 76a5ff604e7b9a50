//! Joining the cluster with a token (`security.join`): a member without certificate files asks
//! the manager's certificate service for one — dialling it over TLS with the CA pinned by its
//! fingerprint, or, given only the token, by the CA the manager sends with a MAC the token
//! verifies — keeps what it got in its own 0700 directory (reused at the next start), and
//! renews it over mutual TLS with the current certificate when two thirds of its life are
//! gone, swapping it into every server and client that uses it.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use dragonfly_proto::manager::certificate_client::CertificateClient;
use dragonfly_proto::manager::{GetCaRequest, IssueCertificateRequest};
use serde::Deserialize;
use tonic::transport::Endpoint;

use crate::client::Dialer;
use crate::pinned::fingerprint;
use crate::{CertRequest, Credentials, Identity, MembershipError, Role};

/// `security.join`: where and how to get a certificate.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct JoinSpec {
    /// The manager's gRPC address, `host:port` (as its certificate names it).
    pub manager: String,
    /// The join token for this member's role, as the manager printed it.
    pub token: String,
    /// Or a file holding it (a mounted secret).
    pub token_file: Option<PathBuf>,
    /// `sha256:<hex>` of the cluster CA, as the manager printed it; empty: the CA the manager
    /// sends is trusted when it carries a MAC this member's token verifies.
    pub ca_fingerprint: String,
}

/// Who is joining: the identity and the addresses and names others dial it at.
#[derive(Debug, Clone)]
pub struct Member {
    /// Role and ID.
    pub identity: Identity,
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// DNS names.
    pub names: Vec<String>,
}

const CA: &str = "ca.pem";
const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";
/// How long a call to the manager may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait between failed renewals.
const RETRY: Duration = Duration::from_secs(60);

fn join_err(spec: &JoinSpec, reason: impl std::fmt::Display) -> MembershipError {
    MembershipError::Join {
        manager: spec.manager.clone(),
        reason: reason.to_string(),
    }
}

impl JoinSpec {
    fn token(&self) -> Result<String, MembershipError> {
        match &self.token_file {
            None => Ok(self.token.clone()),
            Some(p) => std::fs::read_to_string(p)
                .map(|t| t.trim().to_owned())
                .map_err(|source| MembershipError::Io {
                    what: "read the join token",
                    path: p.display().to_string(),
                    source,
                }),
        }
    }

    fn check(&self) -> Result<(), MembershipError> {
        let bad = |r: &str| MembershipError::bad("security.join", r);
        if self.manager.is_empty() {
            return Err(bad("manager (host:port of the manager's gRPC) is required"));
        }
        let fp = self.ca_fingerprint.strip_prefix("sha256:").unwrap_or("");
        let valid = fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit());
        if !self.ca_fingerprint.is_empty() && !valid {
            return Err(bad(
                "ca_fingerprint must be sha256:<64 hex digits>, as the manager printed it (or left out: the CA is then checked with the token)",
            ));
        }
        if self.token.is_empty() == self.token_file.is_none() {
            return Err(bad("set one of token and token_file"));
        }
        Ok(())
    }
}

/// Credentials for `me` from `dir` (kept from an earlier join) or, when there are none, they
/// name someone else or are near their end, from the manager `spec` names.
pub async fn obtain(
    spec: &JoinSpec,
    dir: &Path,
    me: &Member,
) -> Result<Credentials, MembershipError> {
    spec.check()?;
    private_dir(dir)?;
    if let Some(creds) = stored(spec, dir, me) {
        let current = names_all(&creds, me);
        if current && !due(&creds) {
            return Ok(creds);
        }
        match request(spec, me, Some(&creds)).await {
            Ok((ca, cert, key)) => return keep(dir, &ca, &cert, &key),
            // Still valid and for these addresses: use it; the renewal loop keeps trying, so
            // an unreachable manager does not stop this member from starting.
            Err(e) if current && SystemTime::now() < creds.validity().1 => {
                tracing::warn!(error = %e, until = ?creds.validity().1, "cannot renew the stored certificate yet; using it meanwhile");
                return Ok(creds);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the stored certificate; joining again with the token")
            }
        }
    }
    let (ca, cert, key) = request(spec, me, None).await?;
    let creds = keep(dir, &ca, &cert, &key)?;
    tracing::info!(identity = %creds.identity(), manager = %spec.manager, "joined the cluster: certificate issued by the manager");
    Ok(creds)
}

/// Renews `creds` before they expire, forever (run on a task of its own).
pub async fn renew_loop(spec: JoinSpec, dir: PathBuf, me: Member, creds: Credentials) {
    loop {
        let wait = renew_at(&creds)
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::time::sleep(wait).await;
        match renew(&spec, &dir, &me, &creds).await {
            Ok(()) => {
                tracing::info!(identity = %creds.identity(), until = ?creds.validity().1, "certificate renewed")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the certificate; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Renews `creds` now: a new key and certificate from the manager (asked over mutual TLS
/// with the current one), written to `dir` and presented from now on.
pub async fn renew(
    spec: &JoinSpec,
    dir: &Path,
    me: &Member,
    creds: &Credentials,
) -> Result<(), MembershipError> {
    let (ca, cert, key) = request(spec, me, Some(creds)).await?;
    write_all(dir, &ca, &cert, &key)?;
    creds.renew(&cert, &key)
}

/// When two thirds of the certificate's life are gone.
fn renew_at(creds: &Credentials) -> SystemTime {
    let (from, until) = creds.validity();
    let life = until.duration_since(from).unwrap_or_default();
    from + life * 2 / 3
}

fn due(creds: &Credentials) -> bool {
    SystemTime::now() >= renew_at(creds)
}

/// Whether the certificate names every address `me` is dialled at (a member whose address
/// changed renews, so others can still check its certificate against the address).
fn names_all(creds: &Credentials, me: &Member) -> bool {
    let named = creds.ips();
    me.ips.iter().all(|ip| named.contains(ip))
}

/// Credentials kept in `dir`, if they are usable for `me` with the pinned CA.
fn stored(spec: &JoinSpec, dir: &Path, me: &Member) -> Option<Credentials> {
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).ok();
    let creds = Credentials::from_pem(&read(CA)?, &read(CERT)?, &read(KEY)?)
        .map_err(|e| tracing::warn!(error = %e, dir = %dir.display(), "stored credentials are unusable; joining again"))
        .ok()?;
    // Without a fingerprint to pin, the stored CA is the one the token verified at the join.
    let pinned = spec.ca_fingerprint.is_empty()
        || creds
            .ca_der()
            .iter()
            .any(|c| fingerprint(c) == spec.ca_fingerprint.to_ascii_lowercase());
    (pinned && creds.identity() == &me.identity).then_some(creds)
}

/// Asks the manager for a certificate for `me`: with `current` (renewal) or the token.
/// Returns the CA, certificate and key, as PEM, checked.
async fn request(
    spec: &JoinSpec,
    me: &Member,
    current: Option<&Credentials>,
) -> Result<(String, String, String), MembershipError> {
    let new = CertRequest::create(&me.identity, &me.ips, &me.names)?;
    let token = match current {
        Some(_) => String::new(),
        None => spec.token()?,
    };
    let pin = match (spec.ca_fingerprint.is_empty(), current) {
        (false, _) => spec.ca_fingerprint.to_ascii_lowercase(),
        (true, Some(c)) => c
            .ca_der()
            .first()
            .map(|d| fingerprint(d))
            .unwrap_or_default(),
        (true, None) => discover_ca(spec, me.identity.role, &token).await?,
    };
    let channel = Dialer::pinned(&pin, current)?
        .connect_channel(endpoint(spec)?, &[Role::Manager])
        .await
        .map_err(|e| join_err(spec, crate::client::chain(&e)))?;
    let answer = CertificateClient::new(channel)
        .issue_certificate(IssueCertificateRequest {
            csr: new.csr_pem,
            token,
        })
        .await
        .map_err(|s| join_err(spec, format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    let creds = Credentials::from_pem(&answer.ca, &answer.certificate, &new.key_pem)?;
    if creds.identity() != &me.identity {
        return Err(join_err(
            spec,
            format!("it issued {}, not {}", creds.identity(), me.identity),
        ));
    }
    if !creds.ca_der().iter().any(|c| fingerprint(c) == pin) {
        return Err(join_err(spec, "its CA is not the pinned one"));
    }
    Ok((answer.ca, answer.certificate, new.key_pem))
}

fn endpoint(spec: &JoinSpec) -> Result<Endpoint, MembershipError> {
    Ok(Endpoint::from_shared(format!("http://{}", spec.manager))
        .map_err(|e| join_err(spec, e))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(CALL_TIMEOUT))
}

/// The fingerprint of the manager's CA, fetched without a CA to check the connection against
/// and trusted only when one of the answer's MACs is the one `token` makes.
async fn discover_ca(spec: &JoinSpec, role: Role, token: &str) -> Result<String, MembershipError> {
    let channel = Dialer::unchecked()?
        .connect_channel(endpoint(spec)?, &[Role::Manager])
        .await
        .map_err(|e| join_err(spec, crate::client::chain(&e)))?;
    let answer = CertificateClient::new(channel)
        .get_ca(GetCaRequest {
            role: role.as_str().to_owned(),
        })
        .await
        .map_err(|s| join_err(spec, format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    let ca = crate::credentials::pem_certs(&answer.ca, "the manager's CA")?;
    let ca = ca.first().ok_or_else(|| join_err(spec, "it sent no CA"))?;
    let mine = crate::pinned::ca_mac(&crate::pinned::token_key(token), ca);
    if !answer.macs.iter().any(|m| m == &mine) {
        return Err(join_err(
            spec,
            "the CA it sent is not vouched for by this join token (a wrong token, or someone else answering at that address); check the token, or set ca_fingerprint",
        ));
    }
    Ok(fingerprint(ca))
}

/// Writes the files and loads them back.
fn keep(dir: &Path, ca: &str, cert: &str, key: &str) -> Result<Credentials, MembershipError> {
    write_all(dir, ca, cert, key)?;
    Credentials::from_pem(ca, cert, key)
}

fn write_all(dir: &Path, ca: &str, cert: &str, key: &str) -> Result<(), MembershipError> {
    write(dir, CA, ca, 0o644)?;
    // Key before certificate: a crash in between leaves a pair that does not match, which
    // the next start refuses and replaces, never a certificate without its key.
    write(dir, KEY, key, 0o600)?;
    write(dir, CERT, cert, 0o644)
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MembershipError {
    let path = path.display().to_string();
    move |source| MembershipError::Io { what, path, source }
}

/// `dir`, created 0700 if missing; refused if it is a symlink or not a directory.
fn private_dir(dir: &Path) -> Result<(), MembershipError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create the credentials directory", dir))?;
    let meta = std::fs::symlink_metadata(dir).map_err(io_err("inspect", dir))?;
    if !meta.is_dir() {
        return Err(MembershipError::bad(
            "security.dir",
            format!("{} is not a directory", dir.display()),
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err("set the mode of", dir))
}

/// Replaces `dir/name` with `text` (a temporary file renamed over it; never through a
/// symlink).
fn write(dir: &Path, name: &str, text: &str, mode: u32) -> Result<(), MembershipError> {
    let tmp = dir.join(format!(".{name}.new"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io_err("write", &tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err("write", &tmp))?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(io_err("replace", &path))
}
