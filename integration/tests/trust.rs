//! Trust boundaries of one node: what a local user can reach of the daemon's state.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use dragonfly_integration::daemon::Daemon;
use dragonfly_integration::procs::TestDir;

/// The daemon's root, snapshot and cache directories are 0700 and its socket 0660, also when an older version
/// left them 0755: pulled images hold set-uid binaries and device nodes no other user may
/// reach (the class of containerd's CVE-2021-41103).
#[test]
fn the_daemon_s_directories_are_private() {
    let dir = TestDir::new("dfly-trust-").expect("temp dir");
    let root = dir.path().join("daemon/root");
    for d in [root.clone(), root.join("snapshots")] {
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let daemon = Daemon::start(&dir.path().join("daemon"), "").expect("daemon");
    for d in [root.clone(), root.join("snapshots"), root.join("cache")] {
        let mode = std::fs::metadata(&d).unwrap().mode() & 0o7777;
        assert_eq!(
            mode,
            0o700,
            "{} is {mode:o}\n{}",
            d.display(),
            daemon.log_tail(20)
        );
    }
}

/// Mode, link count and bytes of a host file a hostile image aims at.
fn victim_state(p: &std::path::Path) -> (u32, u64, Vec<u8>) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mode(), m.nlink(), std::fs::read(p).unwrap())
}

/// The reported attack, pulled with layer labels (`ctr-remote image rpull`, so our daemon
/// unpacks the plain gzip layer): a set-uid directory `d` replaced by a symlink to a host file,
/// a symlink `s` to a host directory and a hardlink `h -> s/secret`. The host file keeps its
/// mode, link count and bytes; the daemon refuses the layer naming the entry.
#[test]
fn a_hostile_image_pulled_with_layer_labels_changes_nothing_on_the_host() {
    use dragonfly_integration::containerd::Containerd;
    use dragonfly_integration::oci::{build_image, push, Entry};
    use dragonfly_integration::registry::Registry;

    let dir = TestDir::new("dfly-hostile-").expect("temp dir");
    let host = dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let secret = host.join("secret");
    std::fs::write(&secret, b"host secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = victim_state(&secret);

    let layer = vec![
        Entry::dir("d", 0o4777),
        Entry::Symlink {
            path: "d".into(),
            target: secret.display().to_string(),
        },
        Entry::Symlink {
            path: "s".into(),
            target: host.display().to_string(),
        },
        Entry::Hardlink {
            path: "h".into(),
            target: "s/secret".into(),
        },
        Entry::file("ok", "x", 0o755),
    ];
    let img = build_image(&dir.path().join("layout"), &[layer], &["/ok"]).expect("image");
    let registry = Registry::start(dir.path()).expect("registry");
    let reference = format!("{}/hostile/img:1", registry.addr);
    push(&img, &reference).expect("push");
    let daemon = Daemon::start(&dir.path().join("daemon"), "").expect("daemon");
    let ctd =
        Containerd::start(&dir.path().join("containerd"), &daemon.socket).expect("containerd");

    // containerd's own applier may take the layer over after we refuse it, and refuse it too;
    // either way, nothing on the host changes.
    let pulled = ctd.rpull(&reference);
    eprintln!("rpull of the hostile image: {pulled:?}");
    assert_eq!(
        victim_state(&secret),
        before,
        "the host file changed (pull: {pulled:?})\n{}",
        daemon.log_tail(40)
    );
    assert_eq!(
        std::fs::read_dir(&host).unwrap().count(),
        1,
        "a file appeared on the host"
    );
    assert!(
        daemon.log().contains("h (hardlink to s/secret"),
        "the daemon did not name the entry it refused\n{}",
        daemon.log_tail(40)
    );
}
