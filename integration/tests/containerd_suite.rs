//! containerd's own snapshotter conformance suite (`snapshots/testsuite`, from Debian's
//! `golang-github-containerd-containerd-dev`) against the built daemon. The Go harness is ours
//! (`integration/containerd-suite/suite_test.go`); it is built here with Debian's Go in GOPATH
//! mode, offline, and run three ways: containerd's proxy client on the daemon's socket with the
//! default config, the same with P2P configured (a scheduler running), and through a containerd
//! of its own (its metadata layer in front of our proxy plugin). Every case must pass; the only
//! skip allowed is the suite's own unconditional skip of `Rename` (see the harness).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use dragonfly_integration::procs::{built_binary, require_root, run_timeout, TestDir};
use dragonfly_integration::scheduler::Scheduler;

/// Where Debian installs containerd's Go source.
const GOCODE: &str = "/usr/share/gocode";

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Builds the Go test binary (once per source change; tests building at once take turns).
fn suite_binary() -> Result<PathBuf> {
    let suite_src =
        Path::new(GOCODE).join("src/github.com/containerd/containerd/snapshots/testsuite");
    anyhow::ensure!(
        suite_src.is_dir(),
        "{} is missing: install golang-go and golang-github-containerd-containerd-dev (scripts/install-deps.sh)",
        suite_src.display()
    );
    let out = target_dir().join("containerd-suite");
    let pkg = out.join("gopath/src/dragonfly-rs/suite");
    std::fs::create_dir_all(&pkg)?;
    let lock = std::fs::File::create(out.join("build.lock"))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("lock the Go build")?;
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("containerd-suite/suite_test.go");
    std::fs::copy(&harness, pkg.join("suite_test.go"))?;
    let bin = out.join("suite.test");
    run_timeout(
        Command::new("go")
            .args(["test", "-c", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&pkg)
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env(
                "GOPATH",
                format!("{}:{GOCODE}", out.join("gopath").display()),
            )
            .env("GOCACHE", out.join("gocache")),
        Duration::from_secs(900),
    )
    .context("build containerd's snapshotter suite with our harness (go test -c)")?;
    Ok(bin)
}

/// Runs the suite with `env`; panics with its output unless every case passed.
fn run_suite(env: &[(&str, &str)]) {
    require_root().expect("root");
    let bin = suite_binary().expect("suite binary");
    let daemon =
        built_binary("DRAGONFLY_SNAPSHOTTER_BIN", "dragonfly-snapshotter").expect("daemon");
    let tmp = TestDir::new("dfly-ctrsuite-").expect("temp dir");
    let mut cmd = Command::new(&bin);
    cmd.args(["-test.v", "-test.timeout", "15m"])
        .env("DRAGONFLY_SNAPSHOTTER_BIN", &daemon)
        .env("TMPDIR", tmp.path())
        .current_dir(tmp.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = match run_timeout(&mut cmd, Duration::from_secs(1000)) {
        Ok(out) => out,
        Err(e) => panic!("containerd's snapshotter suite failed ({env:?}):\n{e:#}"),
    };
    let count = |what: &str| {
        out.lines()
            .filter(|l| l.trim_start().starts_with(what))
            .count()
    };
    let skipped: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--- SKIP: "))
        .collect();
    assert_eq!(count("--- FAIL:"), 0, "{out}");
    assert!(
        count("--- PASS: TestDragonfly/") >= 20,
        "too few cases ran:\n{out}"
    );
    assert!(
        skipped
            .iter()
            .all(|s| s.starts_with("TestDragonfly/Rename ")),
        "unexpected skips {skipped:?}:\n{out}"
    );
}

#[test]
fn containerd_suite_passes_on_the_default_config() {
    run_suite(&[]);
}

#[test]
fn containerd_suite_passes_with_p2p_configured() {
    let dir = TestDir::new("dfly-ctrsuite-sched-").expect("temp dir");
    let scheduler = Scheduler::start(dir.path()).expect("scheduler");
    run_suite(&[("DRAGONFLY_SUITE_SCHEDULER", &scheduler.addr)]);
}

#[test]
fn containerd_suite_passes_through_containerd() {
    run_suite(&[("DRAGONFLY_SUITE_VIA", "containerd")]);
}
