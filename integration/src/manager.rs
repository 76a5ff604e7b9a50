//! Our manager, `dragonfly-manager`, from the built binary: HTTP and gRPC on free loopback
//! ports, SQLite in its dir or a given database URL, a known root password. It can be killed
//! and started again on the same database and ports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::procs::{free_port, wait_until, Proc};

/// Password of the root user in tests.
pub const ROOT_PASSWORD: &str = "test-root-password";

/// A running manager.
pub struct Manager {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT` of its gRPC service.
    pub grpc: String,
    proc: Proc,
    dir: PathBuf,
}

fn binary() -> Result<PathBuf> {
    crate::procs::built_binary("DRAGONFLY_MANAGER_BIN", "dragonfly-manager")
}

impl Manager {
    /// Starts a manager in `dir` on `database` (empty: SQLite in `dir`); `extra` YAML is added
    /// to its config (e.g. `jobs: {stale_after_secs: 2}`).
    pub fn start(dir: &Path, database: &str, extra: &str) -> Result<Manager> {
        Manager::start_at(dir, database, extra, free_port(), free_port())
    }

    /// Like [`Manager::start`] on given loopback ports (so daemons can be configured with
    /// the manager's address before it runs).
    pub fn start_at(
        dir: &Path,
        database: &str,
        extra: &str,
        http: u16,
        grpc: u16,
    ) -> Result<Manager> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("manager.yaml"),
            format!(
                "data_dir: {}\ndatabase: {{url: '{database}'}}\nhttp: {{listen: '127.0.0.1:{http}'}}\ngrpc: {{listen: '127.0.0.1:{grpc}', keepalive_interval_secs: 1}}\nauth: {{root_password: {ROOT_PASSWORD}}}\nlog: {{level: 'dragonfly_manager=debug,info'}}\n{extra}",
                dir.display()
            ),
        )?;
        let mut m = Manager {
            url: format!("http://127.0.0.1:{http}"),
            grpc: format!("127.0.0.1:{grpc}"),
            proc: Manager::spawn(dir)?,
            dir: dir.to_owned(),
        };
        m.wait_ready()?;
        Ok(m)
    }

    fn spawn(dir: &Path) -> Result<Proc> {
        let mut cmd = Command::new(binary()?);
        cmd.arg("--config").arg(dir.join("manager.yaml"));
        Proc::spawn("dragonfly-manager", cmd, &dir.join("manager.log"))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let addr = self.url.trim_start_matches("http://").to_owned();
        let up = wait_until("manager", Duration::from_secs(30), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        if let Err(e) = up {
            self.proc.check_running()?;
            return Err(e).context(self.proc.log_tail(30));
        }
        Ok(())
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts it again on the same config (database, ports).
    pub fn restart(&mut self) -> Result<()> {
        self.proc.stop(Duration::from_secs(5));
        self.proc = Manager::spawn(&self.dir)?;
        self.wait_ready()
    }

    /// Its log.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}
