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

/// `dfctl get` run as uid 65534 (`setpriv`; the socket's group is `nogroup`): the daemon writes
/// the file as that user — refused in a directory only root may write, the user's own there;
/// a symlink the user planted at the output name is replaced, its target untouched.
#[test]
fn a_local_user_downloads_only_where_they_may_write() {
    use dragonfly_integration::oci::{build_image, push, Entry};
    use dragonfly_integration::procs::{built_binary, run};
    use dragonfly_integration::registry::Registry;
    use std::process::Command;

    let dir = TestDir::new("dfly-caller-").expect("temp dir");
    let layer = vec![Entry::file("f", vec![7u8; 300_000], 0o644)];
    let img = build_image(&dir.path().join("layout"), &[layer], &["/f"]).expect("image");
    let registry = Registry::start(dir.path()).expect("registry");
    push(&img, &format!("{}/caller/img:1", registry.addr)).expect("push");
    let digest = img.layers[0].clone();
    let url = format!("http://{}/v2/caller/img/blobs/{digest}", registry.addr);
    let want = std::fs::read(registry.blob_path(&digest)).unwrap();
    let daemon =
        Daemon::start(&dir.path().join("daemon"), "address_group: nogroup").expect("daemon");
    // The user can reach the socket (0660, group nogroup) through the test's directories.
    for d in [dir.path().to_owned(), dir.path().join("daemon")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let root_only = dir.path().join("root-only");
    let home = dir.path().join("home");
    for d in [&root_only, &home] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    nix::unistd::chown(&home, Some(65534.into()), Some(65534.into())).unwrap();
    let victim = root_only.join("victim");
    std::fs::write(&victim, b"root's").unwrap();
    std::os::unix::fs::symlink(&victim, home.join("out")).unwrap();
    std::os::unix::fs::lchown(home.join("out"), Some(65534), Some(65534)).unwrap();

    let dfctl = built_binary("DFCTL_BIN", "dfctl").expect("dfctl");
    let get_as_nobody = |out: &std::path::Path| {
        run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&dfctl)
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["get", "--quiet", &url, "-O"])
            .arg(out)
            .args(["--digest", &digest]))
    };
    let refused = get_as_nobody(&root_only.join("out"));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("Permission denied")),
        "{refused:?}\n{}",
        daemon.log_tail(30)
    );
    assert_eq!(std::fs::read_dir(&root_only).unwrap().count(), 1);

    let out = home.join("out");
    let r = get_as_nobody(&out);
    assert!(r.is_ok(), "{r:?}\n{}", daemon.log_tail(30));
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(meta.is_file() && (meta.uid(), meta.gid()) == (65534, 65534));
    assert_eq!(std::fs::read(&out).unwrap(), want);
    assert_eq!(std::fs::read(&victim).unwrap(), b"root's");
}
