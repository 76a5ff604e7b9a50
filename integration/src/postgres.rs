//! A PostgreSQL server per test: `initdb` into a temp dir (as the `postgres` user: the server
//! refuses to run as root), `pg_ctl start` on a free loopback port with its socket in the same
//! dir, trust auth on loopback. Stopped (immediate mode) and removed on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::procs::{free_port, run};

/// A running server.
pub struct Postgres {
    /// `postgres://postgres@127.0.0.1:PORT`
    pub url: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// The newest installed server's bin dir.
fn bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (scripts/install-deps.sh installs it)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no pg_ctl under /usr/lib/postgresql/*/bin")
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    c
}

impl Postgres {
    /// Starts a fresh server.
    pub fn start() -> Result<Postgres> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("dfly-pg-")
            .tempdir_in("/var/tmp")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        nix::unistd::chown(
            dir.path(),
            Some(nix::unistd::Uid::from_raw(uid("postgres")?)),
            None,
        )?;
        let data = dir.path().join("data");
        run(as_postgres(&bin, "initdb").arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]))
        .context("initdb")?;
        let port = free_port();
        run(as_postgres(&bin, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                dir.path().display()
            ))
            .args(["-w", "start"]))
        .context("pg_ctl start")?;
        Ok(Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}"),
            dir,
            bin,
        })
    }

    /// A new empty database on the server; its URL.
    pub fn database(&self, name: &str) -> Result<String> {
        let port = self.url.rsplit(':').next().unwrap_or_default().to_owned();
        run(as_postgres(&self.bin, "createdb").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            name,
        ]))
        .with_context(|| format!("createdb {name}"))?;
        Ok(format!("{}/{name}", self.url))
    }
}

fn uid(user: &str) -> Result<u32> {
    nix::unistd::User::from_name(user)?
        .map(|u| u.uid.as_raw())
        .with_context(|| format!("no {user} user (install postgresql)"))
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = run(as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]));
    }
}
