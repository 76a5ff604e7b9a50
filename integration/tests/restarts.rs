//! Running containers keep reading their lazy layers while the daemon crashes, restarts and
//! is upgraded: real containerd and runc, a 512 MiB file of an eStargz layer read in 1 MiB
//! steps through a throttled registry while the daemon is killed with SIGKILL (once, twice
//! within a second, during adoption) and stopped with SIGTERM then started (an upgrade). The
//! readers must finish with the right sha256, never stall 30 s, the FUSE mounts must stay the
//! same mounts (same mount ids: adopted, not remounted), and new containers must start.
//! Once with the fd holder keeping the connections, once with a harness playing systemd's fd
//! store on `$NOTIFY_SOCKET`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dragonfly_integration::daemon::Daemon;
use dragonfly_integration::fdstore::FakeSystemd;
use dragonfly_integration::fixtures::{self, RESTART_LEN, RESTART_SEED};
use dragonfly_integration::throttle::Throttle;
use dragonfly_integration::TestBed;

/// Registry egress: 512 MiB take about 32 s, long enough for four disruptions.
const RATE: u64 = 16 << 20;
/// The file every reader reads a slice of, as seen inside the container.
const FILE: &str = "/data/restart.bin";
/// Longest a reader may go without progress.
const MAX_STALL: Duration = Duration::from_secs(30);

/// The tests read the same file name, and the progress monitor tells readers apart only by
/// it: one test at a time, across processes (nextest runs each test in its own).
fn serial() -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::File::create("/var/tmp/dfly-restart-tests.lock").unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap()
}

/// Read offsets of every process reading [`FILE`], sampled from `/proc/PID/fdinfo`.
#[derive(Default)]
struct Progress {
    /// pid → (first offset seen, last offset, when it last moved).
    readers: BTreeMap<u32, (u64, u64, Instant)>,
    longest_stall: Duration,
}

impl Progress {
    fn read_bytes(&self) -> u64 {
        self.readers
            .values()
            .map(|(first, last, _)| last - first)
            .sum()
    }

    fn sample(&mut self) {
        let now = Instant::now();
        let mut alive = Vec::new();
        for (pid, pos) in positions() {
            alive.push(pid);
            let e = self.readers.entry(pid).or_insert((pos, pos, now));
            if pos != e.1 {
                e.1 = pos;
                e.2 = now;
            }
        }
        for (pid, (_, _, moved)) in &self.readers {
            if alive.contains(pid) {
                self.longest_stall = self.longest_stall.max(now - *moved);
            }
        }
    }
}

/// (pid, offset) of each open file description of [`FILE`] in any process.
fn positions() -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |c| c.trim() != "dd") {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t == std::path::Path::new(FILE)) {
                let info = std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .unwrap_or_default();
                if let Some(pos) = info
                    .lines()
                    .find_map(|l| l.strip_prefix("pos:"))
                    .and_then(|v| v.trim().parse().ok())
                {
                    out.push((pid, pos));
                }
            }
        }
    }
    out
}

/// The never-reused 64-bit id of the mount at `point` (mountinfo's ids are reused at once),
/// from cached attributes only, so no FUSE request is needed.
fn unique_mount_id(point: &str) -> u64 {
    let c = std::ffi::CString::new(point).unwrap();
    // SAFETY: a valid C string and a zeroed statx buffer the kernel fills.
    unsafe {
        let mut st: libc::statx = std::mem::zeroed();
        let r = libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_DONT_SYNC | libc::AT_NO_AUTOMOUNT,
            libc::STATX_MNT_ID_UNIQUE,
            &mut st,
        );
        assert_eq!(r, 0, "statx {point}: {}", std::io::Error::last_os_error());
        st.stx_mnt_id
    }
}

/// Unique mount id and mount point of every lazy layer mount under `dir`.
fn fuse_mounts(dir: &std::path::Path) -> Vec<(u64, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out: Vec<(u64, String)> = info
        .lines()
        .filter(|l| l.contains(" - fuse.dragonfly "))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = f.get(4)?.to_string();
            point
                .starts_with(&*dir.to_string_lossy())
                .then(|| (unique_mount_id(&point), point))
        })
        .collect();
    out.sort();
    out
}

/// A shell script for busybox: `readers` dd processes, each reading its slice of [`FILE`]
/// in 1 MiB steps into sha256sum; prints `INDEX HASH` lines.
fn script(readers: usize) -> String {
    let slice_mib = (RESTART_LEN >> 20) / readers;
    format!(
        "i=0; while [ $i -lt {readers} ]; do \
         (h=$(dd if={FILE} bs=1M skip=$((i*{slice_mib})) count={slice_mib} 2>/dev/null | sha256sum); echo \"$i $h\") & \
         i=$((i+1)); done; wait"
    )
}

fn expected_hashes(readers: usize) -> Vec<String> {
    let data = fixtures::random_bytes(RESTART_LEN, RESTART_SEED);
    data.chunks(RESTART_LEN / readers)
        .map(fixtures::sha256_hex)
        .collect()
}

/// How many times the daemon's log says `what`.
fn count(d: &Daemon, what: &str) -> usize {
    d.log().matches(what).count()
}

const HELD: &str = "live FUSE connections held from a previous daemon";

/// The four disruptions, each once the readers got past its fraction of the file.
fn disrupt(d: &mut Daemon, step: usize) {
    let started = Instant::now();
    match step {
        // A crash.
        0 => {
            d.kill9();
            d.restart().expect("restart after SIGKILL");
        }
        // Two crashes within a second.
        1 => {
            d.kill9();
            d.restart().expect("restart after the first SIGKILL");
            d.kill9();
            d.restart().expect("restart after the second SIGKILL");
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "two restarts took {:?}",
                started.elapsed()
            );
        }
        // A crash while the new daemon adopts the connections.
        2 => {
            let before = count(d, HELD);
            d.kill9();
            d.spawn_no_wait().expect("spawn");
            let deadline = Instant::now() + Duration::from_secs(20);
            while count(d, HELD) == before {
                assert!(
                    Instant::now() < deadline,
                    "no adoption started\n{}",
                    d.log_tail(60)
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            d.kill9();
            d.restart().expect("restart after a kill during adoption");
        }
        // An upgrade: SIGTERM, exit, start.
        _ => d.restart().expect("restart after SIGTERM"),
    }
    eprintln!("disruption {step} done in {:?}", started.elapsed());
}

fn survive(readers: usize, systemd: bool) {
    let _serial = serial();
    let mut bed = TestBed::start("prefetch: {background: false, landmark: false}").expect("bed");
    let fake = systemd.then(|| {
        let f = FakeSystemd::start(&bed.path().join("systemd")).expect("fake systemd");
        bed.daemon.set_launcher(f.launcher());
        bed.daemon.restart().expect("daemon under the fake systemd");
        f
    });
    let published =
        fixtures::publish_restart(&bed.containerd, &bed.registry, "restart").expect("publish");
    let slow = Throttle::start(&bed.registry.addr, RATE).expect("throttle");
    let image = published.replace(&bed.registry.addr, &slow.addr);
    // containerd reconnects to a restarted daemon with back-off.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = bed.containerd.rpull(&image) {
        let retry = format!("{e:#}").contains("navailable") && Instant::now() < deadline;
        assert!(retry, "rpull: {e:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let want = expected_hashes(readers);

    let progress = Arc::new(Mutex::new(Progress::default()));
    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (p, d) = (progress.clone(), done.clone());
        std::thread::spawn(move || {
            while !d.load(Ordering::Acquire) {
                p.lock().unwrap().sample();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let total = RESTART_LEN as u64;
    let mut mounts_before = Vec::new();
    let mut step = 0;
    let TestBed {
        containerd, daemon, ..
    } = &mut bed;
    let script = script(readers);
    let (ok, out) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            containerd.run_once("dragonfly", &image, "readers", &["/bin/sh", "-c", &script])
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        while !reader.is_finished() {
            assert!(
                Instant::now() < deadline,
                "readers did not finish\n{}",
                daemon.log_tail(60)
            );
            let read = progress.lock().unwrap().read_bytes();
            if mounts_before.is_empty() && read > 0 {
                mounts_before = fuse_mounts(&daemon.dir);
            }
            if step < 4 && read * 5 >= total * (step as u64 + 1) {
                eprintln!("{} MiB read: disruption {step}", read >> 20);
                disrupt(daemon, step);
                step += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        reader.join().unwrap()
    });
    done.store(true, Ordering::Release);
    monitor.join().unwrap();
    assert!(ok, "readers failed: {out}\n{}", bed.logs());
    assert_eq!(step, 4, "not every disruption happened (output: {out})");
    let mut got: Vec<(usize, String)> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.to_owned()))
        })
        .collect();
    got.sort();
    let got: Vec<String> = got.into_iter().map(|(_, h)| h).collect();
    assert_eq!(got, want, "sha256 of each slice\n{}", bed.logs());
    let stall = progress.lock().unwrap().longest_stall;
    assert!(stall < MAX_STALL, "a reader was blocked for {stall:?}");
    assert!(!mounts_before.is_empty(), "no FUSE mount seen");
    assert_eq!(
        fuse_mounts(&bed.daemon.dir),
        mounts_before,
        "the lazy mounts were replaced (remounted) instead of adopted\n{}",
        bed.logs()
    );
    // Readers were waiting on requests the killed daemons had read: the kernel resent them.
    let resent = count(
        &bed.daemon,
        "answering a request the previous daemon had read",
    );
    assert!(resent > 0, "no request was resent\n{}", bed.logs());
    let adopted = count(&bed.daemon, "adopted the live FUSE connection");
    assert!(
        adopted >= 5 * mounts_before.len(),
        "adoptions logged: {adopted}"
    );
    assert_eq!(count(&bed.daemon, "cannot adopt"), 0, "{}", bed.logs());
    let (ok, out) = bed.containerd.run_once(
        "dragonfly",
        &image,
        "after",
        &["/bin/sh", "-c", "head -c 16 /data/restart.bin | wc -c"],
    );
    assert!(
        ok && out.trim() == "16",
        "a new container after the restarts: {out}"
    );
    if let Some(f) = &fake {
        assert!(
            f.stored().len() >= mounts_before.len(),
            "systemd's store holds {:?}",
            f.stored()
        );
        assert!(f.messages().iter().any(|m| m.contains("READY=1")));
    }
    let keeper = if systemd {
        "systemd fd store"
    } else {
        "fd holder"
    };
    eprintln!("{readers} readers, {keeper}: longest stall {stall:?}, {adopted} adoptions, {resent} requests resent");
}

#[test]
fn one_reader_survives_crashes_and_an_upgrade_with_the_fd_holder() {
    survive(1, false);
}

#[test]
fn sixteen_readers_survive_crashes_and_an_upgrade_with_systemds_fd_store() {
    survive(16, true);
}

/// A held connection that does not match its record (here: a record of another format, as
/// after an upgrade that changed node numbering) is not adopted: the layer is mounted afresh
/// and works. Then `unmount-all` is the one way to tear the kept mounts down.
#[test]
fn a_mismatched_record_is_remounted_and_unmount_all_tears_everything_down() {
    let mut bed = TestBed::start("prefetch: {background: false}").expect("bed");
    let img = fixtures::kinds().expect("fixture");
    let p = fixtures::publish(&bed.containerd, &bed.registry.addr, "kinds", &img, &[])
        .expect("publish");
    bed.containerd.rpull(&p.estargz).expect("rpull");
    let passwd = |root: &std::path::Path| std::fs::read(root.join("etc/passwd")).unwrap();
    {
        let m = bed
            .containerd
            .mount_image("dragonfly", &p.estargz)
            .expect("mount");
        assert_eq!(passwd(m.path()), b"root:x:0:0:root:/root:/bin/sh\n");
    }
    let before = fuse_mounts(&bed.daemon.dir);
    assert!(!before.is_empty());
    bed.daemon.kill9();
    let records = bed.daemon.dir.join("root/handoff");
    let mut tampered = 0;
    for e in std::fs::read_dir(&records).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(e.path()).unwrap();
            std::fs::write(e.path(), text.replace("\"format\": 1,", "\"format\": 999,")).unwrap();
            tampered += 1;
        }
    }
    assert_eq!(tampered, before.len(), "one record per lazy mount");
    bed.daemon.restart().expect("restart");
    let after = fuse_mounts(&bed.daemon.dir);
    assert_eq!(after.len(), before.len(), "{}", bed.logs());
    assert!(
        after.iter().all(|m| !before.contains(m)),
        "mismatched connections must be replaced: {before:?} → {after:?}"
    );
    assert!(
        bed.daemon.log().contains("reason=\"format\"")
            || bed.daemon.log().contains("reason=format"),
        "{}",
        bed.logs()
    );
    {
        // containerd reconnects to the restarted daemon with back-off.
        let deadline = Instant::now() + Duration::from_secs(30);
        let m = loop {
            match bed.containerd.mount_image("dragonfly", &p.estargz) {
                Ok(m) => break m,
                Err(e) if format!("{e:#}").contains("navailable") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                Err(e) => panic!("mount after the remount: {e:#}"),
            }
        };
        assert_eq!(passwd(m.path()), b"root:x:0:0:root:/root:/bin/sh\n");
    }
    // The daemon stops, leaving its mounts for a successor; unmount-all takes them down.
    bed.daemon.stop();
    assert_eq!(
        fuse_mounts(&bed.daemon.dir).len(),
        before.len(),
        "SIGTERM keeps the mounts"
    );
    let bin = dragonfly_integration::procs::built_binary(
        "DRAGONFLY_SNAPSHOTTER_BIN",
        "dragonfly-snapshotter",
    )
    .unwrap();
    let out = dragonfly_integration::procs::run(
        std::process::Command::new(bin)
            .arg("--config")
            .arg(bed.daemon.dir.join("config.yaml"))
            .arg("unmount-all"),
    )
    .expect("unmount-all");
    assert!(out.contains("detached"), "{out}");
    assert!(fuse_mounts(&bed.daemon.dir).is_empty(), "{out}");
    let left: Vec<_> = std::fs::read_dir(&records)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(left.is_empty(), "records left: {left:?}");
}
