//! `dragonfly-manager`: clusters, users and tokens, preheat jobs, REST/Open API, console and
//! the gRPC service for schedulers and seed peers.

use std::path::PathBuf;

use clap::Parser;
use dragonfly_manager::config::Config;

/// Command line.
#[derive(Parser)]
#[command(
    version,
    about = "Dragonfly-rs manager: clusters, preheat jobs, Open API, console"
)]
struct Cli {
    /// YAML config (see config/manager.yaml); without it every default applies.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides http.listen.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// Overrides grpc.listen.
    #[arg(long)]
    grpc: Option<std::net::SocketAddr>,
    /// Overrides data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides database.url.
    #[arg(long, env = "DRAGONFLY_DATABASE_URL")]
    database: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Commands besides serving.
#[derive(clap::Subcommand)]
enum Command {
    /// The cluster CA and member certificates (mutual TLS between components).
    #[command(subcommand)]
    Certs(Certs),
    /// Join tokens members present to get a certificate from the manager's CA (`ca.dir`).
    #[command(subcommand, name = "join-token")]
    JoinToken(JoinToken),
    /// Members the CA issued certificates to.
    #[command(subcommand)]
    Members(Members),
}

#[derive(clap::Subcommand)]
enum JoinToken {
    /// Makes a token for ROLE and prints it (only now).
    Create {
        /// scheduler, seed or peer.
        #[arg(long)]
        role: dragonfly_membership::Role,
        /// Days it is valid (default: ca.token_validity_days).
        #[arg(long)]
        days: Option<u32>,
    },
    /// Lists tokens (never their secrets).
    List,
    /// Deletes token ID: nobody joins with it any more (certificates already issued stay).
    Delete {
        /// Its ID, from `list`.
        id: i64,
    },
}

#[derive(clap::Subcommand)]
enum Members {
    /// Lists members, their addresses, expiry and revocation.
    List,
    /// Revokes a member: it gets no certificate again (renewal or token) until forgotten;
    /// the one it has stays valid until it expires (at most ca.validity_days).
    Revoke {
        /// scheduler, seed or peer.
        #[arg(long)]
        role: dragonfly_membership::Role,
        /// Its ID.
        #[arg(long)]
        id: String,
    },
    /// Forgets a member: its ID may join again with a token, from any address.
    Forget {
        /// scheduler, seed or peer.
        #[arg(long)]
        role: dragonfly_membership::Role,
        /// Its ID.
        #[arg(long)]
        id: String,
    },
}

async fn join_tokens(c: JoinToken, config: &Config) -> anyhow::Result<()> {
    let db = dragonfly_manager::store::Db::open(&config.database_url()).await?;
    match c {
        JoinToken::Create { role, days } => {
            let days = days.unwrap_or(config.ca.token_validity_days).max(1);
            let token = dragonfly_manager::issuer::new_join_token(&db, role, days).await?;
            println!("{token}");
        }
        JoinToken::List => {
            for t in db.join_tokens().await? {
                println!(
                    "{}\t{}\tcreated {}\texpires {}",
                    t.id, t.role, t.created_at, t.expires_at
                );
            }
        }
        JoinToken::Delete { id } => db.delete_join_token(id).await?,
    }
    Ok(())
}

async fn members(c: Members, config: &Config) -> anyhow::Result<()> {
    let db = dragonfly_manager::store::Db::open(&config.database_url()).await?;
    match c {
        Members::List => {
            for m in db.issued_members().await? {
                let revoked = if m.revoked_at.is_empty() {
                    String::new()
                } else {
                    format!("\trevoked {}", m.revoked_at)
                };
                println!(
                    "{}\t{}\t{}\tuntil {}{revoked}",
                    m.role, m.member_id, m.ips, m.not_after
                );
            }
        }
        Members::Revoke { role, id } => db.revoke_member(role.as_str(), &id).await?,
        Members::Forget { role, id } => db.forget_member(role.as_str(), &id).await?,
    }
    Ok(())
}

#[derive(clap::Subcommand)]
enum Certs {
    /// Creates the cluster CA in DIR (ca.pem, ca-key.pem) and prints its fingerprint.
    Init {
        /// Where the CA lives (created 0700; keep ca-key.pem private).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issues a member certificate: OUT gets ca.pem, cert.pem and key.pem for its
    /// `security: {ca, cert, key}`.
    Issue {
        /// The CA's directory.
        #[arg(long)]
        ca: PathBuf,
        /// manager, scheduler, seed or peer.
        #[arg(long)]
        role: dragonfly_membership::Role,
        /// Its ID: a peer's or seed peer's host ID (p2p.host_id), a scheduler's name.
        #[arg(long)]
        id: String,
        /// An address other components dial it at (repeat for several).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// A DNS name other components dial it by (repeat for several).
        #[arg(long = "dns")]
        names: Vec<String>,
        /// Days it is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Where the three files go (created 0700).
        #[arg(long)]
        out: PathBuf,
        /// Replace files already there (renewal).
        #[arg(long)]
        force: bool,
    },
}

fn certs(c: Certs) -> anyhow::Result<()> {
    match c {
        Certs::Init { dir } => {
            let fp = dragonfly_manager::certs::init(&dir)?;
            println!("cluster CA created in {}: {fp}", dir.display());
        }
        Certs::Issue {
            ca,
            role,
            id,
            ips,
            names,
            days,
            out,
            force,
        } => {
            let who = dragonfly_manager::certs::issue(&dragonfly_manager::certs::IssueArgs {
                ca_dir: &ca,
                role,
                id: &id,
                ips: &ips,
                names: &names,
                days,
                out: &out,
                force,
            })?;
            println!("{who}: {}/{{ca,cert,key}}.pem", out.display());
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Certs(c)) = cli.command {
        return certs(c);
    }
    let mut config = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(a) = cli.http {
        config.http.listen = a;
    }
    if let Some(a) = cli.grpc {
        config.grpc.listen = a;
    }
    if let Some(d) = cli.data_dir {
        config.data_dir = d;
    }
    if let Some(u) = cli.database {
        config.database.url = u;
    }
    config.validate()?;
    match cli.command {
        Some(Command::JoinToken(c)) => return join_tokens(c, &config).await,
        Some(Command::Members(c)) => return members(c, &config).await,
        _ => {}
    }
    dragonfly_runtime::log::init(&config.log)?;
    dragonfly_manager::server::start(config).await?;
    dragonfly_runtime::shutdown::signal_received().await;
    Ok(())
}
