//! An image's root filesystem mounted read-only on the host, so a test can walk it (no
//! container, so no /proc, /dev or /sys mounts inside, and no runc involved).
//!
//! `ctr image mount` is not used: in containerd 1.6 it re-runs the unpack from the content
//! store, which fails for lazily pulled images whose layer blobs containerd never downloaded.
//! Instead the image's chain ID is computed from its config in containerd's content store, a
//! view snapshot is created with `ctr snapshots view --mounts`, and the mounts it returns are
//! mounted here. On drop the mount is detached and the view snapshot removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use sha2::{Digest, Sha256};

use crate::containerd::Containerd;
use crate::procs::{mounts_under, unmount_under};
use crate::rootfs::{self, Listing};

/// A mounted image root filesystem.
pub struct MountedRootfs<'a> {
    containerd: &'a Containerd,
    snapshotter: String,
    key: String,
    target: PathBuf,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The chain ID of a list of layer diff IDs (OCI image spec: `sha256(parent + " " + diff)`).
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for d in it {
        chain = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{chain} {d}")))
        );
    }
    Some(chain)
}

/// One mount as `ctr snapshots view --mounts` prints it.
#[derive(Debug, serde::Deserialize)]
struct SnapshotMount {
    #[serde(rename = "Type", alias = "type")]
    kind: String,
    #[serde(rename = "Source", alias = "source")]
    source: String,
    #[serde(rename = "Options", alias = "options", default)]
    options: Vec<String>,
}

fn mount_one(m: &SnapshotMount, target: &Path) -> Result<()> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            other => data.push(other),
        }
    }
    let data = data.join(",");
    let fstype = (m.kind != "bind").then_some(m.kind.as_str());
    mount(
        Some(m.source.as_str()),
        target,
        fstype,
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .with_context(|| format!("mount {m:?} on {}", target.display()))?;
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        // A bind mount ignores MS_RDONLY until remounted.
        mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .with_context(|| format!("remount {} read-only", target.display()))?;
    }
    Ok(())
}

impl Containerd {
    /// `ctr content get DIGEST` parsed as JSON.
    fn content_json(&self, digest: &str) -> Result<serde_json::Value> {
        let raw = self.ctr(&["content", "get", digest])?;
        serde_json::from_str(&raw).with_context(|| format!("content {digest} is not JSON"))
    }

    /// The chain ID of the root filesystem of `reference` (pulled, single-platform manifest),
    /// from its manifest and config in containerd's content store.
    pub fn image_chain_id(&self, reference: &str) -> Result<String> {
        let ls = self.ctr(&["image", "ls"])?;
        let manifest = ls
            .lines()
            .skip(1)
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&reference)).then(|| f.get(2).map(|d| d.to_string()))
            })
            .flatten()
            .with_context(|| format!("{reference} is not pulled; images:\n{ls}"))?;
        let m = self.content_json(&manifest)?;
        let config = m["config"]["digest"]
            .as_str()
            .with_context(|| format!("{manifest} is not a single-platform manifest: {m}"))?;
        let c = self.content_json(config)?;
        let diff_ids: Vec<String> = c["rootfs"]["diff_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_owned))
            .collect();
        chain_id(&diff_ids).with_context(|| format!("config {config} has no diff_ids"))
    }

    /// Mounts the root filesystem of `reference` (already pulled, and unpacked for
    /// `snapshotter` — a lazy pull counts) read-only under this containerd's directory. For a
    /// lazily pulled image, walking the mount reads through our FUSE layers.
    pub fn mount_image(&self, snapshotter: &str, reference: &str) -> Result<MountedRootfs<'_>> {
        let chain = self.image_chain_id(reference)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let key = format!("test-view-{n}");
        let target = self.dir.join("mnt").join(format!("{snapshotter}-{n}"));
        std::fs::create_dir_all(&target)
            .with_context(|| format!("create mount point {}", target.display()))?;
        let out = self.ctr(&[
            "snapshots",
            "--snapshotter",
            snapshotter,
            "view",
            "--mounts",
            &key,
            &chain,
        ])?;
        // From here on, drop removes the view and whatever got mounted.
        let mounted = MountedRootfs {
            containerd: self,
            snapshotter: snapshotter.to_owned(),
            key,
            target,
        };
        let mounts: Vec<SnapshotMount> = serde_json::from_str(&out)
            .with_context(|| format!("parse the mounts of a view of {reference}: {out}"))?;
        let [m] = mounts.as_slice() else {
            bail!("expected one mount for a view of {reference}, got {mounts:?}");
        };
        mount_one(m, &mounted.target)?;
        anyhow::ensure!(
            !mounts_under(&mounted.target).is_empty(),
            "nothing is mounted at {}",
            mounted.target.display()
        );
        Ok(mounted)
    }
}

impl MountedRootfs<'_> {
    /// Where the root filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// The canonical listing of the mounted root filesystem (reads every regular file).
    pub fn listing(&self) -> Result<Listing> {
        rootfs::list_tree(&self.target)
    }
}

impl Drop for MountedRootfs<'_> {
    fn drop(&mut self) {
        unmount_under(&self.target);
        let _ = std::fs::remove_dir(&self.target);
        let _ = self.containerd.ctr(&[
            "snapshots",
            "--snapshotter",
            &self.snapshotter,
            "rm",
            &self.key,
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(chain_id(&[a, b]), Some(want));
        assert_eq!(chain_id(&[]), None);
    }

    #[test]
    fn snapshot_mounts_parse_as_ctr_prints_them() {
        let m: Vec<SnapshotMount> = serde_json::from_str(
            r#"[{"Type":"overlay","Source":"overlay","Options":["index=off","lowerdir=/a:/b"]}]"#,
        )
        .unwrap();
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(m[0].options, ["index=off", "lowerdir=/a:/b"]);
    }
}
