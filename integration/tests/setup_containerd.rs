//! `dragonfly-snapshotter setup containerd` against the output of `containerd config default`:
//! a real containerd starts with the result and lists our proxy snapshotter; a second run
//! changes nothing; `--undo` takes it away and containerd starts without it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dragonfly_integration::procs::{built_binary, require_root, run, wait_until, Proc, TestDir};

fn setup(config: &Path, extra: &[&str]) -> String {
    let bin = built_binary("DRAGONFLY_SNAPSHOTTER_BIN", "dragonfly-snapshotter").expect("binary");
    run(Command::new(bin)
        .args(["setup", "containerd", "--config"])
        .arg(config)
        .args(["--socket", "/run/dragonfly-test/snapshotter.sock"])
        .args(extra))
    .expect("setup containerd")
}

/// Starts containerd on `config` and returns `ctr plugins ls` once it answers.
fn plugins(dir: &Path, config: &Path) -> String {
    let sock = dir.join("state/containerd.sock");
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(config);
    let mut proc = Proc::spawn("containerd", cmd, &dir.join("containerd.log")).expect("containerd");
    let ctr = || {
        run(Command::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(["plugins", "ls"]))
    };
    let up = wait_until("containerd", Duration::from_secs(30), || ctr().is_ok());
    let out = ctr();
    proc.stop(Duration::from_secs(10));
    up.unwrap_or_else(|e| panic!("{e:#}\n{}", proc.log_tail(30)));
    out.expect("ctr plugins ls")
}

#[test]
fn setup_edits_containerd_s_default_config_idempotently_and_containerd_starts_with_it() {
    require_root().expect("root");
    let dir = TestDir::new("dfly-setup-").expect("dir");
    let d = dir.path();
    let default =
        run(Command::new("containerd").args(["config", "default"])).expect("config default");
    // Everything of this containerd under the test's dir.
    let own = default
        .replace("/var/lib/containerd", &d.join("root").display().to_string())
        .replace("/run/containerd", &d.join("state").display().to_string())
        .replace("/opt/containerd", &d.join("opt").display().to_string());
    let config = d.join("config.toml");
    std::fs::write(&config, &own).unwrap();

    let out = setup(&config, &["--default-snapshotter"]);
    assert!(out.contains("updated"), "{out}");
    let edited = std::fs::read_to_string(&config).unwrap();
    assert!(edited.contains("[proxy_plugins.dragonfly]"), "{edited}");
    assert!(edited.contains("snapshotter = \"dragonfly\""), "{edited}");
    let backups: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("dragonfly-backup"))
        .collect();
    assert_eq!(backups.len(), 1);
    assert_eq!(std::fs::read_to_string(backups[0].path()).unwrap(), own);
    let listed = plugins(d, &config);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("io.containerd.snapshotter.v1") && l.contains("dragonfly")),
        "{listed}"
    );

    let again = setup(&config, &["--default-snapshotter"]);
    assert!(again.contains("already set up"), "{again}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        edited,
        "not rewritten"
    );

    let undone = setup(&config, &["--undo"]);
    assert!(undone.contains("updated"), "{undone}");
    let after = std::fs::read_to_string(&config).unwrap();
    assert!(!after.contains("proxy_plugins.dragonfly"), "{after}");
    assert!(!after.contains("snapshotter = \"dragonfly\""), "{after}");
    let listed = plugins(d, &config);
    assert!(!listed.contains(" dragonfly "), "{listed}");
}
