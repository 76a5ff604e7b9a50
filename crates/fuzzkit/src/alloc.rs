//! An allocation meter for fuzz test binaries: per-thread live bytes and their peak, and a
//! hard cap on any single allocation (an allocation over it prints the target, seed and case
//! and fails, which aborts the process: a parser must refuse a huge length before it
//! allocates it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// The default hard cap on one allocation: 1 GiB.
pub const HARD_CAP_DEFAULT: usize = 1 << 30;

static METERED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    // The target, seed and case this thread runs, for the report of an oversized allocation.
    static NAME: Cell<&'static str> = const { Cell::new("") };
    static SEED: Cell<u64> = const { Cell::new(0) };
    static CASE: Cell<u64> = const { Cell::new(0) };
}

/// A global allocator (over [`System`]) that meters each thread's allocations and refuses any
/// single allocation over `cap` bytes. Install it in a fuzz test binary:
/// `#[global_allocator] static A: MeteredAlloc = MeteredAlloc::new(HARD_CAP_DEFAULT);`
pub struct MeteredAlloc {
    cap: usize,
}

impl MeteredAlloc {
    /// A meter refusing single allocations over `cap` bytes.
    pub const fn new(cap: usize) -> MeteredAlloc {
        MeteredAlloc { cap }
    }

    fn over_cap(&self, size: usize) -> bool {
        if size <= self.cap {
            return false;
        }
        report_oversized(size, self.cap);
        true
    }
}

fn add(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get().wrapping_add(delta);
        l.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

/// Writes to stderr without allocating.
fn raw_write(bytes: &[u8]) {
    // SAFETY: writing a valid buffer to fd 2.
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
    }
}

fn raw_number(mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    raw_write(&buf[i..]);
}

fn report_oversized(size: usize, cap: usize) {
    raw_write(b"fuzz: an allocation of ");
    raw_number(size as u64);
    raw_write(b" bytes, over the cap of ");
    raw_number(cap as u64);
    raw_write(b" (unbounded allocation), in target ");
    raw_write(NAME.try_with(Cell::get).unwrap_or("").as_bytes());
    raw_write(b"; reproduce with DRAGONFLY_FUZZ_SEED=");
    raw_number(SEED.try_with(Cell::get).unwrap_or(0));
    raw_write(b" DRAGONFLY_FUZZ_CASE=");
    raw_number(CASE.try_with(Cell::get).unwrap_or(0));
    raw_write(b"\n");
}

// SAFETY: every call is forwarded to `System`; the bookkeeping allocates nothing.
unsafe impl GlobalAlloc for MeteredAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        METERED.store(true, Ordering::Relaxed);
        if self.over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        METERED.store(true, Ordering::Relaxed);
        if self.over_cap(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; the pointer came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.over_cap(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded; the pointer came from `System` with this layout.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Whether [`MeteredAlloc`] is the global allocator (it has seen an allocation).
pub(crate) fn metered() -> bool {
    METERED.load(Ordering::Relaxed)
}

pub(crate) fn set_current(name: &'static str, seed: u64) {
    let _ = NAME.try_with(|n| n.set(name));
    let _ = SEED.try_with(|s| s.set(seed));
}

pub(crate) fn set_case(case: u64) {
    let _ = CASE.try_with(|c| c.set(case));
}

/// Starts metering a case on this thread: returns the live bytes now.
pub(crate) fn begin_case() -> isize {
    let live = LIVE.try_with(|l| l.get()).unwrap_or(0);
    let _ = PEAK.try_with(|p| p.set(live));
    live
}

/// The most bytes this thread had allocated at once since [`begin_case`] returned `base`.
pub(crate) fn case_peak(base: isize) -> usize {
    let peak = PEAK.try_with(|p| p.get()).unwrap_or(0);
    peak.saturating_sub(base).max(0) as usize
}
