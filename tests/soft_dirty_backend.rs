//! The soft-dirty backend (`WW_BACKEND_SOFT_DIRTY`) against its contract.
//!
//! Every test starts with `require_soft_dirty!()`: it calls
//! `writewatch::init(BackendKind::SoftDirty)` and, if that fails, prints
//! `SKIP <test>: backend soft-dirty unavailable: <probe reason>` and returns —
//! unless `WW_REQUIRE_BACKENDS` names `soft-dirty`, then it fails. On a
//! kernel without `CONFIG_MEM_SOFT_DIRTY` (the dev box) every test says SKIP.
//!
//! The tests share one process, so each one's gets and resets clear the
//! soft-dirty bits of every other test's regions while they run: exactness
//! checks here also check isolation between regions. Tests that disturb
//! the whole process (a foreign `clear_refs`) run exclusively.

mod common;

use common::{exited_ok, fork, in_child, init_or_skip, peek, poke, ps};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use writewatch::{BackendKind, Protection, WatchedAlloc, WatchedRange, page_size};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Returns from the test (after printing SKIP) if soft-dirty is unavailable.
macro_rules! require_soft_dirty {
    () => {{
        fn f() {}
        let name = std::any::type_name_of_val(&f).trim_end_matches("::f");
        let name = name.rsplit("::").next().unwrap_or(name);
        if !init_or_skip(name, BackendKind::SoftDirty, false) {
            return;
        }
    }};
}

/// Tests that clear soft-dirty bits behind the library's back run alone.
static PROCESS: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    PROCESS.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    PROCESS.write().unwrap_or_else(|e| e.into_inner())
}

/// Written page indices of `[base + from*ps, base + to*ps)`, relative to
/// `base`, at most `cap`.
fn get(base: usize, from: usize, to: usize, cap: usize, reset: bool) -> Vec<usize> {
    let mut out = vec![0usize; cap];
    let n = writewatch::get_write_watch(reset, base + from * ps(), (to - from) * ps(), &mut out)
        .expect("get_write_watch");
    out[..n].iter().map(|a| (a - base) / ps()).collect()
}

/// All written pages of a region of `pages` pages.
fn all(base: usize, pages: usize, reset: bool) -> Vec<usize> {
    get(base, 0, pages, pages, reset)
}

/// Written runs `(first, end)` in page indices, at most `cap`.
fn runs(base: usize, from: usize, to: usize, cap: usize, reset: bool) -> Vec<(usize, usize)> {
    let mut out = vec![writewatch::WrittenRange::default(); cap];
    let n = writewatch::get_written_ranges(reset, base + from * ps(), (to - from) * ps(), &mut out)
        .expect("get_written_ranges");
    out[..n]
        .iter()
        .map(|r| ((r.start - base) / ps(), (r.start + r.size - base) / ps()))
        .collect()
}

fn is_superset(got: &[usize], want: &[usize]) -> bool {
    want.iter().all(|p| got.contains(p))
}

/// Prints the noise of one measurement: pages reported beyond those written.
fn noise(what: &str, got: &[usize], written: &[usize]) {
    let extra = got.iter().filter(|p| !written.contains(p)).count();
    println!(
        "NOISE {what}: {} reported for {} written -> {extra} extra (extra/written = {:.1})",
        got.len(),
        written.len(),
        extra as f64 / written.len().max(1) as f64
    );
}

/// A plain private anonymous read-write mapping, unmapped on drop.
struct Mmap {
    base: usize,
    len: usize,
}

impl Mmap {
    fn new(len: usize) -> Mmap {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: a new anonymous mapping where the kernel chooses.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mmap {
            base: p as usize,
            len,
        }
    }

    /// Exactly at `addr` (`MAP_FIXED_NOREPLACE`), or `None` if something
    /// is mapped there already.
    fn try_at(addr: usize, len: usize) -> Option<Mmap> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
        // SAFETY: a new anonymous mapping; NOREPLACE never replaces one.
        let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            println!(
                "note: cannot map at {addr:#x}: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        assert_eq!(p as usize, addr, "kernel ignored MAP_FIXED_NOREPLACE");
        Some(Mmap {
            base: p as usize,
            len,
        })
    }

    /// Takes `len` bytes at the start of a larger mapping we give up (the
    /// rest must have been unmapped by the caller).
    fn shrink(self, len: usize) -> Mmap {
        let m = Mmap {
            base: self.base,
            len,
        };
        std::mem::forget(self);
        m
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing borrows it.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// Watches `m` for the life of the returned value.
fn watch(m: &Mmap) -> WatchedRange {
    // SAFETY: `m` outlives the returned value in every test.
    unsafe { WatchedRange::new(m.base as *mut u8, m.len) }.expect("watch")
}

/// `read(2)` of `len` bytes from /dev/zero into `addr`; the raw result.
fn read_zero(addr: usize, len: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open("/dev/zero").unwrap();
    // SAFETY: the kernel writes at most `len` bytes at `addr`; the caller
    // passes memory it owns (an EFAULT is a result, not a crash).
    let n = unsafe { libc::read(f.as_raw_fd(), addr as *mut libc::c_void, len) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Permission string (`rw-p`) of the mapping holding `addr`.
fn perms(addr: usize) -> String {
    let maps = writewatch::sys::mm::mappings_in(addr, addr + 1).unwrap();
    String::from_utf8_lossy(&maps[0].perms).into_owned()
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Sets its flag when dropped, also while a test panics, so helper threads
/// in a `thread::scope` stop and the failure is reported instead of hanging.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Decrements its counter when dropped (a thread finished, or panicked).
struct DoneOnDrop<'a>(&'a AtomicUsize);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn iterations(default: usize) -> usize {
    std::env::var("WW_SD_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// 6. Probe
// ---------------------------------------------------------------------------

/// The probe's verdict, printed; an unavailable backend must say why.
#[test]
fn probe_says_why() {
    match writewatch::probe_backend(BackendKind::SoftDirty) {
        Ok(()) => println!("soft-dirty available (round trip works on a scratch page)"),
        Err(why) => {
            assert!(!why.is_empty());
            println!("soft-dirty unavailable here: {why}");
        }
    }
    require_soft_dirty!();
    assert_eq!(writewatch::init(BackendKind::SoftDirty), Ok(()));
}

// ---------------------------------------------------------------------------
// 3. Born clean, and the Win32 semantics on this backend
// ---------------------------------------------------------------------------

/// A fresh ww_alloc region reports nothing although its new VMA reads all
/// soft-dirty, and creating it loses no write of an older region.
#[test]
fn fresh_alloc_is_born_clean() {
    require_soft_dirty!();
    let _g = shared();
    let old = WatchedAlloc::new(16 * ps()).unwrap();
    poke(old.as_ptr() as usize + 3 * ps(), 1);
    let fresh = WatchedAlloc::new(64 * ps()).unwrap();
    assert_eq!(all(fresh.as_ptr() as usize, 64, false), Vec::<usize>::new());
    assert_eq!(
        all(old.as_ptr() as usize, 16, false),
        vec![3],
        "older region kept its write"
    );
    poke(fresh.as_ptr() as usize + 5 * ps(), 1);
    assert_eq!(all(fresh.as_ptr() as usize, 64, true), vec![5]);
    assert_eq!(all(fresh.as_ptr() as usize, 64, false), Vec::<usize>::new());
}

/// ww_watch of memory written before: earlier writes are not reported,
/// contents are kept, later writes are.
#[test]
fn watch_forgets_earlier_writes() {
    require_soft_dirty!();
    let _g = shared();
    let m = Mmap::new(16 * ps());
    for p in 0..16 {
        poke(m.base + p * ps(), p as u8 + 1);
    }
    let w = watch(&m);
    assert_eq!(all(m.base, 16, false), Vec::<usize>::new());
    assert_eq!(peek(m.base + 7 * ps()), 8, "contents kept");
    poke(m.base + 9 * ps(), 1);
    assert_eq!(all(m.base, 16, false), vec![9]);
    drop(w);
    poke(m.base + 10 * ps(), 1); // still writable after unwatch
}

/// The Win32 items the contract tests pin, on this backend.
#[test]
fn win32_semantics() {
    require_soft_dirty!();
    let _g = shared();
    let m = WatchedAlloc::new(16 * ps()).unwrap();
    let b = m.as_ptr() as usize;
    assert!(all(b, 16, false).is_empty(), "fresh region: 0 pages");
    poke(b + ps() + 1, 1);
    assert_eq!(all(b, 16, false), vec![1]);
    assert_eq!(
        all(b, 16, false),
        vec![1],
        "without reset the state is unchanged"
    );
    all(b, 16, true);
    // A write straddling a page boundary marks both pages.
    // SAFETY: 4 bytes inside the region, unaligned write allowed.
    unsafe { std::ptr::write_unaligned((b + 3 * ps() - 2) as *mut u32, 7) };
    assert_eq!(all(b, 16, true), vec![2, 3]);
    // Capacity with reset resets only the returned prefix.
    for p in [1, 2, 4] {
        poke(b + p * ps(), 1);
    }
    assert_eq!(get(b, 0, 16, 1, true), vec![1]);
    assert_eq!(all(b, 16, false), vec![2, 4]);
    // Sub-range get, and reset of a sub-range.
    assert_eq!(get(b, 3, 5, 16, false), vec![4]);
    poke(b + ps(), 1);
    m.reset(0..3 * ps()).unwrap();
    assert_eq!(all(b, 16, false), vec![4]);
    // Ranges: maximal runs, capacity in runs, reset of what is returned.
    all(b, 16, true);
    for p in [1, 2, 3, 6, 9, 10] {
        poke(b + p * ps(), 1);
    }
    assert_eq!(runs(b, 0, 16, 16, false), vec![(1, 4), (6, 7), (9, 11)]);
    assert_eq!(
        runs(b, 2, 10, 16, false),
        vec![(2, 4), (6, 7), (9, 10)],
        "clipped"
    );
    assert_eq!(runs(b, 0, 16, 2, true), vec![(1, 4), (6, 7)]);
    assert_eq!(all(b, 16, false), vec![9, 10]);
    all(b, 16, true);
    // Protection changes keep the state; a write made before RO stays.
    poke(b + 5 * ps(), 1);
    let mut m = m;
    m.protect(4 * ps()..8 * ps(), Protection::Read).unwrap();
    assert_eq!(all(b, 16, false), vec![5]);
    m.protect(4 * ps()..8 * ps(), Protection::None).unwrap();
    assert_eq!(
        all(b, 16, true),
        vec![5],
        "reported and reset while PROT_NONE"
    );
    m.protect(4 * ps()..8 * ps(), Protection::ReadWrite)
        .unwrap();
    assert!(
        all(b, 16, false).is_empty(),
        "protect marks nothing written"
    );
    poke(b + 6 * ps(), 1);
    assert_eq!(all(b, 16, false), vec![6]);
}

/// `ww_prepare_kernel_write` + read(2): the kernel's write works and is
/// reported; a get-with-reset makes the page clean again. Kernel writes
/// outside gaps need no preparation on this backend. Exclusive: another
/// test's gap would make the unprepared read(2) fail (see the next test).
#[test]
fn kernel_write_with_and_without_prepare() {
    require_soft_dirty!();
    let _g = exclusive();
    let m = WatchedAlloc::new(16 * ps()).unwrap();
    let b = m.as_ptr() as usize;
    writewatch::prepare_kernel_write(b + 2 * ps() + 100, 3 * ps()).unwrap();
    assert_eq!(read_zero(b + 2 * ps() + 100, 3 * ps()).unwrap(), 3 * ps());
    assert_eq!(all(b, 16, true), vec![2, 3, 4, 5]);
    assert!(
        all(b, 16, false).is_empty(),
        "prepared pages are reset like others"
    );
    assert_eq!(read_zero(b + 9 * ps(), 10).unwrap(), 10);
    assert_eq!(all(b, 16, true), vec![9]);
}

/// What a kernel write experiences while other threads reset: read(2) into
/// an unprepared watched page fails with EFAULT if it lands inside a gap
/// (counted and printed, may be 0); into a prepared page it never fails,
/// even though the prepared pages themselves are being reset, and every
/// read is reported.
#[test]
fn kernel_writes_during_gaps() {
    require_soft_dirty!();
    let _g = shared();
    let a = WatchedAlloc::new(16 * ps()).unwrap();
    let other = WatchedAlloc::new(16 * ps()).unwrap();
    let (ab, ob) = (a.as_ptr() as usize, other.as_ptr() as usize);
    let stop = AtomicBool::new(false);
    let n = iterations(2000);
    let (mut unprepared_efault, mut prepared_efault) = (0, 0);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                all(ob, 16, true);
                all(ab, 8, true); // resets A's prepared half too
            }
        });
        for i in 0..n {
            // Pages 8..16 unprepared, 0..8 prepared once up front.
            if i == 0 {
                writewatch::prepare_kernel_write(ab, 8 * ps()).unwrap();
            }
            match read_zero(ab + (8 + i % 8) * ps(), 64) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => unprepared_efault += 1,
                Err(e) => panic!("read(2): {e}"),
            }
            if read_zero(ab + (i % 8) * ps(), 64).is_err() {
                prepared_efault += 1;
            }
        }
    });
    println!(
        "read(2) during concurrent gaps: unprepared pages {unprepared_efault}/{n} EFAULT, \
         prepared pages {prepared_efault}/{n} EFAULT"
    );
    assert_eq!(prepared_efault, 0, "a prepared page must never EFAULT");
}

// ---------------------------------------------------------------------------
// 2. Exact partial reset: a model of three regions, random operations
// ---------------------------------------------------------------------------

/// Random writes, kernel writes, gets (pages and runs, with and without
/// reset, sub-ranges, small capacities), resets and protection changes on
/// two ww_alloc regions and one ww_watch region; after every step the
/// library must agree exactly with a model of what was written. Every get
/// or reset of one region is a process-wide clear, so this checks that
/// resetting one region (or part of it) never loses or invents a write
/// anywhere else.
#[test]
fn partial_reset_matches_model() {
    require_soft_dirty!();
    let _g = shared();
    let a = WatchedAlloc::new(48 * ps()).unwrap();
    let b = WatchedAlloc::new(40 * ps()).unwrap();
    let cm = Mmap::new(32 * ps());
    let c = watch(&cm);
    let mut regions: Vec<(usize, usize, Vec<bool>, Vec<bool>)> = vec![
        (a.as_ptr() as usize, 48, vec![false; 48], vec![false; 48]),
        (b.as_ptr() as usize, 40, vec![false; 40], vec![false; 40]),
        (c.as_ptr() as usize, 32, vec![false; 32], vec![false; 32]),
    ];
    let mut rng = Rng(0x5eed_50f7_d127_7001);
    for step in 0..iterations(400) {
        let which = rng.below(3);
        let (base, pages, model, ro) = &mut regions[which];
        let (base, pages) = (*base, *pages);
        let from = rng.below(pages);
        let to = from + 1 + rng.below(pages - from);
        let ctx = format!("step {step} region {which} [{from},{to})");
        match rng.below(8) {
            0 | 1 => {
                for _ in 0..1 + rng.below(4) {
                    let p = from + rng.below(to - from);
                    if !ro[p] {
                        poke(base + p * ps(), step as u8);
                        model[p] = true;
                    }
                }
            }
            2 | 3 => {
                let reset = rng.below(2) == 0;
                let cap = 1 + rng.below(to - from + 1);
                let want: Vec<usize> = (from..to).filter(|&p| model[p]).take(cap).collect();
                assert_eq!(
                    get(base, from, to, cap, reset),
                    want,
                    "{ctx} get cap {cap} reset {reset}"
                );
                if reset {
                    for p in want {
                        model[p] = false;
                    }
                }
            }
            4 => {
                let reset = rng.below(2) == 0;
                let cap = 1 + rng.below(4);
                let mut want = vec![];
                let mut p = from;
                while p < to && want.len() < cap {
                    if model[p] {
                        let s = p;
                        while p < to && model[p] {
                            p += 1;
                        }
                        want.push((s, p));
                    } else {
                        p += 1;
                    }
                }
                assert_eq!(
                    runs(base, from, to, cap, reset),
                    want,
                    "{ctx} runs cap {cap} reset {reset}"
                );
                if reset {
                    for (s, e) in want {
                        model[s..e].iter_mut().for_each(|x| *x = false);
                    }
                }
            }
            5 => {
                writewatch::reset_write_watch(base + from * ps(), (to - from) * ps()).unwrap();
                model[from..to].iter_mut().for_each(|x| *x = false);
            }
            6 => {
                // Prepare a range, then read(2) into the writable part of it.
                writewatch::prepare_kernel_write(base + from * ps(), (to - from) * ps()).unwrap();
                model[from..to].iter_mut().for_each(|x| *x = true);
                if let Some(p) = (from..to).find(|&p| !ro[p]) {
                    let end = (p..to).find(|&q| ro[q]).unwrap_or(to);
                    assert_eq!(
                        read_zero(base + p * ps(), (end - p) * ps()).unwrap(),
                        (end - p) * ps()
                    );
                }
            }
            _ => {
                let make_ro = rng.below(2) == 0;
                let prot = if make_ro {
                    libc::PROT_READ
                } else {
                    libc::PROT_READ | libc::PROT_WRITE
                };
                // SAFETY: watched memory no Rust reference covers.
                unsafe { writewatch::protect(base + from * ps(), (to - from) * ps(), prot) }
                    .unwrap();
                ro[from..to].iter_mut().for_each(|x| *x = make_ro);
            }
        }
    }
    for (i, (base, pages, model, _)) in regions.iter().enumerate() {
        let want: Vec<usize> = (0..*pages).filter(|&p| model[p]).collect();
        assert_eq!(all(*base, *pages, false), want, "final state of region {i}");
        // SAFETY: as above; back to read-write for the drops.
        unsafe { writewatch::protect(*base, pages * ps(), libc::PROT_READ | libc::PROT_WRITE) }
            .unwrap();
    }
}

/// The gap leaves the caller's protection exactly as it was: PROT_NONE,
/// PROT_READ and PROT_EXEC pages come back as they were, and only
/// read-write pages are ever made read-only for the gap. Exclusive: while
/// another test's gap is open, /proc/self/maps shows our read-write pages
/// read-only (that is the gap).
#[test]
fn gap_restores_caller_protection() {
    require_soft_dirty!();
    let _g = exclusive();
    let mut m = WatchedAlloc::new(8 * ps()).unwrap();
    let b = m.as_ptr() as usize;
    poke(b + 4 * ps(), 1);
    m.protect(ps()..2 * ps(), Protection::None).unwrap();
    m.protect(2 * ps()..3 * ps(), Protection::Read).unwrap();
    // SAFETY: our own watched page.
    unsafe {
        writewatch::protect(
            b + 5 * ps(),
            ps(),
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        )
    }
    .unwrap();
    for _ in 0..3 {
        assert!(all(b, 8, true).len() <= 1);
        assert_eq!(perms(b), "rw-p");
        assert_eq!(perms(b + ps()), "---p");
        assert_eq!(perms(b + 2 * ps()), "r--p");
        assert_eq!(perms(b + 3 * ps()), "rw-p");
        assert_eq!(perms(b + 5 * ps()), "rwxp");
        poke(b + 5 * ps(), 1);
        assert_eq!(all(b, 8, false), vec![5]);
    }
    m.protect(.., Protection::ReadWrite).unwrap();
}

// ---------------------------------------------------------------------------
// 9. Concurrency: writers in two regions vs get-with-reset on one of them
// ---------------------------------------------------------------------------

/// Writer threads write random pages of region A and region B, each page at
/// most once per round; a kernel-write thread does prepare + read(2) into
/// the last pages of A and B; meanwhile this thread does get-with-reset on
/// A with small capacities (each one a process-wide clear with a gap). At
/// the end of a round: every page written in A was returned by some get of
/// that round, every page written in B is reported by a final get of B,
/// every write's value is in memory (the retried writes landed), and
/// read(2) never failed although A's prepared pages are reset under it.
/// Extra pages are counted and printed.
#[test]
fn concurrent_writers_two_regions_no_lost_write() {
    require_soft_dirty!();
    let _g = shared();
    const PAGES: usize = 64;
    const KPAGES: usize = 4; // the last pages of A and B: kernel writes only
    let a = WatchedAlloc::new(PAGES * ps()).unwrap();
    let b = WatchedAlloc::new(PAGES * ps()).unwrap();
    let (ab, bb) = (a.as_ptr() as usize, b.as_ptr() as usize);
    let faults0 = writewatch::stats().faults_handled;
    let (mut extra_a, mut extra_b, mut gets, mut total) = (0, 0, 0, 0);
    let rounds = iterations(60);
    for round in 0..rounds {
        let wa: Vec<AtomicBool> = (0..PAGES).map(|_| AtomicBool::new(false)).collect();
        let wb: Vec<AtomicBool> = (0..PAGES).map(|_| AtomicBool::new(false)).collect();
        let running = AtomicUsize::new(5);
        let value = (round % 250) as u8 + 1;
        let mut seen = [false; PAGES];
        std::thread::scope(|s| {
            for (base, written) in [(ab, &wa), (bb, &wb)] {
                for k in 0..2 {
                    let running = &running;
                    s.spawn(move || {
                        let _done = DoneOnDrop(running);
                        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (round * 4 + k + base) as u64);
                        let limit = PAGES - KPAGES;
                        for p in (k..limit).step_by(2) {
                            if rng.below(3) != 0 {
                                poke(base + p * ps() + 8, value);
                                written[p].store(true, Ordering::Release);
                            }
                            if rng.below(4) == 0 {
                                std::thread::yield_now();
                            }
                        }
                    });
                }
            }
            let (running, wa, wb) = (&running, &wa, &wb);
            s.spawn(move || {
                let _done = DoneOnDrop(running);
                // read(2) from a pipe into prepared pages of A (being reset
                // concurrently) and B; every read brings new bytes.
                let mut fds = [0; 2];
                // SAFETY: room for two descriptors.
                assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
                for i in 0..2 * KPAGES {
                    let (base, written) = if i % 2 == 0 { (ab, wa) } else { (bb, wb) };
                    let p = PAGES - KPAGES + (i / 2) % KPAGES;
                    let addr = base + p * ps() + 16;
                    let bytes = (((round as u64) << 8) | i as u64).to_ne_bytes();
                    // SAFETY: our pipe, our buffer.
                    assert_eq!(unsafe { libc::write(fds[1], bytes.as_ptr().cast(), 8) }, 8);
                    writewatch::prepare_kernel_write(addr, 8).unwrap();
                    // SAFETY: 8 bytes inside our region.
                    let n = unsafe { libc::read(fds[0], addr as *mut libc::c_void, 8) };
                    let err = std::io::Error::last_os_error();
                    assert_eq!(n, 8, "read(2) into a prepared page: {err}");
                    written[p].store(true, Ordering::Release);
                    std::thread::yield_now();
                }
                // SAFETY: closing our pipe.
                unsafe { libc::close(fds[0]) };
                // SAFETY: as above.
                unsafe { libc::close(fds[1]) };
            });
            let mut rng = Rng(0xabcd_ef01 ^ round as u64);
            while running.load(Ordering::Acquire) > 0 {
                let cap = 1 + rng.below(8);
                for p in get(ab, 0, PAGES, cap, true) {
                    seen[p] = true;
                }
                gets += 1;
            }
        });
        for p in all(ab, PAGES, true) {
            seen[p] = true;
        }
        let b_seen = all(bb, PAGES, true);
        for p in 0..PAGES {
            if wa[p].load(Ordering::Acquire) {
                total += 1;
                assert!(seen[p], "round {round}: write to A page {p} lost");
                if p < PAGES - KPAGES {
                    let v = peek(ab + p * ps() + 8);
                    assert_eq!(v, value, "round {round}: A page {p} value");
                }
            } else if seen[p] {
                extra_a += 1;
            }
            if wb[p].load(Ordering::Acquire) {
                total += 1;
                assert!(
                    b_seen.contains(&p),
                    "round {round}: write to B page {p} lost"
                );
                if p < PAGES - KPAGES {
                    assert_eq!(
                        peek(bb + p * ps() + 8),
                        value,
                        "round {round}: B page {p} value"
                    );
                }
            } else if b_seen.contains(&p) {
                extra_b += 1;
            }
        }
    }
    let faults = writewatch::stats().faults_handled - faults0;
    println!(
        "{rounds} rounds, {gets} gets-with-reset on A, {total} writes checked, no write lost; \
         extra pages: A {extra_a}, B {extra_b}; writer faults held by gaps: {faults}"
    );
}

/// Prepared (sticky) pages are never write-protected by a gap, so the gap
/// compares their content instead. A writer keeps changing prepared pages
/// while this thread resets them over and over; oracle as in the kernel's
/// transact test: after a page is returned (and reset) its content is
/// recorded, and any later change must be reported by a later call.
#[test]
fn prepared_pages_stay_exact_under_writes() {
    require_soft_dirty!();
    let _g = shared();
    const PAGES: usize = 8;
    let a = WatchedAlloc::new(PAGES * ps()).unwrap();
    let base = a.as_ptr() as usize;
    let word = |p: usize| {
        // SAFETY: page-aligned, inside our region, only accessed atomically.
        unsafe { &*((base + p * ps()) as *const AtomicU64) }
    };
    writewatch::prepare_kernel_write(base, PAGES * ps()).unwrap();
    assert_eq!(all(base, PAGES, true), (0..PAGES).collect::<Vec<_>>());
    let mut recorded: Vec<u64> = (0..PAGES).map(|p| word(p).load(Ordering::SeqCst)).collect();
    let stop = AtomicBool::new(false);
    let (mut gets, mut reported) = (0, 0);
    let start = Instant::now();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            let mut rng = Rng(99);
            while !stop.load(Ordering::Acquire) {
                word(rng.below(PAGES)).fetch_add(1, Ordering::SeqCst);
                if rng.below(8) == 0 {
                    std::thread::yield_now();
                }
            }
        });
        while gets < iterations(300) && start.elapsed() < Duration::from_secs(60) {
            let got = get(base, 0, PAGES, 1 + gets % PAGES, true);
            reported += got.len();
            for p in got {
                recorded[p] = word(p).load(Ordering::SeqCst);
            }
            gets += 1;
        }
    });
    let last = all(base, PAGES, false);
    for (p, &rec) in recorded.iter().enumerate() {
        if word(p).load(Ordering::SeqCst) != rec {
            assert!(
                last.contains(&p),
                "page {p} changed after its last report but is not reported"
            );
        }
    }
    println!(
        "{gets} gets-with-reset over prepared pages under a writer: {reported} pages reported, none lost"
    );
}

/// A writer hammering a large region while this thread resets it: writes
/// that hit a gap are held in the fault handler (counted in
/// `faults_handled`) and retried, and none is lost.
#[test]
fn writer_is_held_during_gap_and_retried() {
    require_soft_dirty!();
    let _g = shared();
    const PAGES: usize = 4096;
    let a = WatchedAlloc::new(PAGES * ps()).unwrap();
    let base = a.as_ptr() as usize;
    let faults0 = writewatch::stats().faults_handled;
    let stop = AtomicBool::new(false);
    let seq = AtomicU64::new(0);
    let start = Instant::now();
    let (mut resets, mut last_seq) = (0, 0);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            let mut rng = Rng(77);
            while !stop.load(Ordering::Acquire) {
                let p = rng.below(PAGES);
                let n = seq.fetch_add(1, Ordering::AcqRel) + 1;
                // SAFETY: an aligned u64 inside our read-write region.
                unsafe { std::ptr::write_volatile((base + p * ps()) as *mut u64, n) };
            }
        });
        while start.elapsed() < Duration::from_secs(60)
            && (writewatch::stats().faults_handled - faults0 < 20 || resets < 20)
        {
            all(base, PAGES, true);
            // Every write that got a sequence number after this reset
            // returned happened after it, so must be reported later.
            last_seq = seq.load(Ordering::Acquire);
            resets += 1;
        }
    });
    let got = all(base, PAGES, false);
    for p in 0..PAGES {
        // SAFETY: an aligned u64 inside our region; the writer has stopped.
        let v = unsafe { std::ptr::read_volatile((base + p * ps()) as *const u64) };
        assert!(
            v <= last_seq || got.contains(&p),
            "write #{v} to page {p} lost"
        );
    }
    // And tracking is exact once writers stop.
    all(base, PAGES, true);
    poke(base + 17 * ps(), 1);
    assert_eq!(all(base, PAGES, false), vec![17]);
    let faults = writewatch::stats().faults_handled - faults0;
    println!("{resets} resets of {PAGES} pages under a writer: {faults} faults held and retried");
    assert!(
        faults > 0,
        "the writer never hit a gap in {resets} resets: gap path untested"
    );
}

/// A host signal handler that writes watched memory, delivered over and
/// over to the thread doing get-with-reset: the clearing thread blocks
/// signals while it holds the gap, so the handler runs after it and the
/// process does not deadlock; the handler's writes are reported.
#[test]
fn host_signal_handler_on_clearing_thread() {
    require_soft_dirty!();
    let _g = shared();
    static TARGET: AtomicUsize = AtomicUsize::new(0);
    static HITS: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn on_usr1(_: libc::c_int) {
        let base = TARGET.load(Ordering::Acquire);
        if base != 0 {
            let n = HITS.fetch_add(1, Ordering::AcqRel);
            // SAFETY: the watched region stays mapped while TARGET is set.
            unsafe { std::ptr::write_volatile((base + (n % 16) * page_size()) as *mut u8, 1) };
        }
    }
    let c = WatchedAlloc::new(16 * ps()).unwrap();
    let d = WatchedAlloc::new(16 * ps()).unwrap();
    TARGET.store(c.as_ptr() as usize, Ordering::Release);
    // SAFETY: installing a plain handler for SIGUSR1 (no one else uses it here).
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            on_usr1 as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let dd = d.as_ptr() as usize;
    let worker = std::thread::spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() }).unwrap();
        for i in 0..300 {
            poke(dd + (i % 16) * ps(), 1);
            all(dd, 16, true);
        }
    });
    let thread = rx.recv().unwrap();
    let start = Instant::now();
    while !worker.is_finished() {
        // SAFETY: the worker thread is alive until joined below.
        unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_micros(200));
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "deadlock: worker stuck"
        );
    }
    worker.join().unwrap();
    TARGET.store(0, Ordering::Release);
    let hits = HITS.load(Ordering::Acquire);
    let got = all(c.as_ptr() as usize, 16, false);
    println!("{hits} signal-handler writes during 300 gets-with-reset; reported pages {got:?}");
    assert!(hits > 0);
    assert_eq!(
        got.len(),
        hits.min(16),
        "every page the handler wrote is reported"
    );
}

// ---------------------------------------------------------------------------
// 4. Never under-report: the traps
// ---------------------------------------------------------------------------

/// mprotect splits a region's VMA and a later mprotect rejoins it; writes
/// before, between and after are all reported, through gaps too.
#[test]
fn trap_mprotect_split_and_rejoin() {
    require_soft_dirty!();
    let _g = shared();
    let m = Mmap::new(16 * ps());
    let w = watch(&m);
    let b = m.base;
    poke(b + ps(), 1);
    // SAFETY: our watched memory; nothing references pages 4..8.
    unsafe { writewatch::protect(b + 4 * ps(), 4 * ps(), libc::PROT_READ) }.unwrap();
    poke(b + 10 * ps(), 1);
    assert_eq!(all(b, 16, false), vec![1, 10]);
    assert_eq!(get(b, 0, 16, 1, true), vec![1], "gap while split");
    poke(b + 12 * ps(), 1);
    // SAFETY: as above.
    unsafe { writewatch::protect(b + 4 * ps(), 4 * ps(), libc::PROT_READ | libc::PROT_WRITE) }
        .unwrap();
    poke(b + 5 * ps(), 1);
    let got = all(b, 16, false);
    noise("mprotect split+rejoin", &got, &[5, 10, 12]);
    assert!(is_superset(&got, &[5, 10, 12]), "{got:?}");
    all(b, 16, true);
    poke(b + 6 * ps(), 1);
    assert_eq!(all(b, 16, false), vec![6], "exact again after a reset");
    drop(w);
}

/// MAP_FIXED maps new memory over part of a ww_watch region: the new VMA
/// is VM_SOFTDIRTY, so the replaced pages over-report until the next
/// reset; nothing is lost, and tracking is exact again afterwards.
#[test]
fn trap_map_fixed_over_part_of_region() {
    require_soft_dirty!();
    let _g = shared();
    let m = Mmap::new(16 * ps());
    let w = watch(&m);
    let b = m.base;
    poke(b + 5 * ps(), 1);
    poke(b + 12 * ps(), 1);
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
    // SAFETY: replaces pages 4..8 of our own mapping; nothing references them.
    let p = unsafe {
        libc::mmap(
            (b + 4 * ps()) as *mut libc::c_void,
            4 * ps(),
            prot,
            flags,
            -1,
            0,
        )
    };
    assert_eq!(p as usize, b + 4 * ps());
    poke(b + 6 * ps(), 1);
    let got = all(b, 16, false);
    noise("MAP_FIXED over pages 4..8", &got, &[5, 6, 12]);
    assert!(is_superset(&got, &[5, 6, 12]), "{got:?}");
    all(b, 16, true);
    assert!(all(b, 16, false).is_empty(), "clean after a reset");
    poke(b + 7 * ps(), 1);
    assert_eq!(all(b, 16, false), vec![7]);
    drop(w);
}

/// mremap moves pages into a region (over part of it, and growing the
/// mapping in place): moved PTEs and new VMAs read soft-dirty, so the moved
/// pages over-report; no write is lost, and a reset makes it exact again.
#[test]
fn trap_mremap() {
    require_soft_dirty!();
    let _g = shared();
    // Room to grow the mapping in place.
    let m = Mmap::new(32 * ps());
    // SAFETY: unmaps the upper half of our own mapping.
    unsafe { libc::munmap((m.base + 16 * ps()) as *mut libc::c_void, 16 * ps()) };
    let m = m.shrink(16 * ps());
    let b = m.base;
    let w = watch(&m);
    poke(b + 9 * ps(), 1);
    let src = Mmap::new(2 * ps());
    poke(src.base, 42);
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    // SAFETY: moves our 2-page mapping over pages 2..4 of our region.
    let p = unsafe { libc::mremap(src.base as *mut _, 2 * ps(), 2 * ps(), flags, b + 2 * ps()) };
    assert_eq!(
        p as usize,
        b + 2 * ps(),
        "mremap: {}",
        std::io::Error::last_os_error()
    );
    std::mem::forget(src);
    assert_eq!(peek(b + 2 * ps()), 42);
    poke(b + 3 * ps(), 1);
    let got = all(b, 16, false);
    noise("mremap 2 pages over pages 2..4", &got, &[3, 9]);
    assert!(is_superset(&got, &[3, 9]), "{got:?}");
    all(b, 16, true);
    assert!(all(b, 16, false).is_empty());
    poke(b + 2 * ps(), 1);
    // Grow the mapping in place past the region (its last VMA: mremap's
    // old range must lie in one VMA, and pages 2..4 are another now). Not
    // while another test's gap may have the region read-only: the grown
    // part would be read-only until that gap ends, and the write to page 20
    // below (outside the region) would crash (see the module docs).
    let _alone = {
        drop(_g);
        exclusive()
    };
    let last = b + 4 * ps();
    // SAFETY: grows our own mapping into the hole we made; no move.
    let g = unsafe { libc::mremap(last as *mut _, 12 * ps(), 28 * ps(), 0) };
    assert_eq!(
        g as usize,
        last,
        "mremap grow: {}",
        std::io::Error::last_os_error()
    );
    poke(b + 11 * ps(), 1);
    poke(b + 20 * ps(), 1); // outside the region
    let got = all(b, 16, false);
    noise("mremap grow in place", &got, &[2, 11]);
    assert!(is_superset(&got, &[2, 11]), "{got:?}");
    all(b, 16, true);
    poke(b + 13 * ps(), 1);
    assert_eq!(all(b, 16, false), vec![13]);
    drop(w);
    drop(m.shrink(32 * ps())); // the mapping grew
}

/// Decommit/recommit and moves racing other threads' resets: this thread
/// maps fresh memory over a page of a ww_watch region (`MAP_FIXED`, or
/// `mremap` of another mapping) and writes it, while another thread keeps
/// resetting a different region (every reset is a process-wide clear in a
/// gap). A remap inside a gap lands unprotected; its write must still be
/// reported.
#[test]
fn remap_during_gap_loses_no_write() {
    require_soft_dirty!();
    let _g = shared();
    const PAGES: usize = 8;
    let m = Mmap::new(PAGES * ps());
    let w = watch(&m);
    let other = WatchedAlloc::new(4 * ps()).unwrap();
    let ob = other.as_ptr() as usize;
    let stop = AtomicBool::new(false);
    let n = iterations(1500);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                poke(ob, 1);
                all(ob, 4, true);
            }
        });
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        for i in 0..n {
            let p = 1 + i % (PAGES - 2);
            let addr = m.base + p * ps();
            all(m.base, PAGES, true);
            if i % 2 == 0 {
                let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
                // SAFETY: replaces one page of our own mapping.
                let q = unsafe { libc::mmap(addr as *mut _, ps(), prot, flags, -1, 0) };
                assert_eq!(q as usize, addr);
            } else {
                let src = Mmap::new(ps());
                let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
                // SAFETY: moves our one-page mapping over one page of ours.
                let q = unsafe { libc::mremap(src.base as *mut _, ps(), ps(), flags, addr) };
                assert_eq!(q as usize, addr);
                std::mem::forget(src);
            }
            poke(addr + 8, i as u8);
            let got = all(m.base, PAGES, false);
            assert!(
                got.contains(&p),
                "iteration {i}: write after remap of page {p} lost: {got:?}"
            );
        }
    });
    println!("{n} remaps + writes racing resets of another region: none lost");
    drop(w);
}

/// A watched mapping grown in place while another thread's gap has it
/// read-only grows read-only; when that gap closes the grown part must get
/// the caller's protection back (read-write here), not stay read-only.
#[test]
fn grown_mapping_gets_its_protection_back() {
    require_soft_dirty!();
    let _g = shared();
    const PAGES: usize = 4;
    let m = Mmap::new((PAGES + 1) * ps());
    let tail = m.base + PAGES * ps();
    // SAFETY: unmaps the last page of our own mapping.
    unsafe { libc::munmap(tail as *mut libc::c_void, ps()) };
    let m = m.shrink(PAGES * ps());
    let w = watch(&m);
    let other = WatchedAlloc::new(ps()).unwrap();
    let ob = other.as_ptr() as usize;
    let stop = AtomicBool::new(false);
    let (mut grown, mut busy) = (0, 0);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                all(ob, 1, true);
            }
        });
        for _ in 0..iterations(300) {
            // SAFETY: grows our own mapping into the page we unmapped; no move.
            let g = unsafe { libc::mremap(m.base as *mut _, PAGES * ps(), (PAGES + 1) * ps(), 0) };
            if g == libc::MAP_FAILED {
                busy += 1; // someone mapped the page after ours meanwhile
                continue;
            }
            grown += 1;
            // Our own reset waits for any gap that overlapped the growth.
            all(m.base, PAGES, true);
            assert_eq!(
                perms(tail),
                "rw-p",
                "grown part left with the gap's protection"
            );
            poke(tail, 1);
            // SAFETY: shrinks our mapping back (the grown page is not watched).
            unsafe { libc::munmap(tail as *mut libc::c_void, ps()) };
        }
    });
    println!(
        "{grown} in-place growths racing resets: grown part always read-write afterwards ({busy} skipped)"
    );
    drop(w);
}

/// Huge pages that already back ww_watch memory (THP=always on Debian):
/// soft-dirty is per 2 MiB then, so one write reports up to 512 pages, but
/// never fewer than were written.
#[test]
fn trap_transparent_huge_page() {
    require_soft_dirty!();
    let _g = shared();
    const HUGE: usize = 2 << 20;
    let m = Mmap::new(2 * HUGE);
    let aligned = (m.base + HUGE - 1) & !(HUGE - 1);
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(aligned as *mut libc::c_void, HUGE, libc::MADV_HUGEPAGE) };
    for off in (0..HUGE).step_by(ps()) {
        poke(aligned + off, 1);
    }
    let thp_kb = anon_huge_kb(aligned);
    println!("THP backing the 2 MiB before watch: AnonHugePages {thp_kb} kB");
    let pages = HUGE / ps();
    // SAFETY: `m` outlives `w`.
    let w = unsafe { WatchedRange::new(aligned as *mut u8, HUGE) }.unwrap();
    assert!(all(aligned, pages, false).is_empty(), "born clean");
    poke(aligned + 7 * ps(), 2);
    let got = all(aligned, pages, false);
    noise(&format!("THP ({thp_kb} kB huge) one write"), &got, &[7]);
    assert!(got.contains(&7));
    all(aligned, pages, true);
    assert!(all(aligned, pages, false).is_empty());
    poke(aligned + 100 * ps(), 2);
    poke(aligned + 300 * ps(), 2);
    let got = all(aligned, pages, false);
    noise("THP after a reset, two writes", &got, &[100, 300]);
    assert!(is_superset(&got, &[100, 300]), "{} pages", got.len());
    drop(w);
}

/// `AnonHugePages` of the mapping holding `addr` (from /proc/self/smaps).
fn anon_huge_kb(addr: usize) -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((lo, hi)) = range.split_once('-')
            && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        {
            inside = lo <= addr && addr < hi;
        } else if inside && let Some(v) = line.strip_prefix("AnonHugePages:") {
            return v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        }
    }
    0
}

// ---------------------------------------------------------------------------
// 5. Guard padding pays off, measured
// ---------------------------------------------------------------------------

/// A neighbour mapped directly after a region: on 6.1-era kernels a new
/// mapping that merges with an existing VMA makes the whole merged VMA
/// VM_SOFTDIRTY, so every page of the region reads written. Measured three
/// ways and printed as NOISE lines: a raw mapping (no library, read through
/// pagemap after one of our clears), an unguarded ww_watch region, and a
/// guard-padded ww_alloc region (which must stay exact).
#[test]
fn guard_padding_noise() {
    require_soft_dirty!();
    // Exclusive: another test's clear would wipe the raw mapping's bits.
    let _g = exclusive();
    const N: usize = 64;
    let ps = ps();
    // Unrelated region whose resets give us clears.
    let clearer = WatchedAlloc::new(ps).unwrap();
    let clear = || drop(all(clearer.as_ptr() as usize, 1, true));

    // (a) A raw mapping, not watched: the kernel's behaviour itself.
    let raw = Mmap::new((N + 1) * ps);
    // SAFETY: unmaps the last page of our own mapping, leaving a hole.
    unsafe { libc::munmap((raw.base + N * ps) as *mut libc::c_void, ps) };
    for p in 0..N {
        poke(raw.base + p * ps, 1); // populate
    }
    clear();
    poke(raw.base + 5 * ps, 2);
    let raw_before = soft_dirty_pages(raw.base, N);
    noise("raw mapping, before neighbour", &raw_before, &[5]);
    assert_eq!(raw_before, vec![5]);
    if let Some(nb) = Mmap::try_at(raw.base + N * ps, ps) {
        let raw_after = soft_dirty_pages(raw.base, N);
        noise(
            "raw mapping + neighbour mmap'd right after",
            &raw_after,
            &[5],
        );
        assert!(raw_after.contains(&5));
        drop(nb);
    }
    drop(raw.shrink(N * ps));

    // (b) An unguarded ww_watch region (the API gives it VM_NOHUGEPAGE).
    let m = Mmap::new((N + 1) * ps);
    // SAFETY: as above.
    unsafe { libc::munmap((m.base + N * ps) as *mut libc::c_void, ps) };
    let mw = m.shrink(N * ps);
    let w = watch(&mw);
    poke(mw.base + 5 * ps, 1);
    if let Some(nb) = Mmap::try_at(mw.base + N * ps, ps) {
        let got = all(mw.base, N, false);
        noise(
            "ww_watch (unguarded) + neighbour mmap'd right after",
            &got,
            &[5],
        );
        assert!(got.contains(&5));
        // Give the neighbour the region's VMA flags: now it merges (madvise path).
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(nb.base as *mut libc::c_void, ps, libc::MADV_NOHUGEPAGE) };
        poke(mw.base + 9 * ps, 1);
        let got = all(mw.base, N, false);
        noise(
            "ww_watch (unguarded) + neighbour merged by madvise",
            &got,
            &[5, 9],
        );
        assert!(is_superset(&got, &[5, 9]));
        drop(w);
        drop(nb);
    }
    drop(mw);

    // (c) A ww_alloc region: guards keep any neighbour out.
    let a = WatchedAlloc::new(N * ps).unwrap();
    let ab = a.as_ptr() as usize;
    poke(ab + 5 * ps, 1);
    // Right after the upper guard (if free; if not, a neighbour is there).
    let nb = Mmap::try_at(ab + (N + 1) * ps, ps);
    if let Some(nb) = &nb {
        // SAFETY: as above.
        unsafe { libc::madvise(nb.base as *mut libc::c_void, ps, libc::MADV_NOHUGEPAGE) };
    }
    let got = all(ab, N, false);
    noise(
        "ww_alloc (guarded) + neighbour mmap'd right after the guard",
        &got,
        &[5],
    );
    assert_eq!(got, vec![5], "guard padding keeps the region exact");
}

/// Soft-dirty page indices of an unwatched mapping, through pagemap.
fn soft_dirty_pages(base: usize, pages: usize) -> Vec<usize> {
    let mut e = vec![0u64; pages];
    writewatch::sys::pagemap::read_entries(base, ps(), &mut e).unwrap();
    (0..pages)
        .filter(|&p| e[p] & writewatch::sys::uapi::PM_SOFT_DIRTY != 0)
        .collect()
}

// ---------------------------------------------------------------------------
// 7. Interference: a clear we did not make
// ---------------------------------------------------------------------------

/// Someone else writes `clear_refs` (another soft-dirty user in the
/// process, or CRIU from outside): our sentinel reads clean at the next
/// harvest, so every region is reported fully written instead of losing
/// the writes the foreign clear wiped; after a reset tracking is exact.
#[test]
fn foreign_clear_reports_everything() {
    require_soft_dirty!();
    let _g = exclusive();
    let a = WatchedAlloc::new(16 * ps()).unwrap();
    let b = WatchedAlloc::new(8 * ps()).unwrap();
    let (ab, bb) = (a.as_ptr() as usize, b.as_ptr() as usize);
    poke(ab + 3 * ps(), 1);
    poke(bb + 5 * ps(), 1);
    std::fs::write("/proc/self/clear_refs", "4").unwrap();
    let got = all(ab, 16, false);
    noise("after a foreign clear, region A", &got, &[3]);
    assert_eq!(got, (0..16).collect::<Vec<_>>(), "A reported fully written");
    assert_eq!(all(bb, 8, false), (0..8).collect::<Vec<_>>(), "B too");
    all(ab, 16, true);
    all(bb, 8, true);
    poke(ab + 2 * ps(), 1);
    assert_eq!(all(ab, 16, false), vec![2]);
    assert!(all(bb, 8, false).is_empty());
    // Detected at a get-with-reset as well.
    std::fs::write("/proc/self/clear_refs", "4").unwrap();
    assert_eq!(get(bb, 0, 8, 3, true), vec![0, 1, 2]);
    assert_eq!(all(bb, 8, false), (3..8).collect::<Vec<_>>());
    assert_eq!(all(ab, 16, false), (0..16).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------
// 8. Fork
// ---------------------------------------------------------------------------

/// Runs `fork_scenario` alone in a fresh copy of this test binary (a
/// multi-threaded test process must not fork), and checks it passed.
#[test]
fn fork_child_never_misses_a_write() {
    require_soft_dirty!();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fork_scenario",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WW_SD_FORK_SCENARIO", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "fork scenario failed");
    assert!(
        text.contains("fork scenario passed"),
        "scenario did not run"
    );
}

/// Helper of `fork_child_never_misses_a_write`; does nothing unless run by it.
#[test]
fn fork_scenario() {
    if std::env::var("WW_SD_FORK_SCENARIO").is_err() {
        println!("fork_scenario: helper, runs only inside fork_child_never_misses_a_write");
        return;
    }
    require_soft_dirty!();
    let a = WatchedAlloc::new(16 * ps()).unwrap();
    let b = a.as_ptr() as usize;
    poke(b + ps(), 1);
    assert_eq!(all(b, 16, true), vec![1]);
    poke(b + 2 * ps(), 1); // written before the fork, not yet reported
    // This process has one thread here (the harness runs this test alone
    // with --test-threads=1), so the child may run Rust code.
    let status = in_child(fork, || {
        poke(b + 5 * ps(), 1);
        let got = all(b, 16, false);
        assert!(is_superset(&got, &[2, 5]), "child first get {got:?}");
        noise("child's first get after fork", &got, &[2, 5]);
        all(b, 16, true);
        poke(b + 7 * ps(), 1);
        assert_eq!(all(b, 16, false), vec![7], "child exact after a reset");
        0
    });
    assert!(exited_ok(status), "child failed: {status:#x}");
    assert_eq!(
        all(b, 16, false),
        vec![2],
        "parent unaffected by the child's resets"
    );
    println!("fork scenario passed");
}
