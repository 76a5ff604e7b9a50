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
