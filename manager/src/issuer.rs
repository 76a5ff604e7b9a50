//! The manager as the cluster's CA (`ca:` in its config): loads or creates the CA, issues the
//! manager its own certificate (when `security:` gives none) and keeps it fresh, makes join
//! tokens, and on first start prints what a member needs to join.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dragonfly_membership::{Ca, Credentials, Identity, Role};

use crate::config::{CaConfig, Config};
use crate::store::Db;

/// The CA and how it issues.
pub struct Issuer {
    /// The CA.
    pub ca: Ca,
    /// Its fingerprint, which members pin.
    pub fingerprint: String,
    /// Validity of a member's certificate.
    pub validity: Duration,
    /// Whether certificates may name addresses other than the caller's.
    pub any_ip: bool,
    /// The CA's DER certificate (what GetCa's MACs are over).
    pub ca_der: Vec<u8>,
}

/// Validity of the manager's own certificate (re-issued at two thirds, and at each start).
const OWN_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Prefix of join tokens (so a leaked one is recognisable).
pub const TOKEN_PREFIX: &str = "dfjoin_";
/// Roles a join token can be for.
pub const JOIN_ROLES: [Role; 3] = [Role::Scheduler, Role::Seed, Role::Peer];

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Issuer {
    /// The CA in `config.dir` (created when missing); `None` without `ca.dir`. Returns
    /// whether the CA was created now.
    pub fn open(config: &CaConfig) -> anyhow::Result<Option<(Issuer, bool)>> {
        let Some(dir) = &config.dir else {
            return Ok(None);
        };
        let (ca, created) = crate::certs::load_or_create(dir)
            .with_context(|| format!("cannot open the cluster CA in ca.dir {}", dir.display()))?;
        let fingerprint = ca.fingerprint()?;
        let ca_der = ca.cert_der()?;
        Ok(Some((
            Issuer {
                ca,
                fingerprint,
                validity: DAY * config.validity_days,
                any_ip: config.any_ip,
                ca_der,
            },
            created,
        )))
    }

    /// The manager's own credentials: named by the host's name, for the addresses members
    /// dial (`ca.ips`, `ca.names`, the listen address, loopback).
    pub fn own_credentials(&self, config: &Config) -> anyhow::Result<Credentials> {
        let (ips, names) = own_names(config);
        let who = Identity::new(Role::Manager, &hostname())?;
        Ok(self.ca.credentials_for(&who, &ips, &names, OWN_VALIDITY)?)
    }

    /// Re-issues the manager's credentials in place at two thirds of their life, forever.
    pub async fn refresh_loop(self: Arc<Self>, config: Arc<Config>, creds: Credentials) {
        loop {
            tokio::time::sleep(OWN_VALIDITY * 2 / 3).await;
            let (ips, names) = own_names(&config);
            let issued = self.ca.issue(creds.identity(), &ips, &names, OWN_VALIDITY);
            match issued.map(|i| creds.renew(&i.cert_pem, &i.key_pem)) {
                Ok(Ok(())) => tracing::info!("the manager's own certificate was renewed"),
                Ok(Err(e)) => tracing::error!(error = %e, "cannot renew the manager's certificate"),
                Err(e) => tracing::error!(error = %e, "cannot renew the manager's certificate"),
            }
        }
    }
}

/// The host's name, if it can be a member ID.
fn hostname() -> String {
    Some(dragonfly_runtime::registration::hostname("manager"))
        .filter(|h| Identity::new(Role::Manager, h).is_ok())
        .unwrap_or_else(|| "manager".into())
}

fn own_names(config: &Config) -> (Vec<IpAddr>, Vec<String>) {
    let mut ips = config.ca.ips.clone();
    let listen = config.grpc.listen.ip();
    ips.extend([
        listen,
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
    ]);
    ips.retain(|ip| !ip.is_unspecified());
    ips.sort();
    ips.dedup();
    let mut names = config.ca.names.clone();
    names.push("localhost".into());
    names.dedup();
    (ips, names)
}

/// A new join token for `role`, valid `days`; the secret is returned once.
pub async fn new_join_token(db: &Db, role: Role, days: u32) -> anyhow::Result<String> {
    anyhow::ensure!(
        JOIN_ROLES.contains(&role),
        "join tokens are for schedulers, seed peers and peers, not {}",
        role.as_str()
    );
    let token = crate::auth::new_token(&format!("{TOKEN_PREFIX}{}_", role.as_str()));
    let expires = chrono::Utc::now() + chrono::Duration::days(i64::from(days));
    db.create_join_token(
        role.as_str(),
        &dragonfly_membership::token_key(&token),
        &crate::store::rfc3339(expires),
    )
    .await?;
    Ok(token)
}

/// Registers the tokens in `ca.tokens_dir` (files named after their role), each valid
/// `ca.token_validity_days` from now.
pub async fn register_token_files(db: &Db, config: &CaConfig) -> anyhow::Result<()> {
    let Some(dir) = &config.tokens_dir else {
        return Ok(());
    };
    let expires =
        chrono::Utc::now() + chrono::Duration::days(i64::from(config.token_validity_days));
    let mut found = 0;
    for role in JOIN_ROLES {
        let path = dir.join(role.as_str());
        let token = match std::fs::read_to_string(&path) {
            Ok(t) => t.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the join token {}", path.display()))
            }
        };
        anyhow::ensure!(
            token.len() >= 16,
            "the join token in {} is shorter than 16 characters",
            path.display()
        );
        db.ensure_join_token(
            role.as_str(),
            &dragonfly_membership::token_key(&token),
            &crate::store::rfc3339(expires),
        )
        .await?;
        found += 1;
    }
    anyhow::ensure!(
        found > 0,
        "ca.tokens_dir {} holds none of the files scheduler, seed and peer",
        dir.display()
    );
    tracing::info!(dir = %dir.display(), tokens = found, "join tokens registered from ca.tokens_dir");
    Ok(())
}

/// On a manager that has no join tokens yet, makes one per role and prints them with the CA's
/// fingerprint and the manager's address: what a member's `security.join` needs.
pub async fn first_start(
    db: &Db,
    issuer: &Issuer,
    config: &Config,
    grpc: SocketAddr,
) -> anyhow::Result<()> {
    if !db.join_tokens().await?.is_empty() {
        return Ok(());
    }
    let host = config
        .ca
        .names
        .first()
        .cloned()
        .or_else(|| config.ca.ips.first().map(IpAddr::to_string))
        .unwrap_or_else(|| grpc.ip().to_string());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let mut text = format!(
        "\nThe cluster CA is ready. A member joins with this in its config (the token for its role):\n\n  security:\n    join:\n      manager: {host}:{}\n      ca_fingerprint: {}\n      token: <below>\n\n",
        grpc.port(),
        issuer.fingerprint
    );
    for role in JOIN_ROLES {
        let token = new_join_token(db, role, config.ca.token_validity_days).await?;
        text.push_str(&format!("  {:<9}  {token}\n", role.as_str()));
    }
    text.push_str(
        "\nThe tokens are shown only now; `dragonfly-manager join-token create` makes more.\n",
    );
    eprintln!("{text}");
    tracing::info!(fingerprint = %issuer.fingerprint, "join tokens created and printed on stderr");
    Ok(())
}
