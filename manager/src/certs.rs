//! `dragonfly-manager certs`: the cluster CA kept in a directory, and member certificates
//! issued from it as the three files every component's `security: {ca, cert, key}` names.
//! Keys are written 0600 in 0700 directories; nothing is overwritten unless asked.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use dragonfly_membership::{Ca, Identity, Role};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";

fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn write(path: &Path, text: &str, mode: u32, replace: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    // A symlink planted at the name is refused, never written through.
    opts.write(true).mode(mode).custom_flags(libc::O_NOFOLLOW);
    if replace {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).with_context(|| {
        format!(
            "cannot write {} (it exists? then keep it, or pass --force)",
            path.display()
        )
    })?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Creates the CA in `dir` (refusing to replace one); returns its fingerprint.
pub fn init(dir: &Path) -> anyhow::Result<String> {
    private_dir(dir)?;
    anyhow::ensure!(
        !dir.join(CA_KEY).exists(),
        "{} already holds a CA; keep it (every member's certificate comes from it)",
        dir.display()
    );
    let ca = Ca::create("dragonfly-rs cluster CA")?;
    write(&dir.join(CA_KEY), ca.key_pem(), 0o600, false)?;
    write(&dir.join(CA_CERT), ca.cert_pem(), 0o644, false)?;
    Ok(ca.fingerprint()?)
}

/// The CA in `dir`, created there first if there is none; `true` when it was created.
pub fn load_or_create(dir: &Path) -> anyhow::Result<(Ca, bool)> {
    let created = if dir.join(CA_KEY).exists() {
        false
    } else {
        init(dir)?;
        true
    };
    Ok((load(dir)?, created))
}

/// The CA in `dir`.
pub fn load(dir: &Path) -> anyhow::Result<Ca> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {} (run `dragonfly-manager certs init` first)",
                p.display()
            )
        })
    };
    Ok(Ca::load(&read(CA_CERT)?, &read(CA_KEY)?)?)
}

/// What to issue.
pub struct IssueArgs<'a> {
    /// The CA's directory (from [`init`]).
    pub ca_dir: &'a Path,
    /// The member's role.
    pub role: Role,
    /// Its ID (a peer's or seed peer's host ID).
    pub id: &'a str,
    /// Addresses others dial it at.
    pub ips: &'a [IpAddr],
    /// Names others dial it by.
    pub names: &'a [String],
    /// Validity.
    pub days: u64,
    /// Where `ca.pem`, `cert.pem` and `key.pem` go.
    pub out: &'a Path,
    /// Replace files already there.
    pub force: bool,
}

/// Issues a certificate into `a.out`.
pub fn issue(a: &IssueArgs<'_>) -> anyhow::Result<Identity> {
    let ca = load(a.ca_dir)?;
    let who = Identity::new(a.role, a.id)?;
    let valid = Duration::from_secs(a.days.max(1) * 24 * 3600);
    let issued = ca.issue(&who, a.ips, a.names, valid)?;
    private_dir(a.out)?;
    write(&a.out.join("ca.pem"), ca.cert_pem(), 0o644, a.force)?;
    write(&a.out.join("cert.pem"), &issued.cert_pem, 0o644, a.force)?;
    write(&a.out.join("key.pem"), &issued.key_pem, 0o600, a.force)?;
    Ok(who)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_ca_and_a_members_files_load_as_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let fp = init(&ca_dir).unwrap();
        assert!(fp.starts_with("sha256:"));
        assert!(init(&ca_dir).is_err(), "a CA is never replaced");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca_dir.join(CA_KEY)), 0o600);
        assert_eq!(mode(&ca_dir), 0o700);
        let out = dir.path().join("node-1");
        let args = IssueArgs {
            ca_dir: &ca_dir,
            role: Role::Peer,
            id: "node-1",
            ips: &["10.0.0.5".parse().unwrap()],
            names: &[],
            days: 30,
            out: &out,
            force: false,
        };
        issue(&args).unwrap();
        assert_eq!(mode(&out.join("key.pem")), 0o600);
        let creds = dragonfly_membership::TlsFiles {
            ca: Some(out.join("ca.pem")),
            cert: Some(out.join("cert.pem")),
            key: Some(out.join("key.pem")),
            ..Default::default()
        }
        .credentials()
        .unwrap()
        .unwrap();
        assert_eq!(
            creds.identity(),
            &Identity::new(Role::Peer, "node-1").unwrap()
        );
        assert!(issue(&args).is_err(), "no overwrite without --force");
        issue(&IssueArgs {
            force: true,
            ..args
        })
        .unwrap();
    }
}
