//! Who is calling the local API: the uid and gid the kernel reports for the other end of the
//! unix socket (`SO_PEERCRED`), and running a filesystem operation with that identity, so a
//! file the daemon writes for a caller is written as the caller would write it.

use std::io;

use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

/// The process on the other end of the local socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Its user ID.
    pub uid: u32,
    /// Its group ID.
    pub gid: u32,
}

impl Caller {
    /// The caller of `req`, from its socket's credentials; a request that did not come over
    /// the daemon's unix socket has none and is refused.
    pub fn of<T>(req: &Request<T>) -> Result<Caller, Status> {
        req.extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|cred| Caller {
                uid: cred.uid(),
                gid: cred.gid(),
            })
            .ok_or_else(|| {
                Status::permission_denied(
                    "the caller's credentials are unknown: call the local API over the daemon's unix socket",
                )
            })
    }

    /// Whether the caller is root (who may write anywhere, as the daemon itself).
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Runs `f` on a thread of its own whose filesystem identity is the caller's: its uid
    /// and gid for every permission check, no other group, and none of root's filesystem
    /// capabilities (the kernel drops them when the fsuid leaves 0). The thread ends with
    /// `f`, so the identity never leaks into other work. Blocks until `f` returns: call it
    /// from blocking code.
    pub fn run_as<R, F>(&self, f: F) -> io::Result<R>
    where
        R: Send + 'static,
        F: FnOnce() -> io::Result<R> + Send + 'static,
    {
        let who = *self;
        std::thread::Builder::new()
            .name("dfdaemon-as-caller".into())
            .spawn(move || {
                if !who.is_root() {
                    become_on_this_thread(who.uid, who.gid)?;
                }
                f()
            })?
            .join()
            .map_err(|_| io::Error::other("a file operation as the caller panicked"))?
    }
}

/// Sets this thread's supplementary groups to `[gid]`, its fsgid and fsuid. Raw system calls:
/// the kernel keeps credentials per thread, and glibc's `setgroups` would change every
/// thread of the daemon.
fn become_on_this_thread(uid: u32, gid: u32) -> io::Result<()> {
    let groups = [gid as libc::gid_t];
    // SAFETY: plain system calls with a valid pointer and length; they change the
    // credentials of this thread only.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
        // Both return the previous value and cannot fail otherwise: ask again to be sure.
        let (fsgid, fsuid) = (
            libc::syscall(libc::SYS_setfsgid, gid),
            libc::syscall(libc::SYS_setfsuid, uid),
        );
        if fsgid != i64::from(gid) || fsuid != i64::from(uid) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("cannot take the caller's identity (uid {uid}, gid {gid})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As uid 65534 a thread cannot write where that user cannot, can where it can, and the
    /// file it makes is that user's; other threads keep root's identity.
    #[test]
    fn a_caller_thread_has_the_callers_permissions_and_only_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to take another identity");
            return;
        }
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mine = dir.path().join("nobody");
        std::fs::create_dir(&mine).unwrap();
        nix::unistd::chown(&mine, Some(65534.into()), Some(65534.into())).unwrap();
        let nobody = Caller {
            uid: 65534,
            gid: 65534,
        };
        let root_only = dir.path().join("f");
        let e = nobody
            .run_as(move || std::fs::write(root_only, b"x"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        let ok = mine.join("f");
        nobody
            .run_as({
                let ok = ok.clone();
                move || std::fs::write(ok, b"x")
            })
            .unwrap();
        let meta = std::fs::metadata(&ok).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        // This thread is still root.
        std::fs::write(dir.path().join("g"), b"y").unwrap();
    }
}
