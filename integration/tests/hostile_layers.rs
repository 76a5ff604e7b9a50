//! Hostile layers, end to end: one layer tar per escape class (the security review's and the
//! ones found since), plus tar bombs, each pulled through both paths that make our daemon
//! unpack an ordinary gzip layer itself — `ctr-remote image rpull --snapshotter dragonfly`
//! (containerd passes the layer labels) and `dfctl image pull` (dfctl has the daemon prepare
//! every layer) — against one registry, daemon and containerd. After every pull a host file
//! and a host directory outside the daemon's root keep their inode, mode, owner, link count,
//! times (the change time moves on any chmod, chown, link or xattr change), xattrs and bytes,
//! nothing appears in the directory, the daemon lives and its memory stays bounded, and the
//! daemon either unpacked the layer (confined) or refused it with an error naming the entry.
//!
//! containerd's own applier may take a layer over after the daemon refuses it (rpull only);
//! that is fine as long as nothing on the host changes, which is checked all the same.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use dragonfly_integration::containerd::{Containerd, NAMESPACE};
use dragonfly_integration::daemon::Daemon;
use dragonfly_integration::hostile::{
    build_image_from_tars, finish_tar, pax_record, peak_rss, push_all, reset_peak_rss, set_xattr,
    HostState, RawTar,
};
use dragonfly_integration::oci::BuiltImage;
use dragonfly_integration::procs::{built_binary, pid_alive, require_root, run, TestDir};
use dragonfly_integration::registry::Registry;

/// The daemon's limits for the whole suite: small enough for the bombs, far above what the
/// other cases need.
const LIMITS: &str = "unpack: {max_bytes: 1048576, max_entries: 1000}";

/// The daemon's peak resident memory while it handles one layer stays below this (a debug
/// build idles at a few tens of MiB; the largest legitimate buffer is a few MiB).
const RSS_CAP: u64 = 192 << 20;

/// How deep a relative path climbs before it names a host path: past `/` from any root.
const UP: &str = "../../../../../../../../../../../../";

/// A host file and a host directory outside the daemon's root, with a mode, owner, xattr,
/// times and bytes no layer entry would give them.
struct Host {
    dir: PathBuf,
    file: PathBuf,
}

impl Host {
    fn new(base: &Path) -> Host {
        let dir = base.join("host");
        let file = dir.join("secret");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&file, b"host secret\n").unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        for (p, mode, tag) in [(&file, 0o640, "file"), (&dir, 0o750, "dir")] {
            set_xattr(p, "user.victim", tag.as_bytes()).unwrap();
            std::os::unix::fs::chown(p, Some(1234), Some(1234)).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::File::open(p)
                .unwrap()
                .set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
                .unwrap();
        }
        Host { dir, file }
    }

    fn state(&self) -> Vec<HostState> {
        [&self.dir, &self.file]
            .into_iter()
            .map(|p| HostState::of(p).expect("host path"))
            .collect()
    }

    fn d(&self) -> String {
        self.dir.display().to_string()
    }

    fn f(&self) -> String {
        self.file.display().to_string()
    }

    /// `p` reached by climbing: `../../…/var/tmp/…`.
    fn climb(&self, p: &Path) -> String {
        format!("{UP}{}", p.display().to_string().trim_start_matches('/'))
    }
}

/// What the daemon must do with a case's (top) layer.
#[derive(Debug, Clone)]
enum Expect {
    /// Refuse it, with an error containing this text (the entry).
    Refused(String),
    /// Unpack it, every entry inside the snapshot.
    Confined,
}

fn refused(s: impl Into<String>) -> Expect {
    Expect::Refused(s.into())
}

struct Case {
    name: &'static str,
    /// Tar bodies (no end blocks), bottom layer first; the top one is the hostile one.
    layers: Vec<Vec<u8>>,
    expect: Expect,
}

/// One layer body written by `f`.
fn layer(f: impl FnOnce(&mut RawTar) -> anyhow::Result<()>) -> Vec<u8> {
    let mut t = RawTar::new();
    f(&mut t).expect("layer entries");
    t.body().expect("layer body")
}

fn case(name: &'static str, expect: Expect, body: Vec<u8>) -> Case {
    Case {
        name,
        layers: vec![body],
        expect,
    }
}

fn cases(h: &Host) -> Vec<Case> {
    use tar::EntryType as T;
    let (d, f) = (h.d(), h.f());
    let (cd, cf) = (h.climb(&h.dir), h.climb(&h.file));
    let dotdot_new = format!("{cd}/pwned");
    let pax_path = format!("{cd}/pwned-pax");
    let long_path = format!("{cd}/pwned-long");
    vec![
        // --- control: an ordinary layer with every kind of entry goes through the daemon.
        case(
            "benign layer (control)",
            Expect::Confined,
            layer(|t| {
                t.dir("etc", 0o755)?
                    .xattr("user.demo", b"1")?
                    .file("etc/conf", b"conf", 0o644)?
                    .hardlink("etc/conf2", "etc/conf")?
                    .symlink("etc/link", "/etc/passwd")?
                    .node(T::Fifo, "etc/fifo", 0o644, 0, 0)?;
                Ok(())
            }),
        ),
        // --- names that climb or are absolute.
        case(
            "`..` name creating a file in the host dir",
            refused(dotdot_new.clone()),
            layer(|t| {
                t.file(&dotdot_new, b"pwned", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "`..` name over the host file",
            refused(cf.clone()),
            layer(|t| {
                t.file(&cf, b"pwned", 0o4777)?;
                Ok(())
            }),
        ),
        case(
            "`..` in the middle of a name",
            refused("a/../../host-pwned"),
            layer(|t| {
                t.file("a/../../host-pwned", b"pwned", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "PAX path with `..` behind a harmless header name",
            refused(pax_path.clone()),
            layer(|t| {
                t.pax(&[("path", pax_path.as_bytes())])?
                    .file("harmless", b"pwned", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "GNU long name with `..` behind a harmless header name",
            refused(long_path.clone()),
            layer(|t| {
                t.gnu_long_name(&long_path)?
                    .file("harmless", b"pwned", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "absolute name of a new file in the host dir",
            Expect::Confined,
            layer(|t| {
                t.file(&format!("{d}/pwned"), b"pwned", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "absolute name of the host file, set-uid",
            Expect::Confined,
            layer(|t| {
                t.file(&f, b"pwned", 0o4777)?;
                Ok(())
            }),
        ),
        // --- directory attributes applied after the directory was replaced.
        case(
            "set-uid dir replaced by a symlink to the host file",
            Expect::Confined,
            layer(|t| {
                t.dir("d", 0o4777)?.symlink("d", &f)?;
                Ok(())
            }),
        ),
        case(
            "set-uid dir replaced by a climbing symlink to the host file",
            Expect::Confined,
            layer(|t| {
                t.dir("d", 0o4777)?.symlink("d", &cf)?;
                Ok(())
            }),
        ),
        case(
            "chmod/chown/utime of a dir later replaced by a symlink to the host dir",
            Expect::Confined,
            layer(|t| {
                t.dir_owned("d", 0o4777, 0, 0, 1)?.symlink("d", &d)?;
                Ok(())
            }),
        ),
        case(
            "nested dir whose parent is replaced by a symlink to the host dir",
            Expect::Confined,
            layer(|t| {
                t.dir("p", 0o777)?
                    .dir_owned("p/secret", 0o4777, 0, 0, 1)?
                    .symlink("p", &d)?;
                Ok(())
            }),
        ),
        // --- writes through symlinked parents.
        case(
            "write through a symlink to the host dir",
            refused("s/secret"),
            layer(|t| {
                t.symlink("s", &d)?.file("s/secret", b"pwned", 0o4777)?;
                Ok(())
            }),
        ),
        case(
            "new file through a climbing symlink to the host dir",
            refused("s/new"),
            layer(|t| {
                t.symlink("s", &cd)?.file("s/new", b"pwned", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "write through a chain of symlinks to the host dir",
            refused("a/secret"),
            layer(|t| {
                t.symlink("a", "b")?
                    .symlink("b", &d)?
                    .file("a/secret", b"pwned", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "write through a /proc/self/root magic link",
            refused("p/secret"),
            layer(|t| {
                t.symlink("p", &format!("/proc/self/root{d}"))?
                    .file("p/secret", b"pwned", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "directory through a symlink to the host dir",
            refused("s/sub"),
            layer(|t| {
                t.symlink("s", &d)?.dir_owned("s/sub", 0o4777, 0, 0, 1)?;
                Ok(())
            }),
        ),
        case(
            "climbing symlink as a parent",
            Expect::Confined,
            layer(|t| {
                t.symlink("up", "../../../../../../..")?
                    .file(&format!("up{f}"), b"pwned", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "symlink to / as a parent",
            Expect::Confined,
            layer(|t| {
                t.symlink("slash", "/")?
                    .file(&format!("slash{f}"), b"pwned", 0o644)?
                    .file(&format!("slash{d}/new"), b"pwned", 0o644)?;
                Ok(())
            }),
        ),
        // --- hardlinks.
        case(
            "hardlink through a symlink to the host dir, with an xattr",
            refused("h (hardlink"),
            layer(|t| {
                t.symlink("s", &d)?
                    .xattr("user.victim", b"pwned")?
                    .hardlink("h", "s/secret")?;
                Ok(())
            }),
        ),
        case(
            "hardlink to an absolute host path, with an xattr",
            refused("h (hardlink"),
            layer(|t| {
                t.xattr("user.victim", b"pwned")?.hardlink("h", &f)?;
                Ok(())
            }),
        ),
        case(
            "hardlink climbing out",
            refused("h (hardlink"),
            layer(|t| {
                t.hardlink("h", "../../../../../host/secret")?;
                Ok(())
            }),
        ),
        case(
            "hardlink climbing to the host file's absolute path",
            refused("h (hardlink"),
            layer(|t| {
                t.hardlink("h", &cf)?;
                Ok(())
            }),
        ),
        case(
            "hardlink through a climbing symlink parent",
            refused("h (hardlink"),
            layer(|t| {
                t.symlink("up", "../../../../../../..")?
                    .hardlink("h", &format!("up{f}"))?;
                Ok(())
            }),
        ),
        case(
            "hardlink with a PAX linkpath to the host file behind a harmless target",
            refused("h (hardlink"),
            layer(|t| {
                t.file("ok", b"ok", 0o644)?
                    .pax(&[("linkpath", f.as_bytes())])?
                    .hardlink("h", "ok")?;
                Ok(())
            }),
        ),
        case(
            "hardlink to the layer root",
            refused("h (hardlink"),
            layer(|t| {
                t.hardlink("h", "/")?;
                Ok(())
            }),
        ),
        case(
            "hardlink to a symlink to the host file, with an xattr",
            Expect::Confined,
            layer(|t| {
                t.symlink("l", &f)?
                    .xattr("user.victim", b"pwned")?
                    .hardlink("h", "l")?;
                Ok(())
            }),
        ),
        // --- entries over a symlink to a host file (the last component is never followed).
        case(
            "file over a symlink to the host file, with an xattr",
            Expect::Confined,
            layer(|t| {
                t.symlink("f", &f)?
                    .xattr("user.victim", b"pwned")?
                    .file("f", b"pwned", 0o4777)?;
                Ok(())
            }),
        ),
        case(
            "device over a symlink to the host file",
            Expect::Confined,
            layer(|t| {
                t.symlink("n", &f)?.node(T::Char, "n", 0o4777, 1, 3)?;
                Ok(())
            }),
        ),
        case(
            "fifo over a symlink to the host file",
            Expect::Confined,
            layer(|t| {
                t.symlink("n", &f)?.node(T::Fifo, "n", 0o4777, 0, 0)?;
                Ok(())
            }),
        ),
        case(
            "hardlink over a symlink to the host file",
            Expect::Confined,
            layer(|t| {
                t.file("ok", b"ok", 0o4777)?
                    .symlink("n", &f)?
                    .hardlink("n", "ok")?;
                Ok(())
            }),
        ),
        case(
            "directory with an xattr over a symlink to the host dir",
            Expect::Confined,
            layer(|t| {
                t.symlink("d", &d)?
                    .xattr("user.victim", b"pwned")?
                    .dir_owned("d", 0o4777, 0, 0, 1)?;
                Ok(())
            }),
        ),
        case(
            "xattrs on a symlink to the host file",
            Expect::Confined,
            layer(|t| {
                t.xattr("user.victim", b"pwned")?.symlink("l", &f)?;
                Ok(())
            }),
        ),
        case(
            "the layer root replaced by a symlink to the host dir",
            Expect::Confined,
            layer(|t| {
                t.symlink("./", &d)?.file("pwned", b"pwned", 0o644)?;
                Ok(())
            }),
        ),
        // --- whiteouts and opaque markers.
        case(
            "whiteout `.wh.` at the top",
            refused(".wh."),
            layer(|t| {
                t.file(".wh.", b"", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "whiteout `.wh..` at the top",
            refused(".wh.."),
            layer(|t| {
                t.file(".wh..", b"", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "whiteout `.wh...` at the top (the snapshot's parent)",
            refused(".wh..."),
            layer(|t| {
                t.file(".wh...", b"", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "whiteout `sub/.wh.` nested",
            refused("sub/.wh."),
            layer(|t| {
                t.file("sub/.wh.", b"", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "whiteout `sub/.wh..` nested",
            refused("sub/.wh.."),
            layer(|t| {
                t.file("sub/.wh..", b"", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "whiteout `sub/.wh...` nested",
            refused("sub/.wh..."),
            layer(|t| {
                t.file("sub/.wh...", b"", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "whiteout of the host file through a symlink to the host dir",
            refused("w/.wh.secret"),
            layer(|t| {
                t.symlink("w", &d)?.file("w/.wh.secret", b"", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "whiteout of the host file through a climbing symlink",
            refused("w/.wh.secret"),
            layer(|t| {
                t.symlink("w", &cd)?.file("w/.wh.secret", b"", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "whiteout entry that is a hardlink to the host file",
            Expect::Confined,
            layer(|t| {
                t.hardlink(".wh.secret", &f)?;
                Ok(())
            }),
        ),
        case(
            "opaque marker through a symlink to the host dir",
            refused("o/.wh..wh..opq"),
            layer(|t| {
                t.symlink("o", &d)?.file("o/.wh..wh..opq", b"", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "opaque marker through a climbing symlink",
            Expect::Confined,
            layer(|t| {
                t.symlink("o", UP)?.file("o/.wh..wh..opq", b"", 0o644)?;
                Ok(())
            }),
        ),
        case(
            "opaque marker that is a symlink to the host dir",
            Expect::Confined,
            layer(|t| {
                t.symlink("x/.wh..wh..opq", &d)?;
                Ok(())
            }),
        ),
        Case {
            name: "lower layer's symlink to the host dir, upper whiteout, opaque marker and file through it",
            layers: vec![
                layer(|t| {
                    t.symlink("o", &d)?;
                    Ok(())
                }),
                layer(|t| {
                    t.file("o/.wh..wh..opq", b"", 0o644)?
                        .file("o/.wh.secret", b"", 0o644)?
                        .file("o/new", b"pwned", 0o644)?;
                    Ok(())
                }),
            ],
            expect: Expect::Confined,
        },
        Case {
            name: "lower layer's dir, upper replaces it with a symlink to the host dir and writes through",
            layers: vec![
                layer(|t| {
                    t.dir("x", 0o755)?;
                    Ok(())
                }),
                layer(|t| {
                    t.symlink("x", &d)?.file("x/secret", b"pwned", 0o644)?;
                    Ok(())
                }),
            ],
            expect: refused("x/secret"),
        },
        // --- tar bombs, against `unpack: {max_bytes: 1 MiB, max_entries: 1000}`.
        case(
            "tar bomb: a file over max_bytes",
            refused("max_bytes (1048576) at entry \"zeros\""),
            layer(|t| {
                t.file("zeros", &vec![0u8; 2 << 20], 0o644)?;
                Ok(())
            }),
        ),
        case(
            "tar bomb: a header claiming a 1 TiB file",
            refused("max_bytes (1048576) at entry \"huge\""),
            layer(|t| {
                let h = RawTar::header(T::Regular, "huge", "", 0o644, 1 << 40)?;
                t.entry(h, &[0u8; 4096])?;
                Ok(())
            }),
        ),
        case(
            "tar bomb: entries over max_entries",
            refused("max_entries (1000)"),
            layer(|t| {
                for i in 0..1500 {
                    t.file(&format!("f{i}"), b"", 0o644)?;
                }
                Ok(())
            }),
        ),
        // The tar crate takes the data length from a PAX `size` record, so the budget must
        // too (a header's own size field may say 0).
        case(
            "tar bomb: PAX size over max_bytes behind a header size of 0",
            refused("max_bytes (1048576) at entry \"paxsized\""),
            layer(|t| {
                t.pax(&[("size", (2u64 << 20).to_string().as_bytes())])?;
                let h = RawTar::header(T::Regular, "paxsized", "", 0o644, 0)?;
                t.entry(h, &vec![0u8; 2 << 20])?;
                Ok(())
            }),
        ),
        // An extension header (PAX `x`, like GNU long names) is read whole into memory
        // before the entry it describes is seen; 256 MiB of it gzips to about 1 MiB. Go's
        // archive/tar (containerd's applier) refuses special headers over 1 MiB; the daemon
        // must refuse it too, and within its memory cap.
        case(
            "tar bomb: a 256 MiB PAX header (memory)",
            refused(""),
            layer(|t| {
                let rec = pax_record("comment", &vec![b'A'; 256 << 20]);
                let h = RawTar::header(T::XHeader, "PaxHeaders/after", "", 0o644, rec.len() as u64)?;
                t.entry(h, &rec)?.file("after", b"x", 0o644)?;
                Ok(())
            }),
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullPath {
    Rpull,
    Dfctl,
}

const PATHS: [PullPath; 2] = [PullPath::Rpull, PullPath::Dfctl];

impl PullPath {
    fn tag(self) -> &'static str {
        match self {
            PullPath::Rpull => "rpull",
            PullPath::Dfctl => "dfctl",
        }
    }
}

/// The layers of `case` for one pull path: each starts with a marker entry naming case,
/// path and layer, so no two pulls share a layer (containerd would skip one it has).
fn tars_for(i: usize, c: &Case, p: PullPath) -> Vec<Vec<u8>> {
    c.layers
        .iter()
        .enumerate()
        .map(|(j, body)| {
            let marker = layer(|t| {
                t.file(&format!("marker-{i}-{}-{j}", p.tag()), b"m", 0o644)?;
                Ok(())
            });
            finish_tar(&[&marker, body])
        })
        .collect()
}

#[test]
fn hostile_layers_change_nothing_on_the_host() {
    require_root().unwrap();
    let started = Instant::now();
    let dir = TestDir::new("dfly-hl-").expect("temp dir");
    let host = Host::new(dir.path());
    let before = host.state();
    let cases = cases(&host);
    let registry = Registry::start(dir.path()).expect("registry");

    let mut images: Vec<(BuiltImage, String)> = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        for p in PATHS {
            let layout = dir.path().join(format!("layouts/{i}-{}", p.tag()));
            let img = build_image_from_tars(&layout, &tars_for(i, c, p), &["/ok"]).expect("image");
            let reference = format!("{}/hostile/c{i}-{}:1", registry.addr, p.tag());
            images.push((img, reference));
        }
    }
    // The table without its layer bodies (the largest is 256 MiB).
    let cases: Vec<Case> = cases
        .into_iter()
        .map(|c| Case {
            layers: Vec::new(),
            ..c
        })
        .collect();
    push_all(&images, 4).expect("push");
    eprintln!("{} images pushed in {:?}", images.len(), started.elapsed());

    let daemon = Daemon::start(&dir.path().join("daemon"), LIMITS).expect("daemon");
    let ctd =
        Containerd::start(&dir.path().join("containerd"), &daemon.socket).expect("containerd");
    let dfctl = built_binary("DFCTL_BIN", "dfctl").expect("dfctl");
    let pid = daemon.pid().expect("daemon runs");

    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        for (k, p) in PATHS.into_iter().enumerate() {
            let (img, reference) = &images[i * PATHS.len() + k];
            let digest = img.layers.last().expect("a layer");
            let log_from = daemon.log().len();
            reset_peak_rss(pid).expect("reset peak RSS");
            let t = Instant::now();
            let pulled = match p {
                PullPath::Rpull => ctd.rpull(reference),
                PullPath::Dfctl => run(Command::new(&dfctl)
                    .arg("--socket")
                    .arg(&daemon.socket)
                    .args([
                        "image",
                        "pull",
                        reference,
                        "--namespace",
                        NAMESPACE,
                        "--containerd",
                    ])
                    .arg(&ctd.socket)),
            };
            let took = t.elapsed();
            let log = daemon.log();
            let log = log.get(log_from..).unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(digest.as_str()))
                .collect();
            let mut wrong = Vec::new();
            match &c.expect {
                Expect::Refused(text) => {
                    if !lines
                        .iter()
                        .any(|l| l.contains("cannot unpack layer") && l.contains(text.as_str()))
                    {
                        wrong.push(format!(
                            "the daemon did not refuse the layer naming {text:?}"
                        ));
                    }
                    match (&pulled, p) {
                        (Ok(_), PullPath::Dfctl) => {
                            wrong.push("dfctl image pull succeeded".to_owned())
                        }
                        (Err(e), PullPath::Dfctl) if !format!("{e:#}").contains(text.as_str()) => {
                            wrong.push(format!("dfctl's error does not name {text:?}"))
                        }
                        _ => {}
                    }
                }
                Expect::Confined => {
                    if !lines.iter().any(|l| l.contains("unpacked")) {
                        wrong.push("the daemon did not unpack the layer".to_owned());
                    }
                    if pulled.is_err() {
                        wrong.push("the pull failed".to_owned());
                    }
                }
            }
            let now = host.state();
            if now != before {
                wrong.push(format!(
                    "THE HOST CHANGED:\nbefore: {before:#?}\nafter: {now:#?}"
                ));
            }
            if !pid_alive(pid) {
                wrong.push("the daemon died".to_owned());
            }
            let peak = peak_rss(pid).unwrap_or(0);
            if peak > RSS_CAP {
                wrong.push(format!(
                    "the daemon's peak RSS was {} MiB (cap {} MiB)",
                    peak >> 20,
                    RSS_CAP >> 20
                ));
            }
            eprintln!(
                "{:>2} {:5} {:8} {took:.1?} peak {} MiB: {}{}",
                i,
                p.tag(),
                c.expect_tag(),
                peak >> 20,
                c.name,
                if wrong.is_empty() { "" } else { "  FAILED" }
            );
            if !wrong.is_empty() {
                let pulled = match &pulled {
                    Ok(out) => format!("ok: {}", out.trim()),
                    Err(e) => format!("error: {e:#}"),
                };
                failures.push(format!(
                    "case {i} {:?} via {}: {}\n  pull: {pulled}\n  daemon log for {digest}:\n    {}",
                    c.name,
                    p.tag(),
                    wrong.join("\n  "),
                    lines.join("\n    ")
                ));
            }
        }
    }
    eprintln!(
        "{} cases x {} paths in {:?}",
        cases.len(),
        PATHS.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} pulls went wrong:\n\n{}",
        failures.len(),
        cases.len() * PATHS.len(),
        failures.join("\n\n")
    );
}

impl Case {
    fn expect_tag(&self) -> &'static str {
        match self.expect {
            Expect::Refused(_) => "refused",
            Expect::Confined => "confined",
        }
    }
}
