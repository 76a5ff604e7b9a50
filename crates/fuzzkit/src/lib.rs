//! A small fuzzing harness for the parsers' tests, on stable Rust: a seeded generator, byte
//! and JSON mutations of valid inputs, and a case loop that runs either a fixed number of
//! cases (the default, quick enough for the test suite) or, with `DRAGONFLY_FUZZ_SECS`, until
//! that many seconds have passed.
//!
//! Every case is reproducible from the run's seed and its number. A crash is any of: a panic
//! in the check (caught, the input saved under `target/fuzz-crashes/` and printed as hex), a
//! case running longer than its timeout (a watchdog prints and saves the input, then aborts
//! the process), a single allocation over the hard cap or a case whose peak allocation is over
//! its budget (when the test binary installs [`MeteredAlloc`] as its global allocator).
//!
//! Environment:
//! - `DRAGONFLY_FUZZ_SECS`: run each target for this many seconds (else a fixed case count);
//! - `DRAGONFLY_FUZZ_CASES`: the case count without `DRAGONFLY_FUZZ_SECS`;
//! - `DRAGONFLY_FUZZ_SEED`: the seed (default: fixed; with `DRAGONFLY_FUZZ_SECS`, from the clock);
//! - `DRAGONFLY_FUZZ_CASE`: run only this case (with the seed of the failing run);
//! - `DRAGONFLY_FUZZ_REPORT`: a file each target appends a JSON line with its figures to.

mod alloc;
mod mutate;

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use alloc::{MeteredAlloc, HARD_CAP_DEFAULT};
pub use mutate::{
    mutate_bytes, mutate_json, mutate_json_text, random_bytes, INTERESTING_NUMBERS, INTERESTING_U64,
};

/// A small, fast, seeded generator (SplitMix64). Not for anything but tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// A random element.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length skewed towards small values: mostly up to 16, sometimes up to `max`.
    pub fn small_len(&mut self, max: usize) -> usize {
        match self.below(10) {
            0..=6 => self.below(17.min(max + 1)),
            7 | 8 => self.below(257.min(max + 1)),
            _ => self.below(max + 1),
        }
    }
}

/// One fuzz target's settings.
#[derive(Debug, Clone)]
pub struct Fuzz {
    name: &'static str,
    cases: u64,
    timeout: Duration,
    memory: Option<usize>,
}

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Cases run (all passed).
    pub cases: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The largest peak of bytes allocated during one case (0 without [`MeteredAlloc`]).
    pub max_case_peak: usize,
}

struct Watch {
    /// Case number and start (nanoseconds since the run began; `u64::MAX` between cases).
    case: AtomicU64,
    started: AtomicU64,
    input: Mutex<Vec<u8>>,
    done: AtomicBool,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// `target/fuzz-crashes/`, next to the test binary's profile directory.
fn crash_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<binary>
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    target.join("fuzz-crashes")
}

fn save_crash(name: &str, seed: u64, case: u64, input: &[u8]) -> String {
    let dir = crash_dir();
    let path = dir.join(format!("{name}-{seed:016x}-{case}.bin"));
    let saved = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, input));
    let shown = if input.len() <= 1024 {
        hex::encode(input)
    } else {
        format!("{}… ({} bytes)", hex::encode(&input[..1024]), input.len())
    };
    eprintln!(
        "fuzz {name}: failing input (seed {seed:#x}, case {case}, {} bytes): {shown}",
        input.len()
    );
    match saved {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(not saved: {e})"),
    }
}

fn case_seed(seed: u64, case: u64) -> u64 {
    let mut r = Rng::new(seed ^ case.wrapping_mul(0xd1b5_4a32_d192_ed03));
    r.next_u64()
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into())
}

impl Fuzz {
    /// A target with 300 cases by default and a 10 s timeout per case.
    pub fn new(name: &'static str) -> Fuzz {
        Fuzz {
            name,
            cases: 300,
            timeout: Duration::from_secs(10),
            memory: None,
        }
    }

    /// Cases to run without `DRAGONFLY_FUZZ_SECS`.
    pub fn cases(mut self, n: u64) -> Fuzz {
        self.cases = n;
        self
    }

    /// Longest one case may take.
    pub fn timeout(mut self, d: Duration) -> Fuzz {
        self.timeout = d;
        self
    }

    /// Most bytes one case may have allocated at once (checked with [`MeteredAlloc`]).
    pub fn memory(mut self, bytes: usize) -> Fuzz {
        self.memory = Some(bytes);
        self
    }

    /// Runs `check` on inputs from `gen` until the case count or the time is reached.
    /// Panics (failing the test) at the first crash, with the input and how to reproduce it.
    pub fn run<G, C>(self, mut gen: G, check: C) -> Report
    where
        G: FnMut(&mut Rng) -> Vec<u8>,
        C: Fn(&[u8]),
    {
        let name = self.name;
        let secs = env_u64("DRAGONFLY_FUZZ_SECS");
        let only = env_u64("DRAGONFLY_FUZZ_CASE");
        let seed = env_u64("DRAGONFLY_FUZZ_SEED").unwrap_or_else(|| match secs {
            Some(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
            None => 0x5eed_d4a6_0f1e,
        });
        let cases = env_u64("DRAGONFLY_FUZZ_CASES").unwrap_or(self.cases);
        let start = Instant::now();
        let deadline = secs.map(|s| start + Duration::from_secs(s));
        alloc::set_current(name, seed);

        let watch = Arc::new(Watch {
            case: AtomicU64::new(0),
            started: AtomicU64::new(u64::MAX),
            input: Mutex::new(Vec::new()),
            done: AtomicBool::new(false),
        });
        let watchdog = {
            let watch = Arc::clone(&watch);
            let timeout = self.timeout;
            std::thread::spawn(move || {
                while !watch.done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    let began = watch.started.load(Ordering::Acquire);
                    if began == u64::MAX {
                        continue;
                    }
                    let now = start.elapsed().as_nanos() as u64;
                    if now.saturating_sub(began) > timeout.as_nanos() as u64 {
                        let case = watch.case.load(Ordering::Acquire);
                        let input = watch.input.lock().map(|i| i.clone()).unwrap_or_default();
                        let path = save_crash(name, seed, case, &input);
                        eprintln!(
                            "fuzz {name}: case {case} ran longer than {timeout:?} (a hang); input saved to {path}; reproduce with DRAGONFLY_FUZZ_SEED={seed:#x} DRAGONFLY_FUZZ_CASE={case}"
                        );
                        std::process::abort();
                    }
                }
            })
        };

        let mut run = 0u64;
        let mut max_peak = 0usize;
        let mut case = only.unwrap_or(0);
        loop {
            let more = match (only, deadline) {
                (Some(_), _) => run == 0,
                (None, Some(d)) => Instant::now() < d,
                (None, None) => run < cases,
            };
            if !more {
                break;
            }
            let mut rng = Rng::new(case_seed(seed, case));
            let input = gen(&mut rng);
            if only.is_some() {
                eprintln!(
                    "fuzz {name}: case {case} input ({} bytes): {}",
                    input.len(),
                    hex::encode(&input)
                );
            }
            if let Ok(mut w) = watch.input.lock() {
                w.clone_from(&input);
            }
            watch.case.store(case, Ordering::Release);
            alloc::set_case(case);
            let began = Instant::now();
            watch
                .started
                .store(start.elapsed().as_nanos() as u64, Ordering::Release);
            let base = alloc::begin_case();
            let result = catch_unwind(AssertUnwindSafe(|| check(&input)));
            let peak = alloc::case_peak(base);
            watch.started.store(u64::MAX, Ordering::Release);
            let took = began.elapsed();
            let failure = match result {
                Err(p) => Some(format!("panicked: {}", panic_text(p.as_ref()))),
                Ok(()) if took > self.timeout => Some(format!(
                    "took {took:?}, over the {:?} allowed (a hang)",
                    self.timeout
                )),
                Ok(()) if self.memory.is_some_and(|m| alloc::metered() && peak > m) => {
                    Some(format!(
                        "allocated {peak} bytes at once, over the budget of {} (unbounded allocation)",
                        self.memory.unwrap_or_default()
                    ))
                }
                Ok(()) => None,
            };
            if let Some(why) = failure {
                watch.done.store(true, Ordering::Relaxed);
                let path = save_crash(name, seed, case, &input);
                panic!(
                    "fuzz {name}: case {case} {why}; input saved to {path}; reproduce with DRAGONFLY_FUZZ_SEED={seed:#x} DRAGONFLY_FUZZ_CASE={case}"
                );
            }
            max_peak = max_peak.max(peak);
            run += 1;
            case += 1;
        }
        watch.done.store(true, Ordering::Relaxed);
        let _ = watchdog.join();
        let report = Report {
            cases: run,
            elapsed: start.elapsed(),
            max_case_peak: if alloc::metered() { max_peak } else { 0 },
        };
        let peak = if alloc::metered() {
            format!(", largest case peak {} KiB", max_peak >> 10)
        } else {
            String::new()
        };
        println!(
            "fuzz {name}: {} cases, 0 crashes ({:.1} s, seed {seed:#x}{peak})",
            report.cases,
            report.elapsed.as_secs_f64()
        );
        if let Ok(path) = std::env::var("DRAGONFLY_FUZZ_REPORT") {
            let line = serde_json::json!({
                "target": name,
                "cases": report.cases,
                "crashes": 0,
                "seconds": (report.elapsed.as_secs_f64() * 10.0).round() / 10.0,
                "seed": format!("{seed:#x}"),
                "max_case_peak_bytes": report.max_case_peak,
            });
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = appended {
                eprintln!("fuzz {name}: cannot append to {path}: {e}");
            }
        }
        report
    }
}
