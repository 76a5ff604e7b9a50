//! `dragonfly-snapshotter setup containerd`: registers the daemon in containerd's
//! `config.toml` (what Dragonfly's `dfinit` is to its proxy). The edit is idempotent and keeps
//! everything else of the file (comments included): `[proxy_plugins.dragonfly]` with the
//! daemon's socket, optionally the CRI's snapshotter (`--default-snapshotter`) and its
//! snapshot annotations (`--annotations`); `--undo` takes the plugin away and gives the CRI
//! containerd's default snapshotter (overlayfs) back. On k3s and RKE2 the file is their
//! `config.toml.tmpl` (they regenerate `config.toml` from it at every start): started from
//! the config they generated, or, for a Go template, given a marked block of its own. Config versions 2
//! (containerd 1.x) and 3 (containerd 2.x) are understood; version 1 is refused. The file is
//! rewritten only when something changed, after a backup beside it.

use std::path::{Path, PathBuf};

use toml_edit::{value, DocumentMut, Item, Table};

/// What to set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupOptions {
    /// The daemon's socket (`[proxy_plugins.dragonfly] address`).
    pub socket: PathBuf,
    /// Make `dragonfly` the CRI's snapshotter (Kubernetes pods pull through it).
    pub default_snapshotter: bool,
    /// Have the CRI pass layer annotations (`disable_snapshot_annotations = false`). Not
    /// needed: the daemon finds unlabelled layers in containerd's content store.
    pub annotations: bool,
    /// Take our settings away instead.
    pub undo: bool,
}

/// Why containerd's config could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The file is not TOML.
    #[error("{path} is not valid TOML: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's error.
        #[source]
        source: toml_edit::TomlError,
    },
    /// Its layout is one we do not edit.
    #[error("{path}: {reason}")]
    Layout {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Our proxy plugin's name (`--snapshotter dragonfly`).
pub const PLUGIN: &str = "dragonfly";

/// The table path of the CRI settings we touch, per config version.
fn cri_path(version: i64) -> &'static [&'static str] {
    match version {
        2 => &["plugins", "io.containerd.grpc.v1.cri", "containerd"],
        _ => &["plugins", "io.containerd.cri.v1.images"],
    }
}

/// The config version of `doc` (containerd treats a file without one as version 1).
fn version(doc: &DocumentMut, path: &str) -> Result<i64, SetupError> {
    let v = doc.get("version").and_then(Item::as_integer).unwrap_or(1);
    match v {
        2 | 3 => Ok(v),
        _ => Err(SetupError::Layout {
            path: path.to_owned(),
            reason: format!(
                "config version {v} is not supported; convert it first (`containerd config migrate`) to version 2 or 3"
            ),
        }),
    }
}

/// The table at `keys` under `doc`, created (implicit, so no empty headers) when missing.
fn table_at<'a>(
    doc: &'a mut DocumentMut,
    keys: &[&str],
    path: &str,
) -> Result<&'a mut Table, SetupError> {
    let mut t = doc.as_table_mut();
    for k in keys {
        let entry = t.entry(k).or_insert_with(|| {
            let mut new = Table::new();
            new.set_implicit(true);
            Item::Table(new)
        });
        t = entry.as_table_mut().ok_or_else(|| SetupError::Layout {
            path: path.to_owned(),
            reason: format!("{k} is not a table"),
        })?;
    }
    t.set_implicit(false);
    Ok(t)
}

/// `text` (containerd's config at `path`) with our settings applied or, with `undo`, removed.
pub fn edit(text: &str, path: &str, o: &SetupOptions) -> Result<String, SetupError> {
    let mut doc: DocumentMut = text.parse().map_err(|source| SetupError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let v = version(&doc, path)?;
    if o.undo {
        undo(&mut doc, v);
        return Ok(doc.to_string());
    }
    let plugin = table_at(&mut doc, &["proxy_plugins", PLUGIN], path)?;
    set(plugin, "type", "snapshot");
    set(plugin, "address", &o.socket.display().to_string());
    if o.default_snapshotter || o.annotations {
        let cri = table_at(&mut doc, cri_path(v), path)?;
        if o.default_snapshotter {
            set(cri, "snapshotter", PLUGIN);
        }
        if o.annotations
            && cri
                .get("disable_snapshot_annotations")
                .and_then(Item::as_bool)
                != Some(false)
        {
            cri.insert("disable_snapshot_annotations", value(false));
        }
    }
    Ok(doc.to_string())
}

/// Sets `t.key = v` unless it already is (so an unchanged file stays byte for byte).
fn set(t: &mut Table, key: &str, v: &str) {
    if t.get(key).and_then(Item::as_str) != Some(v) {
        t.insert(key, value(v));
    }
}

fn undo(doc: &mut DocumentMut, v: i64) {
    if let Some(p) = doc.get_mut("proxy_plugins").and_then(Item::as_table_mut) {
        p.remove(PLUGIN);
    }
    let keys = cri_path(v);
    let mut t = Some(doc.as_table_mut());
    for k in keys {
        t = t.and_then(|t| t.get_mut(k)).and_then(Item::as_table_mut);
    }
    if let Some(cri) = t {
        if cri.get("snapshotter").and_then(Item::as_str) == Some(PLUGIN) {
            // containerd's default.
            cri.insert("snapshotter", value("overlayfs"));
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The file already said so; it was not touched.
    Unchanged,
    /// The file was rewritten; the old one is at `backup`.
    Changed {
        /// The copy of the file as it was.
        backup: PathBuf,
    },
}

/// Writes `text` to `tmp` as a new file, never through a symlink planted at the name.
fn write_new(tmp: &Path, text: &str) -> Result<(), SetupError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(io("write", tmp))
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SetupError {
    let path = path.display().to_string();
    move |source| SetupError::Io { what, path, source }
}

/// Which containerd a node runs: where its config lives and which systemd unit restarts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// containerd's own package: `/etc/containerd/config.toml`, unit `containerd`.
    Containerd,
    /// k3s: its generated config comes from `config.toml.tmpl` beside it.
    K3s,
    /// RKE2: the same, under `/var/lib/rancher/rke2`.
    Rke2,
}

impl Flavor {
    /// The flavor of this node: k3s or RKE2 when their agent's containerd directory exists.
    pub fn detect() -> Flavor {
        if Path::new(&Flavor::K3s.dir()).is_dir() {
            Flavor::K3s
        } else if Path::new(&Flavor::Rke2.dir()).is_dir() {
            Flavor::Rke2
        } else {
            Flavor::Containerd
        }
    }

    fn dir(self) -> String {
        match self {
            Flavor::Containerd => "/etc/containerd".into(),
            Flavor::K3s => "/var/lib/rancher/k3s/agent/etc/containerd".into(),
            Flavor::Rke2 => "/var/lib/rancher/rke2/agent/etc/containerd".into(),
        }
    }

    /// The file to edit: k3s and RKE2 regenerate `config.toml` at every start from the
    /// template, so the template is what keeps an edit.
    pub fn config_path(self) -> PathBuf {
        let name = match self {
            Flavor::Containerd => "config.toml",
            Flavor::K3s | Flavor::Rke2 => "config.toml.tmpl",
        };
        Path::new(&self.dir()).join(name)
    }

    /// The systemd units that run containerd, in the order to try.
    pub fn units(self) -> &'static [&'static str] {
        match self {
            Flavor::Containerd => &["containerd"],
            Flavor::K3s => &["k3s", "k3s-agent"],
            Flavor::Rke2 => &["rke2-server", "rke2-agent"],
        }
    }
}

/// Marks the block this command appends to a Go template (a k3s/RKE2 template beginning with
/// `{{ template "base" . }}`), which it cannot parse as TOML.
const BEGIN: &str = "# BEGIN dragonfly-rs (dragonfly-snapshotter setup containerd)";
const END: &str = "# END dragonfly-rs";

/// `text` (a Go template) with our block appended, replaced or (`undo`) removed.
fn edit_template(text: &str, path: &str, o: &SetupOptions) -> Result<String, SetupError> {
    if !o.undo && (o.default_snapshotter || o.annotations) {
        return Err(SetupError::Layout {
            path: path.to_owned(),
            reason: "it is a Go template: the CRI's settings come from its base; set snapshotter = \"dragonfly\" there yourself (this command adds only the proxy plugin to a template)".into(),
        });
    }
    let mut out = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let after = &text[e + END.len()..];
            format!(
                "{}{}",
                text[..b].trim_end_matches('\n'),
                after.trim_start_matches('\n')
            )
        }
        _ => text.to_owned(),
    };
    if !o.undo {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!(
            "\n{BEGIN}\n[proxy_plugins.{PLUGIN}]\n  type = \"snapshot\"\n  address = \"{}\"\n{END}\n",
            o.socket.display()
        ));
    } else if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// What the file at `path` says now (`None`: missing), and what an edit starts from: a missing
/// k3s/RKE2 template starts as the `config.toml` they generated beside it.
fn current(path: &Path) -> Result<(Option<String>, String), SetupError> {
    let old = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("read", path)(e)),
    };
    let base = match &old {
        Some(t) => t.clone(),
        None => {
            let generated = path
                .extension()
                .is_some_and(|e| e == "tmpl")
                .then(|| path.with_extension(""));
            generated
                .and_then(|g| std::fs::read_to_string(g).ok())
                .unwrap_or_else(|| "version = 2\n".to_owned())
        }
    };
    Ok((old, base))
}

/// Edits containerd's config file at `path` (a missing file starts as `version = 2`, or, for
/// a k3s/RKE2 template, as the config they generated): the new text replaces it (same mode,
/// through a temporary file) only when it differs, after a backup
/// `<path>.dragonfly-backup.<unix seconds>.<nanoseconds>`. A Go template gets a marked block.
pub fn apply(path: &Path, o: &SetupOptions) -> Result<Applied, SetupError> {
    let shown = path.display().to_string();
    let (old, base) = current(path)?;
    let new = if base.contains("{{") {
        edit_template(&base, &shown, o)?
    } else {
        edit(&base, &shown, o)?
    };
    if old.as_deref() == Some(new.as_str()) || (old.is_none() && o.undo) {
        return Ok(Applied::Unchanged);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let backup = PathBuf::from(format!(
        "{shown}.dragonfly-backup.{}.{:09}",
        now.as_secs(),
        now.subsec_nanos()
    ));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create the directory of", path))?;
    }
    if old.is_some() {
        std::fs::copy(path, &backup).map_err(io("back up", path))?;
    }
    let tmp = PathBuf::from(format!("{shown}.dragonfly-new"));
    write_new(&tmp, &new)?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions()).map_err(io("set the mode of", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("replace", path))?;
    Ok(Applied::Changed { backup })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(default_snapshotter: bool) -> SetupOptions {
        SetupOptions {
            socket: "/run/dragonfly/snapshotter.sock".into(),
            default_snapshotter,
            annotations: false,
            undo: false,
        }
    }

    fn get<'a>(doc: &'a DocumentMut, keys: &[&str]) -> Option<&'a Item> {
        let mut item = doc.as_item();
        for k in keys {
            item = item.get(k)?;
        }
        Some(item)
    }

    const V3: &str = r#"version = 3
root = "/var/lib/containerd"

# the CRI's image settings
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  disable_snapshot_annotations = true
"#;

    #[test]
    fn a_version_3_config_gets_the_plugin_and_the_cri_snapshotter_and_loses_them_on_undo() {
        let out = edit(V3, "c.toml", &opts(true)).unwrap();
        let doc: DocumentMut = out.parse().unwrap();
        assert_eq!(
            get(&doc, &["proxy_plugins", "dragonfly", "address"]).and_then(Item::as_str),
            Some("/run/dragonfly/snapshotter.sock")
        );
        assert_eq!(
            get(
                &doc,
                &["plugins", "io.containerd.cri.v1.images", "snapshotter"]
            )
            .and_then(Item::as_str),
            Some("dragonfly")
        );
        assert!(out.contains("# the CRI's image settings"), "comments stay");
        assert_eq!(
            edit(&out, "c.toml", &opts(true)).unwrap(),
            out,
            "idempotent"
        );
        let undone = edit(
            &out,
            "c.toml",
            &SetupOptions {
                undo: true,
                ..opts(true)
            },
        )
        .unwrap();
        let doc: DocumentMut = undone.parse().unwrap();
        assert!(get(&doc, &["proxy_plugins", "dragonfly"]).is_none());
        assert_eq!(
            get(
                &doc,
                &["plugins", "io.containerd.cri.v1.images", "snapshotter"]
            )
            .and_then(Item::as_str),
            Some("overlayfs")
        );
    }

    #[test]
    fn version_2_puts_the_cri_settings_in_its_own_table_and_version_1_is_refused() {
        let v2 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n";
        let o = SetupOptions {
            annotations: true,
            ..opts(true)
        };
        let doc: DocumentMut = edit(v2, "c.toml", &o).unwrap().parse().unwrap();
        let cri = ["plugins", "io.containerd.grpc.v1.cri", "containerd"];
        let key = |k: &str| {
            let mut p = cri.to_vec();
            p.push(k);
            get(&doc, &p).cloned()
        };
        assert_eq!(
            key("snapshotter")
                .and_then(|i| i.as_str().map(str::to_owned))
                .as_deref(),
            Some("dragonfly")
        );
        assert_eq!(
            key("disable_snapshot_annotations").and_then(|i| i.as_bool()),
            Some(false)
        );
        let e = edit("[plugins.cri]\n", "old.toml", &opts(false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 1 is not supported"), "{e}");
        assert!(edit("not = [toml", "bad.toml", &opts(false)).is_err());
    }

    #[test]
    fn the_file_is_rewritten_only_when_something_changes_with_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, V3).unwrap();
        let first = apply(&path, &opts(false)).unwrap();
        let Applied::Changed { backup } = first else {
            panic!("{first:?}");
        };
        assert_eq!(std::fs::read_to_string(&backup).unwrap(), V3);
        let after = std::fs::read_to_string(&path).unwrap();
        assert_eq!(apply(&path, &opts(false)).unwrap(), Applied::Unchanged);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), after);
        let missing = dir.path().join("none/config.toml");
        assert_eq!(
            apply(
                &missing,
                &SetupOptions {
                    undo: true,
                    ..opts(false)
                }
            )
            .unwrap(),
            Applied::Unchanged
        );
        assert!(matches!(
            apply(&missing, &opts(false)).unwrap(),
            Applied::Changed { .. }
        ));
        assert!(std::fs::read_to_string(&missing)
            .unwrap()
            .contains("version = 2"));
    }

    #[test]
    fn a_k3s_template_starts_from_the_generated_config_and_a_go_template_gets_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let generated = dir.path().join("config.toml");
        std::fs::write(&generated, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n").unwrap();
        let tmpl = dir.path().join("config.toml.tmpl");
        assert!(matches!(
            apply(&tmpl, &opts(true)).unwrap(),
            Applied::Changed { .. }
        ));
        let t = std::fs::read_to_string(&tmpl).unwrap();
        assert!(
            t.contains("[proxy_plugins.dragonfly]") && t.contains("snapshotter = \"dragonfly\""),
            "{t}"
        );

        let go = "{{ template \"base\" . }}\n";
        std::fs::write(&tmpl, go).unwrap();
        apply(&tmpl, &opts(false)).unwrap();
        let once = std::fs::read_to_string(&tmpl).unwrap();
        assert!(
            once.starts_with(go)
                && once.contains(BEGIN)
                && once.contains("address = \"/run/dragonfly/snapshotter.sock\""),
            "{once}"
        );
        assert_eq!(apply(&tmpl, &opts(false)).unwrap(), Applied::Unchanged);
        let e = apply(&tmpl, &opts(true)).unwrap_err().to_string();
        assert!(e.contains("Go template"), "{e}");
        apply(
            &tmpl,
            &SetupOptions {
                undo: true,
                ..opts(false)
            },
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&tmpl).unwrap(), go);
    }
}
