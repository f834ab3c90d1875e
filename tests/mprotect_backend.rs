//! The mprotect backend's own contract: faults caught and re-armed, no
//! lost write when writers race get-with-reset (and `ww_protect`), the
//! caller's protection kept, kernel writes after `prepare_kernel_write`,
//! map-count exhaustion, fork.
//!
//! Every test forces the mprotect backend with `init(Mprotect)` before the
//! process's first allocation (so this file tests mprotect whatever
//! `WW_BACKEND` says) and prints `SKIP <test>: <reason>` if that fails —
//! a failure instead when `WW_REQUIRE_BACKENDS` names mprotect.
//!
//! Tests that need a process of their own (fork, map-count exhaustion)
//! re-run this binary on one `#[ignore]`d `child_*` body with
//! `WW_TEST_CHILD=1`, and check its exit status.

mod common;

use common::{exited_ok, fork, in_child, init_or_skip, peek, poke, ps};

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::*};
use std::time::Instant;

use writewatch::{BackendKind, Protection, WatchedAlloc};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

macro_rules! require_mprotect {
    ($name:literal) => {
        if !init_or_skip($name, BackendKind::Mprotect, true) {
            return;
        }
    };
}

/// Written page indices of `[base, base+len)` relative to `base`.
fn written(base: usize, len: usize, reset: bool) -> Vec<usize> {
    let mut out = vec![0usize; len / ps() + 1];
    let n = writewatch::get_write_watch(reset, base, len, &mut out).expect("get_write_watch");
    out[..n].iter().map(|a| (a - base) / ps()).collect()
}

/// Lines of /proc/self/maps: the process's VMA count.
fn map_count() -> usize {
    std::fs::read("/proc/self/maps")
        .expect("maps")
        .iter()
        .filter(|&&c| c == b'\n')
        .count()
}

fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .expect("max_map_count")
        .trim()
        .parse()
        .unwrap()
}

/// The perms field ("rw-p") of the mapping containing `addr`.
fn perms_at(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let (range, rest) = line.split_once(' ').unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).unwrap(),
            usize::from_str_radix(hi, 16).unwrap(),
        );
        if lo <= addr && addr < hi {
            return rest[..4].to_string();
        }
    }
    panic!("{addr:#x} not mapped");
}

/// An anonymous mapping, unmapped on drop.
struct Mapping {
    base: usize,
    len: usize,
}

impl Mapping {
    fn new(len: usize, prot: i32) -> Mapping {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a fresh anonymous mapping aliases nothing.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mapping {
            base: p as usize,
            len,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing borrows it.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

fn died_of(status: i32, sig: i32) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == sig
}

/// Runs the `#[ignore]`d test `body` of this binary in a fresh process.
/// Returns its output; panics unless it passed.
fn run_child(body: &str) -> String {
    let out = child_command(body).output().expect("spawn child");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("--- child {body} ---\n{text}--- end {body} ---");
    assert!(
        out.status.success(),
        "child {body} failed: {:?}",
        out.status
    );
    assert!(
        text.contains("1 passed"),
        "child {body} did not run its body"
    );
    text
}

fn child_command(body: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        body,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    c.env("WW_TEST_CHILD", "1");
    c
}

/// Held by the tests whose children use many map entries, or that lower
/// `vm.max_map_count` (system-wide): one at a time, so none of them sees
/// another's limit.
static MAP_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn map_tests_lock() -> std::sync::MutexGuard<'static, ()> {
    MAP_TESTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// `#[ignore]`d bodies only run as children.
fn is_child(name: &str) -> bool {
    let child = std::env::var_os("WW_TEST_CHILD").is_some();
    if !child {
        println!("SKIP {name}: runs only as a child of its parent test");
    }
    child
}

// ---------------------------------------------------------------------------
// Basics
// ---------------------------------------------------------------------------

#[test]
fn faults_are_caught_and_resets_rearm() {
    require_mprotect!("faults_are_caught_and_resets_rearm");
    let ps = ps();
    let mut m = WatchedAlloc::new(16 * ps).unwrap();
    assert_eq!(writewatch::active_backend(), BackendKind::Mprotect);
    let base = m.as_ptr() as usize;
    assert!(m.written_pages(.., false).unwrap().is_empty(), "born clean");
    assert_eq!(perms_at(base), "r--p", "armed pages are read-only");

    let faults = writewatch::stats().faults_handled;
    let mem = m.as_mut_slice();
    mem[3 * ps] = 1;
    mem[3 * ps + 5] = 2; // same page, no second fault needed
    mem[7 * ps] = 1;
    // A write straddling pages 10 and 11.
    // SAFETY: inside the region.
    unsafe {
        std::ptr::write_unaligned(mem.as_mut_ptr().add(11 * ps - 2).cast::<u32>(), 0xdead_beef)
    };
    assert!(writewatch::stats().faults_handled >= faults + 4);
    assert_eq!(m.written_pages(.., false).unwrap(), [3, 7, 10, 11]);
    assert_eq!(
        m.written_pages(.., false).unwrap(),
        [3, 7, 10, 11],
        "a get without reset changes nothing"
    );

    assert_eq!(m.written_pages(.., true).unwrap(), [3, 7, 10, 11]);
    assert!(m.written_pages(.., false).unwrap().is_empty());
    assert_eq!(perms_at(base + 3 * ps), "r--p", "re-armed by the reset");
    assert_eq!(m.as_mut_slice()[3 * ps + 5], 2, "contents kept");

    m.as_mut_slice()[7 * ps] = 3;
    assert_eq!(
        m.written_pages(.., false).unwrap(),
        [7],
        "a re-armed page faults again"
    );

    // Capacity 1 with reset: only the returned page is reset.
    m.as_mut_slice()[2 * ps] = 1;
    m.as_mut_slice()[9 * ps] = 1;
    let mut one = [0usize; 1];
    assert_eq!(
        writewatch::get_write_watch(true, base, 16 * ps, &mut one).unwrap(),
        1
    );
    assert_eq!(one[0], base + 2 * ps);
    assert_eq!(m.written_pages(.., false).unwrap(), [7, 9]);

    m.reset(..).unwrap();
    assert!(m.written_pages(.., false).unwrap().is_empty());
    m.as_mut_slice()[9 * ps] = 1;
    assert_eq!(m.written_pages(.., true).unwrap(), [9]);
}

#[test]
fn watched_caller_memory_keeps_contents_and_is_writable_after_unwatch() {
    require_mprotect!("watched_caller_memory_keeps_contents_and_is_writable_after_unwatch");
    let ps = ps();
    let map = Mapping::new(8 * ps, libc::PROT_READ | libc::PROT_WRITE);
    let base = map.base;
    poke(base, 42);
    // SAFETY: `map` outlives the watch.
    let w = unsafe { writewatch::WatchedRange::new(base as *mut u8, 8 * ps) }.unwrap();
    assert!(
        w.written_pages(.., false).unwrap().is_empty(),
        "earlier writes are not reported"
    );
    assert_eq!(peek(base), 42);
    poke(base + 2 * ps, 1);
    poke(base + 5 * ps, 1);
    assert_eq!(w.written_pages(.., true).unwrap(), [2, 5]);
    drop(w);
    assert_eq!(perms_at(base + 2 * ps), "rw-p");
    poke(base + 2 * ps, 7); // no fault handler needed any more
    assert_eq!(peek(base + 2 * ps), 7);
}

#[test]
fn handle_fault_resolves_armed_pages_only() {
    require_mprotect!("handle_fault_resolves_armed_pages_only");
    let ps = ps();
    let m = WatchedAlloc::new(4 * ps).unwrap();
    let base = m.as_ptr() as usize;
    // Called outside a handler it behaves the same: resolve and mark.
    assert!(writewatch::handle_fault(base + ps + 8));
    assert_eq!(m.written_pages(.., false).unwrap(), [1]);
    assert_eq!(perms_at(base + ps), "rw-p");
    let other = Mapping::new(ps, libc::PROT_READ);
    assert!(
        !writewatch::handle_fault(other.base),
        "not watched: not ours"
    );
    assert!(
        !writewatch::handle_fault(base - ps),
        "the guard page is not ours"
    );
    assert!(!writewatch::handle_fault(0));
}

// ---------------------------------------------------------------------------
// Caller protection (ww_protect)
// ---------------------------------------------------------------------------

#[test]
fn protect_combines_caller_protection_with_watch_state() {
    require_mprotect!("protect_combines_caller_protection_with_watch_state");
    let ps = ps();
    let mut m = WatchedAlloc::new(8 * ps).unwrap();
    let base = m.as_ptr() as usize;
    m.as_mut_slice()[2 * ps] = 1;

    m.protect(2 * ps..4 * ps, Protection::Read).unwrap();
    assert_eq!(perms_at(base + 3 * ps), "r--p");
    assert_eq!(
        m.written_pages(.., false).unwrap(),
        [2],
        "written state survives protection"
    );
    // A write to a page the caller made read-only is not ours: the
    // process dies of SIGSEGV (in a child).
    let status = in_child(fork, || {
        poke(base + 3 * ps, 1);
        0
    });
    assert!(
        died_of(status, libc::SIGSEGV),
        "write to caller-RO page: status {status:#x}"
    );
    // Even a page that was already written.
    let status = in_child(fork, || {
        poke(base + 2 * ps, 1);
        0
    });
    assert!(
        died_of(status, libc::SIGSEGV),
        "write to written caller-RO page: status {status:#x}"
    );

    m.protect(5 * ps..6 * ps, Protection::None).unwrap();
    assert_eq!(perms_at(base + 5 * ps), "---p");
    let status = in_child(fork, || i32::from(peek(base + 5 * ps)));
    assert!(
        died_of(status, libc::SIGSEGV),
        "read of caller-NONE page: status {status:#x}"
    );

    // Back to read-write: the unwritten page is armed, the written one is not.
    m.protect(2 * ps..6 * ps, Protection::ReadWrite).unwrap();
    assert_eq!(perms_at(base + 2 * ps), "rw-p", "written page: writable");
    assert_eq!(perms_at(base + 3 * ps), "r--p", "unwritten page: armed");
    m.as_mut_slice()[3 * ps] = 1;
    m.as_mut_slice()[5 * ps] = 1;
    assert_eq!(m.written_pages(.., true).unwrap(), [2, 3, 5]);
    assert!(m.written_pages(.., false).unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// No lost write: writers against get-with-reset (and ww_protect)
// ---------------------------------------------------------------------------

/// Each page carries a token: a writer writes a page only when its token
/// is 0, setting it to 1 first; the reader consumes the token of each page
/// it reports. So every write is followed by exactly one report, unless
/// it is lost. Reports of a page without a token are duplicates (allowed,
/// counted). A token still set after the writers stopped and a final get
/// is a lost write.
struct Tokens {
    base: usize,
    pages: usize,
    writer_pages: usize,
    /// Writer page `p` is region page `p * stride` (isolated pages when
    /// the stride is above 1).
    stride: usize,
    /// Writers discard a page (`MADV_DONTNEED`) before writing it again,
    /// so that every write is a first touch of an unpopulated page.
    discard: bool,
    /// Threads wait for this before their first write or get; the reader
    /// counts itself in `readers_ready` once its buffer is allocated.
    gate: AtomicBool,
    readers_ready: AtomicUsize,
    /// Writers stop after this long, whatever the sweeps.
    seconds: u64,
    tokens: Vec<AtomicU8>,
    writes: AtomicUsize,
    consumed: AtomicUsize,
    /// Completed writes a full get did not report (must stay 0).
    late: AtomicUsize,
    duplicates: AtomicUsize,
    done: AtomicBool,
}

impl Tokens {
    fn new(base: usize, pages: usize, writer_pages: usize) -> Tokens {
        Tokens {
            base,
            pages,
            writer_pages,
            stride: 1,
            discard: false,
            gate: AtomicBool::new(true),
            readers_ready: AtomicUsize::new(0),
            seconds: 20,
            tokens: (0..pages).map(|_| AtomicU8::new(0)).collect(),
            writes: AtomicUsize::new(0),
            consumed: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            late: AtomicUsize::new(0),
            done: AtomicBool::new(false),
        }
    }

    /// `sweeps` passes over this writer's pages, writing each page whose
    /// token is free. Bounded by sweeps, not by writes, so that a lost
    /// write (a token never returned) cannot hang the test.
    fn wait_for_gate(&self) {
        while !self.gate.load(SeqCst) {
            std::thread::yield_now();
        }
    }

    fn writer(&self, id: usize, writers: usize, sweeps: usize) {
        self.wait_for_gate();
        let mut n = 0;
        let mut x = id as u64 * 7919 + 1;
        // Also bounded in time: under emulation (qemu TCG) a fault costs
        // ~20x more and the sweeps alone can take minutes. The oracle does
        // not depend on how many writes were made.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(self.seconds);
        for _ in 0..sweeps {
            if std::time::Instant::now() > deadline {
                break;
            }
            if self.discard {
                // A pass of its own, a yield before the writes: settling
                // gets time to read the pagemap between a page's discard
                // and its write.
                for p in (id..self.writer_pages).step_by(writers) {
                    let p = p * self.stride;
                    if self.tokens[p].load(SeqCst) == 0 {
                        // SAFETY: a page of the watched allocation that only
                        // this writer writes; its last contents were
                        // reported (token 0), so dropping them is fine.
                        let rc = unsafe {
                            libc::madvise(
                                (self.base + p * ps()) as *mut libc::c_void,
                                ps(),
                                libc::MADV_DONTNEED,
                            )
                        };
                        assert_eq!(rc, 0, "madvise(MADV_DONTNEED)");
                    }
                }
                std::thread::yield_now();
            }
            for p in (id..self.writer_pages).step_by(writers) {
                let p = p * self.stride;
                if self.tokens[p].load(SeqCst) == 0 {
                    self.tokens[p].store(1, SeqCst);
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    poke(self.base + p * ps() + (x >> 33) as usize % ps(), x as u8);
                    // Written. If a get reported the page meanwhile (its
                    // fault, before the store landed) the token is 0
                    // already, and that report covers this write.
                    let _ = self.tokens[p].compare_exchange(1, 2, SeqCst, SeqCst);
                    n += 1;
                }
            }
            std::thread::yield_now();
        }
        self.writes.fetch_add(n, SeqCst);
    }

    fn consume(&self, reported: &[usize]) {
        for &a in reported {
            let p = (a - self.base) / ps();
            if self.tokens[p].swap(0, SeqCst) != 0 {
                self.consumed.fetch_add(1, SeqCst);
            } else {
                self.duplicates.fetch_add(1, SeqCst);
            }
        }
    }

    /// Gets with reset until the writers are done, with varying capacity
    /// (a full output resets only the returned prefix) and sub-ranges.
    fn reader(&self) -> usize {
        // Everything allocated before the gate (at the map limit even
        // malloc's mmap fails).
        let mut out = vec![0usize; self.pages];
        let mut snap: Vec<usize> = Vec::with_capacity(self.pages);
        let mut seen = vec![false; self.pages];
        let caps = [1, 7, 64, self.pages];
        let mut gets = 0;
        self.readers_ready.fetch_add(1, SeqCst);
        self.wait_for_gate();
        // One get with reset; a full one (whole region, room for every
        // page) must report every write that completed before it began and
        // was not reported yet (token 2): not reporting it now is a lost
        // write even if some later get would report it.
        let mut get = |from: usize, cap: usize| -> usize {
            let full = from == 0 && cap == self.pages;
            if full {
                snap.clear();
                snap.extend((0..self.pages).filter(|&p| self.tokens[p].load(SeqCst) == 2));
            }
            let len = (self.pages - from) * ps();
            let n =
                writewatch::get_write_watch(true, self.base + from * ps(), len, &mut out[..cap])
                    .unwrap();
            if full {
                out[..n]
                    .iter()
                    .for_each(|a| seen[(a - self.base) / ps()] = true);
                let late = snap.iter().filter(|&&p| !seen[p]).count();
                if late > 0 {
                    self.late.fetch_add(late, SeqCst);
                }
                out[..n]
                    .iter()
                    .for_each(|a| seen[(a - self.base) / ps()] = false);
            }
            self.consume(&out[..n]);
            n
        };
        while !self.done.load(SeqCst) {
            let cap = caps[gets % caps.len()];
            let from = if gets % 5 == 4 { self.pages / 3 } else { 0 };
            get(from, cap);
            gets += 1;
        }
        // Writers are done: everything still written is collected now.
        while get(0, self.pages) > 0 {}
        gets
    }

    fn check(&self, test: &str, gets: usize) {
        let lost: Vec<usize> = (0..self.pages)
            .filter(|&p| self.tokens[p].load(SeqCst) != 0)
            .collect();
        let (writes, consumed, dups, late) = (
            self.writes.load(SeqCst),
            self.consumed.load(SeqCst),
            self.duplicates.load(SeqCst),
            self.late.load(SeqCst),
        );
        println!(
            "{test}: {writes} writes, {consumed} reported, {dups} duplicate reports, {gets} gets-with-reset, \
             {late} completed writes missing from a full get"
        );
        assert!(lost.is_empty(), "{test}: LOST writes on pages {lost:?}");
        assert_eq!(
            late, 0,
            "{test}: LOST writes: full gets missed completed writes"
        );
        assert_eq!(
            consumed, writes,
            "{test}: every write reported exactly once"
        );
    }
}

const TORTURE_PAGES: usize = 96;
const SWEEPS: usize = 6_000;

#[test]
fn torture_writers_vs_get_with_reset_lose_nothing() {
    require_mprotect!("torture_writers_vs_get_with_reset_lose_nothing");
    let m = WatchedAlloc::new(TORTURE_PAGES * ps()).unwrap();
    let tk = Tokens::new(m.as_ptr() as usize, TORTURE_PAGES, TORTURE_PAGES);
    let writers = 3;
    let gets = std::thread::scope(|s| {
        let hs: Vec<_> = (0..writers)
            .map(|id| {
                s.spawn({
                    let tk = &tk;
                    move || tk.writer(id, writers, SWEEPS)
                })
            })
            .collect();
        let reader = s.spawn(|| tk.reader());
        for h in hs {
            h.join().unwrap();
        }
        tk.done.store(true, SeqCst);
        reader.join().unwrap()
    });
    tk.check("torture_writers_vs_get_with_reset_lose_nothing", gets);
}

#[test]
fn torture_in_block_mode_loses_nothing() {
    require_mprotect!("torture_in_block_mode_loses_nothing");
    let _one_at_a_time = map_tests_lock();
    run_child("child_torture_block_mode_body");
}

#[test]
#[ignore = "run by torture_in_block_mode_loses_nothing"]
fn child_torture_block_mode_body() {
    const NAME: &str = "child_torture_block_mode_body";
    if !is_child(NAME) {
        return;
    }
    require_mprotect!("child_torture_block_mode_body");
    // 4,096 isolated writer pages (every 8th page of 128 MiB) with only 24
    // map entries free: nearly every fault opens a block, and every get
    // settles blocks while writers fault on the pages it re-arms. Writers
    // discard each page before writing it again, so each write populates
    // its page: one that lands in an open block between settling's
    // pagemap read and its verdict is the case settling must not lose.
    let (writer_pages, stride) = (4096, 8);
    let pages = writer_pages * stride;
    let m = WatchedAlloc::new(pages * ps()).unwrap();
    let mut tk = Tokens::new(m.as_ptr() as usize, pages, writer_pages);
    tk.stride = stride;
    tk.discard = true;
    tk.gate = AtomicBool::new(false);
    tk.seconds = 4;
    let writers = 3;
    let mut filler = None;
    let gets = std::thread::scope(|s| {
        let hs: Vec<_> = (0..writers)
            .map(|id| {
                s.spawn({
                    let tk = &tk;
                    move || tk.writer(id, writers, 1_000_000)
                })
            })
            .collect();
        let reader = s.spawn(|| tk.reader());
        // Threads and buffers exist: now take the map entries (at the limit
        // even malloc's mmap fails).
        while tk.readers_ready.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        filler = Some(eat_map_entries(24));
        tk.gate.store(true, SeqCst);
        for h in hs {
            h.join().unwrap();
        }
        tk.done.store(true, SeqCst);
        reader.join().unwrap()
    });
    let (est, budget) = writewatch::backend::mprotect::map_budget();
    println!(
        "{NAME}: estimate {est}, budget {budget}, map count {}",
        map_count()
    );
    tk.check(NAME, gets);
    drop(filler);
}

#[test]
fn torture_writers_vs_get_with_reset_and_protect_lose_nothing() {
    require_mprotect!("torture_writers_vs_get_with_reset_and_protect_lose_nothing");
    let ps = ps();
    let total = TORTURE_PAGES + 32;
    let m = WatchedAlloc::new(total * ps).unwrap();
    let base = m.as_ptr() as usize;
    // Writers use the first TORTURE_PAGES pages; the protector also
    // toggles the last 32 between read-only and read-write.
    let tk = Tokens::new(base, total, TORTURE_PAGES);
    let writers = 3;
    let toggles = AtomicUsize::new(0);
    let gets = std::thread::scope(|s| {
        let hs: Vec<_> = (0..writers)
            .map(|id| {
                s.spawn({
                    let tk = &tk;
                    move || tk.writer(id, writers, SWEEPS / 2)
                })
            })
            .collect();
        let reader = s.spawn(|| tk.reader());
        let protector = s.spawn(|| {
            let side = base + TORTURE_PAGES * ps;
            while !tk.done.load(SeqCst) {
                // Re-applying read-write over everything re-derives each
                // page's protection from its written bit while faults and
                // resets race it.
                // SAFETY: watched memory we own; read-write is its normal state.
                unsafe {
                    writewatch::protect(base, total * ps, libc::PROT_READ | libc::PROT_WRITE)
                }
                .unwrap();
                // SAFETY: nobody writes the side pages during the loop.
                unsafe { writewatch::protect(side, 32 * ps, libc::PROT_READ) }.unwrap();
                // SAFETY: as above.
                unsafe {
                    writewatch::protect(side + 8 * ps, 8 * ps, libc::PROT_READ | libc::PROT_WRITE)
                }
                .unwrap();
                toggles.fetch_add(1, SeqCst);
            }
        });
        for h in hs {
            h.join().unwrap();
        }
        tk.done.store(true, SeqCst);
        protector.join().unwrap();
        reader.join().unwrap()
    });
    println!("protect toggles: {}", toggles.load(SeqCst));
    tk.check(
        "torture_writers_vs_get_with_reset_and_protect_lose_nothing",
        gets,
    );
    // The side pages: read-only except 8 of them; back to read-write they
    // are armed and their writes are reported.
    let side = base + TORTURE_PAGES * ps;
    assert_eq!(perms_at(side), "r--p");
    // SAFETY: watched memory we own.
    unsafe { writewatch::protect(side, 32 * ps, libc::PROT_READ | libc::PROT_WRITE) }.unwrap();
    poke(side + 3 * ps, 1);
    poke(side + 9 * ps, 1);
    assert_eq!(written(side, 32 * ps, true), [3, 9]);
}

// ---------------------------------------------------------------------------
// Kernel writes
// ---------------------------------------------------------------------------

#[test]
fn kernel_writes_succeed_after_prepare_kernel_write() {
    require_mprotect!("kernel_writes_succeed_after_prepare_kernel_write");
    let ps = ps();
    let m = WatchedAlloc::new(8 * ps).unwrap();
    let base = m.as_ptr() as usize;
    let msg = b"hello from the kernel";

    // read(2) from a pipe. Without prepare the kernel's copy faults on the
    // armed page and fails with EFAULT (no SIGSEGV for kernel accesses).
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let dst = base + ps + 10;
    // SAFETY: writing our buffer to our pipe.
    let n = unsafe { libc::write(fds[1], msg.as_ptr().cast(), msg.len()) };
    assert_eq!(n, msg.len() as isize);
    // SAFETY: `dst` is inside our region; the kernel checks access.
    let n = unsafe { libc::read(fds[0], dst as *mut libc::c_void, msg.len()) };
    let e = std::io::Error::last_os_error().raw_os_error();
    assert!(
        n == -1 && e == Some(libc::EFAULT),
        "read into an armed page: {n} {e:?}"
    );
    writewatch::prepare_kernel_write(dst, msg.len()).unwrap();
    // SAFETY: as above.
    let n = unsafe { libc::read(fds[0], dst as *mut libc::c_void, msg.len()) };
    assert_eq!(n, msg.len() as isize, "read after prepare");
    // SAFETY: inside the region, now readable and written.
    let got = unsafe { std::slice::from_raw_parts(dst as *const u8, msg.len()) };
    assert_eq!(got, msg);
    // SAFETY: closing our pipe.
    unsafe { libc::close(fds[0]) };
    // SAFETY: as above.
    unsafe { libc::close(fds[1]) };

    // pread(2) from a file, spanning pages 3 and 4.
    let path = std::env::temp_dir().join(format!("ww-pread-{}", std::process::id()));
    std::fs::write(&path, [7u8; 3 * 4096]).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let dst = base + 4 * ps - 100;
    writewatch::prepare_kernel_write(dst, 300).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: as above.
    let n = unsafe { libc::pread(f.as_raw_fd(), dst as *mut libc::c_void, 300, 4096) };
    assert_eq!(n, 300, "pread after prepare");
    std::fs::remove_file(&path).unwrap();

    // recv(2) from a socketpair into page 6.
    let mut sv = [0; 2];
    // SAFETY: `sv` has room for two descriptors.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: sending our buffer.
    let n = unsafe { libc::send(sv[0], msg.as_ptr().cast(), msg.len(), 0) };
    assert_eq!(n, msg.len() as isize);
    let dst = base + 6 * ps;
    writewatch::prepare_kernel_write(dst, msg.len()).unwrap();
    // SAFETY: as above.
    let n = unsafe { libc::recv(sv[1], dst as *mut libc::c_void, msg.len(), 0) };
    assert_eq!(n, msg.len() as isize, "recv after prepare");
    // SAFETY: closing our sockets.
    unsafe { libc::close(sv[0]) };
    // SAFETY: as above.
    unsafe { libc::close(sv[1]) };

    assert_eq!(m.written_pages(.., true).unwrap(), [1, 3, 4, 6]);
    // Unwatched memory in the range is ignored.
    writewatch::prepare_kernel_write(base - 4 * ps, 2 * ps).unwrap();
}

// ---------------------------------------------------------------------------
// Fork
// ---------------------------------------------------------------------------

#[test]
fn fork_child_keeps_tracking() {
    require_mprotect!("fork_child_keeps_tracking");
    run_child("child_fork_body");
}

#[test]
#[ignore = "run by fork_child_keeps_tracking in its own process"]
fn child_fork_body() {
    if !is_child("child_fork_body") {
        return;
    }
    require_mprotect!("child_fork_body");
    let ps = ps();
    let mut m = WatchedAlloc::new(8 * ps).unwrap();
    let base = m.as_ptr() as usize;
    m.as_mut_slice()[ps] = 1;
    // This process is single-threaded apart from the idle harness thread,
    // so the child may use the library (its locks are free).
    let status = in_child(fork, || {
        poke(base + 4 * ps, 1);
        let got = written(base, 8 * ps, true);
        poke(base + 6 * ps, 1);
        let again = written(base, 8 * ps, false);
        let ok = got == [1, 4] && again == [6];
        if !ok {
            eprintln!("child saw {got:?} then {again:?}");
        }
        i32::from(!ok)
    });
    assert!(exited_ok(status), "child status {status:#x}");
    // The parent's state is its own.
    poke(base + 2 * ps, 1);
    assert_eq!(written(base, 8 * ps, true), [1, 2]);
}

// ---------------------------------------------------------------------------
// Map-count exhaustion
// ---------------------------------------------------------------------------

/// Writes every second page of `pages` pages at `base` (in ascending order,
/// or scattered), sampling the map count; returns the peak seen, and the
/// time spent writing (sampling excluded).
fn write_every_second_page(
    base: usize,
    pages: usize,
    scattered: bool,
) -> (usize, std::time::Duration) {
    let half = pages / 2;
    let mut peak = map_count();
    let mut writing = std::time::Duration::ZERO;
    let mut t = Instant::now();
    for k in 0..half {
        // 7919 is prime and does not divide `half`: a permutation.
        let j = if scattered { (k * 7919) % half } else { k };
        poke(base + 2 * j * ps(), 1);
        if k % 8192 == 0 {
            writing += t.elapsed();
            peak = peak.max(map_count());
            t = Instant::now();
        }
    }
    writing += t.elapsed();
    (peak.max(map_count()), writing)
}

/// Every even page reported (odd ones may be too: coarse blocks).
fn check_every_second_page(test: &str, base: usize, pages: usize, out: &mut [usize]) -> usize {
    let n = writewatch::get_write_watch(true, base, pages * ps(), out).unwrap();
    let mut seen = vec![false; pages];
    for a in &out[..n] {
        seen[(a - base) / ps()] = true;
    }
    let missing: Vec<usize> = (0..pages)
        .step_by(2)
        .filter(|&p| !seen[p])
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{test}: written pages not reported, e.g. {missing:?}"
    );
    n - pages / 2
}

#[test]
fn every_second_page_of_a_huge_region_stays_under_the_map_limit() {
    require_mprotect!("every_second_page_of_a_huge_region_stays_under_the_map_limit");
    let _one_at_a_time = map_tests_lock();
    run_child("child_every_second_page_body");
}

#[test]
#[ignore = "run by every_second_page_of_a_huge_region_stays_under_the_map_limit"]
fn child_every_second_page_body() {
    const NAME: &str = "child_every_second_page_body";
    if !is_child(NAME) {
        return;
    }
    require_mprotect!("child_every_second_page_body");
    let pages = 409_600; // 1.6 GiB: 204,800 isolated written pages
    let max = max_map_count();
    let m = WatchedAlloc::new(pages * ps()).unwrap();
    let base = m.as_ptr() as usize;
    let mut out = vec![0usize; pages];
    for (round, scattered) in [(1, false), (2, true)] {
        let faults = writewatch::stats().faults_handled;
        let (peak, t_write) = write_every_second_page(base, pages, scattered);
        let faults = writewatch::stats().faults_handled - faults;
        let (est, budget) = writewatch::backend::mprotect::map_budget();
        let t1 = Instant::now();
        let extra = check_every_second_page(NAME, base, pages, &mut out);
        let t_get = t1.elapsed();
        println!(
            "round {round} ({}): {} writes ({faults} faults) in {t_write:?}, get+reset of {pages} pages in {t_get:?}; \
             peak map count {peak} (max {max}), our VMA estimate {est} (budget {budget}); \
             {extra} extra pages reported; map count after reset {}",
            if scattered { "scattered" } else { "ascending" },
            pages / 2,
            map_count()
        );
        assert!(peak < max, "peak map count {peak} reached the limit {max}");
        assert!(writewatch::get_write_watch(false, base, pages * ps(), &mut out).unwrap() == 0);
    }
    // Still exact for a few pages once the fragmentation is gone.
    poke(base + 5 * ps(), 1);
    poke(base + 100_001 * ps(), 1);
    assert_eq!(written(base, pages * ps(), true), [5, 100_001]);
}

/// Takes map entries until only `leave` are free: maps `2n + 1` pages and
/// makes every second one read-only (each adds two VMAs). Stops early if
/// the kernel refuses (someone lowered the limit meanwhile).
fn eat_map_entries(leave: usize) -> Mapping {
    let free = max_map_count().saturating_sub(map_count());
    let pairs = free.saturating_sub(leave) / 2;
    let filler = Mapping::new(2 * pairs * ps() + ps(), libc::PROT_READ | libc::PROT_WRITE);
    for k in 0..pairs {
        let page = filler.base + (2 * k + 1) * ps();
        // SAFETY: our own filler mapping.
        let rc = unsafe { libc::mprotect(page as *mut libc::c_void, ps(), libc::PROT_READ) };
        if rc != 0 {
            println!(
                "stopped eating map entries: {}",
                std::io::Error::last_os_error()
            );
            break;
        }
    }
    filler
}

#[test]
fn map_entries_exhausted_by_others_never_hang_or_lose_a_write() {
    require_mprotect!("map_entries_exhausted_by_others_never_hang_or_lose_a_write");
    let _one_at_a_time = map_tests_lock();
    run_child("child_exhausted_by_others_body");
}

#[test]
#[ignore = "run by map_entries_exhausted_by_others_never_hang_or_lose_a_write"]
fn child_exhausted_by_others_body() {
    const NAME: &str = "child_exhausted_by_others_body";
    if !is_child(NAME) {
        return;
    }
    require_mprotect!("child_exhausted_by_others_body");
    let pages = 65_536;
    // Allocate everything first: at the limit even malloc's mmap fails.
    let m = WatchedAlloc::new(pages * ps()).unwrap(); // budget measured now
    let base = m.as_ptr() as usize;
    let mut out = vec![0usize; pages];
    out.iter_mut().step_by(512).for_each(|x| *x = 1);
    let filler = eat_map_entries(3000);
    let before = map_count();
    let (peak, t_write) = write_every_second_page(base, pages, true);
    let extra = check_every_second_page(NAME, base, pages, &mut out);
    let (est, budget) = writewatch::backend::mprotect::map_budget();
    let max = max_map_count();
    println!(
        "{} scattered writes with {} map entries free in {t_write:?}: peak map count {peak} (max {max}), \
         estimate {est}, budget {budget}, {extra} extra pages reported",
        pages / 2,
        max - before
    );
    assert!(peak <= max);
    drop(filler);
    poke(base + 3 * ps(), 1);
    assert_eq!(written(base, pages * ps(), true), [3]);
}

#[test]
fn block_mode_reports_only_populated_pages_of_a_fresh_region() {
    require_mprotect!("block_mode_reports_only_populated_pages_of_a_fresh_region");
    let _one_at_a_time = map_tests_lock();
    run_child("child_block_mode_settles_body");
}

#[test]
#[ignore = "run by block_mode_reports_only_populated_pages_of_a_fresh_region"]
fn child_block_mode_settles_body() {
    const NAME: &str = "child_block_mode_settles_body";
    if !is_child(NAME) {
        return;
    }
    require_mprotect!("child_block_mode_settles_body");
    // 1 GiB reserved, 4,000 isolated pages written: 8,000 VMAs' worth of
    // splits against a budget of about 1,500, so most writes open blocks
    // (64 pages up to the whole region). The blocks' other pages were never
    // touched: settling must drop every one of them from the report.
    let pages = 262_144;
    let stride = 64;
    let m = WatchedAlloc::new(pages * ps()).unwrap();
    let base = m.as_ptr() as usize;
    let mut out = vec![0usize; pages];
    out.iter_mut().step_by(512).for_each(|x| *x = 1);
    let filler = eat_map_entries(3000);
    let touched: Vec<usize> = (1..=4000).map(|k| k * stride + 7).collect();
    for round in 0..3 {
        // Round 0 writes every page, later rounds every tenth: the blocks
        // then hold populated pages that were not written this time.
        let now: Vec<usize> = touched
            .iter()
            .copied()
            .step_by(if round == 0 { 1 } else { 10 })
            .collect();
        for &p in &now {
            poke(base + p * ps(), round as u8 + 1);
        }
        let (est, budget) = writewatch::backend::mprotect::map_budget();
        let n = writewatch::get_write_watch(true, base, pages * ps(), &mut out).unwrap();
        let got: std::collections::BTreeSet<usize> =
            out[..n].iter().map(|a| (a - base) / ps()).collect();
        let missing: Vec<usize> = now
            .iter()
            .copied()
            .filter(|p| !got.contains(p))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "{NAME}: round {round}: written pages not reported, e.g. {missing:?}"
        );
        let strays: Vec<usize> = got
            .iter()
            .copied()
            .filter(|p| touched.binary_search(p).is_err() && *p != 0)
            .take(10)
            .collect();
        println!(
            "round {round}: {} written, {n} reported ({} of them touched in an earlier round);              estimate {est}, budget {budget}",
            now.len(),
            got.iter()
                .filter(|p| touched.binary_search(p).is_ok())
                .count()
                - now.len(),
        );
        // Page 0 was populated by the allocation itself; any other page
        // that was never touched must not be reported.
        assert!(
            strays.is_empty(),
            "{NAME}: round {round}: never-touched pages reported, e.g. {strays:?}"
        );
        assert_eq!(
            writewatch::get_write_watch(false, base, pages * ps(), &mut out).unwrap(),
            0
        );
    }
    drop(filler);
}

/// Restores a sysctl on drop.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.path, &self.old) {
            eprintln!(
                "could not restore {} to {}: {e}",
                self.path,
                self.old.trim()
            );
        }
    }
}

#[test]
fn lowered_max_map_count_never_hangs_or_loses_a_write() {
    const NAME: &str = "lowered_max_map_count_never_hangs_or_loses_a_write";
    require_mprotect!("lowered_max_map_count_never_hangs_or_loses_a_write");
    const PATH: &str = "/proc/sys/vm/max_map_count";
    let _one_at_a_time = map_tests_lock();
    let old = std::fs::read_to_string(PATH).unwrap();
    if let Err(e) = std::fs::OpenOptions::new().write(true).open(PATH) {
        println!("SKIP {NAME}: cannot write {PATH}: {e}");
        return;
    }
    // The child measures its budget with the normal limit, then we lower
    // the limit under it (system-wide, for about a second) so that the
    // kernel refuses splits the budget would have allowed.
    let mut child = child_command("child_lowered_limit_body")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log += &line;
        log += "\n";
        if line == "READY" {
            break;
        }
    }
    let theirs = std::fs::read_to_string(format!("/proc/{}/maps", child.id()))
        .unwrap()
        .lines()
        .count();
    let lowered = (theirs + 2000).max(16_384);
    {
        let _restore = Sysctl {
            path: PATH,
            old: old.clone(),
        };
        std::fs::write(PATH, lowered.to_string()).unwrap();
        writeln!(child.stdin.as_mut().unwrap(), "{lowered}").unwrap();
        for line in lines.by_ref() {
            let line = line.unwrap();
            log += &line;
            log += "\n";
            if line.starts_with("WRITES DONE") {
                break;
            }
        }
    }
    assert_eq!(
        std::fs::read_to_string(PATH).unwrap(),
        old,
        "sysctl restored"
    );
    for line in lines {
        log += &line.unwrap();
        log += "\n";
    }
    let status = child.wait().unwrap();
    println!("--- child ---\n{log}--- end child ---");
    assert!(status.success(), "child failed: {status:?}");
    assert!(log.contains("1 passed"));
}

#[test]
#[ignore = "run by lowered_max_map_count_never_hangs_or_loses_a_write"]
fn child_lowered_limit_body() {
    const NAME: &str = "child_lowered_limit_body";
    if !is_child(NAME) {
        return;
    }
    require_mprotect!("child_lowered_limit_body");
    let pages = 131_072; // 65,536 isolated writes would need 131k VMAs
    let m = WatchedAlloc::new(pages * ps()).unwrap();
    let base = m.as_ptr() as usize;
    let mut out = vec![0usize; pages];
    out.iter_mut().step_by(512).for_each(|x| *x = 1);
    let (_, budget) = writewatch::backend::mprotect::map_budget();
    println!("budget measured at the normal limit: {budget}");
    println!("READY");
    let mut limit = String::new();
    std::io::stdin().read_line(&mut limit).unwrap();
    let limit: usize = limit.trim().parse().unwrap();
    let (peak, t_write) = write_every_second_page(base, pages, false);
    println!(
        "WRITES DONE: {} writes in {t_write:?} under max_map_count {limit}, peak map count {peak}",
        pages / 2
    );
    assert!(peak <= limit);
    let extra = check_every_second_page(NAME, base, pages, &mut out);
    let (est, budget) = writewatch::backend::mprotect::map_budget();
    println!("all written pages reported ({extra} extra); estimate {est}, budget now {budget}");
    poke(base + 3 * ps(), 1);
    assert_eq!(written(base, pages * ps(), true), [3]);
}
