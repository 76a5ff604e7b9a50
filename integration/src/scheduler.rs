//! Our scheduler, `dragonfly-scheduler`, started from the built binary on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::procs::{free_port, wait_until, Proc};

/// A running scheduler.
pub struct Scheduler {
    /// `127.0.0.1:PORT` of its gRPC service.
    pub addr: String,
    proc: Proc,
    dir: PathBuf,
}

fn binary() -> Result<PathBuf> {
    crate::procs::built_binary("DRAGONFLY_SCHEDULER_BIN", "dragonfly-scheduler")
}

impl Scheduler {
    /// Starts a scheduler with its config and log in `dir`.
    pub fn start(dir: &Path) -> Result<Scheduler> {
        Scheduler::start_with(dir, "")
    }

    /// Like [`Scheduler::start`], `extra_yaml` ending its config.
    pub fn start_with(dir: &Path, extra_yaml: &str) -> Result<Scheduler> {
        std::fs::create_dir_all(dir)?;
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join("scheduler.yaml");
        std::fs::write(
            &config,
            format!("address: {addr}\nmetrics: {{address: null}}\nlog: {{level: 'dragonfly_scheduler=debug,info'}}\nscheduling: {{keepalive_interval_secs: 1}}\n{extra_yaml}\n"),
        )?;
        let proc = Scheduler::spawn(dir, &addr)?;
        Ok(Scheduler {
            addr,
            proc,
            dir: dir.to_owned(),
        })
    }

    fn spawn(dir: &Path, addr: &str) -> Result<Proc> {
        let mut cmd = Command::new(binary()?);
        cmd.arg("--config").arg(dir.join("scheduler.yaml"));
        let mut proc = Proc::spawn("dragonfly-scheduler", cmd, &dir.join("scheduler.log"))?;
        let up = wait_until("scheduler", Duration::from_secs(20), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        if let Err(e) = up {
            proc.check_running()?;
            return Err(e).context(proc.log_tail(20));
        }
        Ok(proc)
    }

    /// Stops it and starts a new one on the same address: all its state is gone.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.stop(Duration::from_secs(5));
        self.proc = Scheduler::spawn(&self.dir, &self.addr)?;
        Ok(())
    }

    /// Restarts it registered with the manager at `grpc` (`host:port`): the manager then
    /// lists it and sends it preheat jobs. Peers announce themselves again on their own.
    pub fn use_manager(&mut self, grpc: &str) -> Result<()> {
        let config = self.dir.join("scheduler.yaml");
        let mut yaml = std::fs::read_to_string(&config)?;
        yaml.push_str(&format!(
            "manager: {{address: '{grpc}', advertise_ip: 127.0.0.1}}\n"
        ));
        std::fs::write(&config, yaml)?;
        self.restart()
    }

    /// Its log.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Stops it.
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(5));
    }
}
