//! The file a download writes for a caller: a `.dfctl-part` file beside the destination,
//! created and renamed into place with the caller's identity (so it goes only where the
//! caller may write, and is theirs), hashed as it grows, never following a symlink at the part
//! or output name, and removed if abandoned.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use sha2::{Digest, Sha256};

use super::caller::Caller;

/// Why the output file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PartFileError {
    /// A filesystem operation failed (as the caller: permission errors are theirs).
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The output path has no file name.
    #[error("output_path {0} names no file")]
    NoFileName(String),
    /// The bytes do not hash to the digest the request gave.
    #[error("the file hashes to {actual}, not {expected}")]
    Digest {
        /// What they hash to.
        actual: String,
        /// What the request said.
        expected: String,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PartFileError {
    let path = path.display().to_string();
    move |source| PartFileError::Io { what, path, source }
}

/// See the module doc.
pub struct PartFile {
    output: PathBuf,
    /// The output's directory, opened (as the caller) once: later steps never resolve the
    /// path again.
    dir: Arc<OwnedFd>,
    name: OsString,
    tmp_name: OsString,
    file: std::fs::File,
    caller: Caller,
    written: u64,
    hasher: Sha256,
    done: bool,
}

impl PartFile {
    /// A new part file beside `output`, as `caller`. Whatever is at the part name (a stale
    /// part, or a symlink someone planted there) is removed, never followed, and the file is
    /// created exclusively (`O_CREAT|O_EXCL`, which refuses a symlink too).
    pub fn create(output: &Path, caller: Caller) -> Result<PartFile, PartFileError> {
        let name = output
            .file_name()
            .ok_or_else(|| PartFileError::NoFileName(output.display().to_string()))?
            .to_owned();
        let parent = output.parent().unwrap_or(Path::new("/")).to_owned();
        let mut tmp_name = name.clone();
        tmp_name.push(".dfctl-part");
        let tmp_path = output.with_file_name(&tmp_name);
        let tmp = tmp_name.clone();
        let (dir, file) = caller
            .run_as(move || {
                let dir = nix::fcntl::open(
                    &parent,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                match nix::unistd::unlinkat(&dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
                let fd = nix::fcntl::openat(
                    &dir,
                    tmp.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )?;
                Ok((dir, std::fs::File::from(fd)))
            })
            .map_err(io_error("create", &tmp_path))?;
        Ok(PartFile {
            output: output.to_owned(),
            dir: Arc::new(dir),
            name,
            tmp_name,
            file,
            caller,
            written: 0,
            hasher: Sha256::new(),
            done: false,
        })
    }

    fn tmp_path(&self) -> PathBuf {
        self.output.with_file_name(&self.tmp_name)
    }

    /// Appends `data` and starts its write-back, so finishing does not wait for the whole file
    /// to reach the disk.
    pub fn append(&mut self, data: &[u8]) -> Result<(), PartFileError> {
        std::io::Write::write_all(&mut self.file, data)
            .map_err(io_error("write", &self.tmp_path()))?;
        self.hasher.update(data);
        // SAFETY: a plain syscall on a file descriptor we own; it only starts write-back.
        unsafe {
            libc::sync_file_range(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                self.written as libc::off64_t,
                data.len() as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Checks `digest` (if not empty), makes the file durable and renames it over the output
    /// name, as the caller (whatever is there, a symlink included, is replaced, not followed).
    pub fn finish(mut self, digest: &str) -> Result<(), PartFileError> {
        let actual = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if !digest.is_empty() && actual != digest {
            return Err(PartFileError::Digest {
                actual,
                expected: digest.to_owned(),
            });
        }
        self.file
            .sync_data()
            .map_err(io_error("write", &self.tmp_path()))?;
        let (dir, tmp, name) = (self.dir.clone(), self.tmp_name.clone(), self.name.clone());
        self.caller
            .run_as(move || {
                Ok(nix::fcntl::renameat(
                    dir.as_fd(),
                    tmp.as_os_str(),
                    dir.as_fd(),
                    name.as_os_str(),
                )?)
            })
            .map_err(io_error("move the file to", &self.output))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.done {
            // By the directory's descriptor: only the part file's own entry there.
            let _ = nix::unistd::unlinkat(
                self.dir.as_fd(),
                self.tmp_name.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const ROOT: Caller = Caller { uid: 0, gid: 0 };

    /// A symlink planted at the part name is replaced, not written through; the finished file
    /// is renamed over whatever is at the output name (a symlink there is replaced too).
    #[test]
    fn the_part_and_output_paths_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let output = dir.path().join("out.bin");
        std::os::unix::fs::symlink(&victim, dir.path().join("out.bin.dfctl-part")).unwrap();
        std::os::unix::fs::symlink(&victim, &output).unwrap();
        let mut part = PartFile::create(&output, ROOT).unwrap();
        part.append(b"new bytes").unwrap();
        part.finish("").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&output)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&output).unwrap(), b"new bytes");
    }

    /// For uid 65534, a root-only directory is refused, its own directory gets a file it
    /// owns, a wrong digest leaves nothing behind, and another user's file in a sticky
    /// directory is not replaced.
    #[test]
    fn a_callers_file_goes_only_where_the_caller_may_write_and_is_theirs() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to take another identity");
            return;
        }
        let nobody = Caller {
            uid: 65534,
            gid: 65534,
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = PartFile::create(&dir.path().join("out"), nobody)
            .err()
            .expect("root-only directory refused");
        assert!(e.to_string().contains("Permission denied"), "{e}");

        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        nix::unistd::chown(&home, Some(65534.into()), Some(65534.into())).unwrap();
        let out = home.join("out");
        let mut part = PartFile::create(&out, nobody).unwrap();
        part.append(b"abc").unwrap();
        part.finish("").unwrap();
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));

        let mut bad = PartFile::create(&home.join("bad"), nobody).unwrap();
        bad.append(b"abc").unwrap();
        let e = bad
            .finish(&format!("sha256:{}", "0".repeat(64)))
            .unwrap_err();
        assert!(matches!(e, PartFileError::Digest { .. }), "{e}");
        let left: Vec<_> = std::fs::read_dir(&home).unwrap().collect();
        assert_eq!(left.len(), 1, "only `out` remains: {left:?}");

        // A sticky, world-writable directory holding root's file: nobody may not replace it.
        let shared = dir.path().join("tmp");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let roots = shared.join("roots");
        std::fs::write(&roots, b"root's").unwrap();
        let mut part = PartFile::create(&roots, nobody).unwrap();
        part.append(b"nobody's").unwrap();
        assert!(part.finish("").is_err());
        assert_eq!(std::fs::read(&roots).unwrap(), b"root's");
    }
}
