//! The mprotect backend: works on any kernel, with mprotect(2) and a
//! SIGSEGV handler.
//!
//! Every caller-writable page that has not been written since the last
//! reset is kept read-only ("armed"). The first write to it faults; our
//! handler (`crate::signal::handler`, installed when this backend is
//! first used) marks the page written in an atomic bitmap and makes it
//! writable again, and the write is retried. A get reads the bitmap; a
//! get-with-reset re-arms exactly the pages it reports. Nothing in this
//! file runs in signal context except [`on_fault`], a downcast that calls
//! `Tracking::resolve` in the handler file.
//!
//! **No lost write.** A reset write-protects a page *before* clearing its
//! written bit; the handler sets the bit *before* making the page
//! writable. Both sequences run under the region's spin flag, with all
//! signals blocked, because the two orders alone still allow "handler
//! sets bit; reset protects and clears; handler unprotects", which leaves
//! a writable page with a clear bit. The full argument is in the handler
//! file, next to the code it constrains; `tests/mprotect_backend.rs`
//! races writer threads against get-with-reset and `ww_protect`.
//!
//! **Caller protection.** The region keeps the caller's protection per
//! page (`ww_protect`). Only caller-writable pages are ever armed; a write
//! fault on a page the caller made read-only is not ours and goes to the
//! previous handler. Written state survives protection changes.
//!
//! **Kernel writes.** The kernel does not take our SIGSEGV for its own
//! accesses: `read(2)` into an armed page fails with EFAULT. Callers use
//! `ww_prepare_kernel_write` first, which marks the pages written and
//! makes them writable (no "touching": a non-atomic read-modify-write of
//! the page could lose a racing store).
//!
//! **Map count.** Arming and disarming single pages splits VMAs; the
//! kernel stops at `vm.max_map_count`. The handler spends at most a
//! budget of VMAs (half the free map entries, measured at start-up and
//! again after any ENOMEM) and beyond it, or on ENOMEM, unprotects larger
//! aligned blocks and marks all of their pages written, the ones nobody
//! faulted on as *guessed*. See the handler file's "Map count" note. In
//! private memory a get first settles the guessed pages ([`settle`]): it
//! arms them again and keeps only those `/proc/self/pagemap` shows
//! populated, so a block costs extra reports only for pages that were
//! touched before (in a fresh sparse region: none). A reset that cannot
//! re-arm a page for lack of map entries leaves it marked written
//! (reported again: never lost).
//!
//! **Resets** re-arm the reported runs of a batch with one mprotect over
//! their span (as Wine does for a whole reset) rather than one per run.
//!
//! **Fork.** The child inherits the protections, the handler and the
//! bitmaps, so tracking simply continues in both processes; a spin flag
//! held by a parent thread at the fork is taken over by the child.
//! (A `parking_lot` lock held by another parent thread at the fork stays
//! held in the child, as for every backend.)

use std::any::Any;
use std::ffi::c_int;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::{Backend, BackendKind, Sink};
use crate::error::{Error, Result};
use crate::page::{PageRange, page_size};
use crate::registry::Region;
use crate::signal::handler::{BlockAll, MAP_PRESSURE, Tracking, VMA_BUDGET, VMA_ESTIMATE};
use crate::sys::mm;
use crate::sys::pagemap;
use crate::sys::uapi::{PM_PRESENT, PM_SWAP};

const PROT_WRITE: i32 = libc::PROT_WRITE;

/// Reported runs re-armed per flag section (bounds how long a faulting
/// thread can wait for a resetter).
const BATCH: usize = 64;

/// The backend (stateless: all state is per region).
pub struct Mprotect;

static INSTANCE: Mprotect = Mprotect;

/// Per-region state.
struct State {
    /// Bits and spin flag, shared with the fault handler.
    t: Tracking,
    /// Serializes this region's operations (not the handler).
    ops: Mutex<()>,
    /// All of the region is private memory, where a page that was written
    /// stays populated (or swapped) until the caller discards it: guessed
    /// pages can be settled with `/proc/self/pagemap` (see [`settle`]).
    /// Set by `watch`.
    private: AtomicBool,
}

/// The process-wide instance. First use installs the SIGSEGV handler and
/// measures the map-count budget.
pub fn instance() -> Result<&'static dyn Backend> {
    static READY: OnceLock<()> = OnceLock::new();
    super::instance_once(&READY, BackendKind::Mprotect, || {
        crate::signal::install()?;
        refresh_budget();
        Ok(())
    })?;
    Ok(&INSTANCE)
}

/// Tries the mechanism on a scratch page: write, write-protect, unprotect.
/// (The handler is not installed by a probe: only by use.)
pub fn probe() -> std::result::Result<(), String> {
    let ps = page_size();
    let base = mm::reserve(ps).map_err(|e| format!("mmap failed: {e}"))?;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let result = (|| {
        // SAFETY: `base` is our own fresh reservation.
        unsafe { mm::protect(base, ps, rw) }.map_err(|e| format!("mprotect(RW) failed: {e}"))?;
        // SAFETY: the page is ours and read-write.
        unsafe { std::ptr::write_volatile(base as *mut u8, 1) };
        // SAFETY: as above.
        unsafe { mm::protect(base, ps, libc::PROT_READ) }
            .map_err(|e| format!("mprotect(READ) failed: {e}"))?;
        // SAFETY: as above.
        unsafe { mm::protect(base, ps, rw) }.map_err(|e| format!("mprotect(RW) failed: {e}"))
    })();
    // SAFETY: the scratch mapping is ours and nothing references it.
    let _ = unsafe { mm::unmap(base, ps) };
    result
}

/// Signal context: resolves a write fault at `addr` in `r` (called by the
/// handler's dispatch once it found `r` in the lock-free snapshot).
/// Async-signal-safe; true if resolved (return and retry the write).
pub(crate) fn on_fault(r: &Region, addr: usize) -> bool {
    r.state
        .downcast_ref::<State>()
        .is_some_and(|s| s.t.resolve(addr))
}

/// `(estimate, budget)`: the VMAs our protections add across all regions
/// (an estimate) and how many we allow ourselves before unprotecting in
/// coarser blocks. For diagnostics and tests.
pub fn map_budget() -> (isize, isize) {
    (VMA_ESTIMATE.load(Relaxed), VMA_BUDGET.load(Relaxed))
}

/// Budget = what we use now plus half the map entries still free.
fn refresh_budget() {
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<isize>().ok())
        .unwrap_or(65530);
    let used = std::fs::read("/proc/self/maps")
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as isize)
        .unwrap_or(max / 2);
    let ours = VMA_ESTIMATE.load(Relaxed).max(0);
    VMA_BUDGET.store(ours + (max - used).max(0) / 2, Relaxed);
}

/// After an ENOMEM anywhere, measure again (normal context, before a reset).
fn refresh_if_pressed() {
    if MAP_PRESSURE.swap(false, Relaxed) {
        refresh_budget();
    }
}

fn state(r: &Region) -> Result<&State> {
    r.state.downcast_ref::<State>().ok_or(Error::IO)
}

/// Runs `f` holding the region's spin flag, with every signal blocked.
fn critical<R>(t: &Tracking, f: impl FnOnce(&Tracking) -> R) -> R {
    let _blocked = BlockAll::new();
    let _held = t.flag.lock();
    f(t)
}

/// Page indices of `range` (inside the region) in `t`.
fn indices(t: &Tracking, range: PageRange) -> (usize, usize) {
    let ps = page_size();
    ((range.start - t.start) / ps, (range.end - t.start) / ps)
}

/// `rwxp` → PROT_*.
fn perms_to_prot(perms: &[u8; 4]) -> i32 {
    let mut p = libc::PROT_NONE;
    if perms[0] == b'r' {
        p |= libc::PROT_READ;
    }
    if perms[1] == b'w' {
        p |= PROT_WRITE;
    }
    if perms[2] == b'x' {
        p |= libc::PROT_EXEC;
    }
    p
}

/// Re-arms the reported pages `[s, d)`, then clears their written bits.
/// The flag must be held. A page that cannot be re-armed keeps its bit
/// (it will be reported again): never a lost write.
fn rearm(t: &Tracking, s: usize, d: usize) {
    let mut i = s;
    while let Some((a, b, prot)) = t.prot_run(i, d) {
        let armed = prot & PROT_WRITE == 0
            || match t.protect_run(a, b, prot, true) {
                Ok(()) => true,
                Err(libc::ENOMEM) => {
                    // Re-arming only the reported part would split a VMA.
                    // Arm the whole writable run around it instead: both
                    // ends are VMA boundaries already, so it only merges.
                    // Its other pages keep their written bits.
                    MAP_PRESSURE.store(true, Relaxed);
                    let (ea, eb) = open_run_around(t, a, b, prot);
                    t.protect_run(ea, eb, prot, true).is_ok()
                }
                Err(_) => false,
            };
        if armed {
            // Only now, with the pages read-only: a write from here on
            // faults and waits for the flag, then sets the bit again.
            t.written.clear_range(a, b);
            t.guessed.clear_range(a, b);
        }
        i = b;
    }
}

/// Re-arms the reported runs `runs` (in address order, inside the
/// region) with one mprotect over their whole span, as a reset of the
/// span would (the pages between the runs are armed already, or were
/// opened by a write since the scan: those are armed too but keep their
/// written bit). The flag must be held. False, with nothing cleared, if
/// the span is not one caller protection or the mprotect failed: the
/// caller re-arms run by run instead.
fn rearm_span(t: &Tracking, runs: &[(usize, usize)]) -> bool {
    let (Some(&(s, _)), Some(&(_, d))) = (runs.first(), runs.last()) else {
        return true;
    };
    let Some(prot) = t.uniform_writable_prot(s, d) else {
        return false;
    };
    if t.arm_uniform_span(s, d, prot).is_err() {
        MAP_PRESSURE.store(true, Relaxed);
        return false;
    }
    for &(a, b) in runs {
        t.written.clear_range(a, b);
        t.guessed.clear_range(a, b);
    }
    true
}

/// Pagemap entries read per system call while settling (32 KiB of stack).
const SETTLE_CHUNK: usize = 4096;

/// Settles the guessed pages of `[lo, hi)` (see `Tracking::guessed`): arms
/// them, then keeps W only for those the kernel shows populated or
/// swapped. Private memory only. Call with the region's `ops` lock held.
///
/// Why this loses no write: a guessed page had W clear (was armed, so
/// every earlier write was reported) when its block was opened. Step 1
/// arms it again, and A stays set from then on until a write faults on it
/// (only the handler clears A while we hold `ops`, and it clears A before
/// the write can land). So a page that still has A set in step 2, after a
/// pagemap read that followed step 1, was not written since step 1; and a
/// write before step 1 would have populated it (or left it swapped): the
/// only way back to "not populated" is the caller discarding the page
/// (`MADV_DONTNEED`), which Windows treats the same way (decommitting a
/// written page clears its written state).
fn settle(t: &Tracking, lo: usize, hi: usize) {
    let mut i = lo;
    while let Some(s) = t.guessed.next_set(i, hi) {
        let e = t.guessed.next_clear(s, hi).unwrap_or(hi);
        settle_run(t, s, e);
        i = e;
    }
}

fn settle_run(t: &Tracking, s: usize, e: usize) {
    // Step 0: a look first. Where every guessed page is populated nothing
    // can be dropped: those pages stop being guesses (they stay written, and
    // are re-armed by the next reset), and the run is not armed for nothing.
    // (Clearing G without the flag is safe: the handler sets G only on pages
    // whose W is clear, and only we clear W.)
    let mut unpopulated = false;
    let whole = for_each_populated_chunk(t, s, e, |words| {
        for &(w, span, populated) in words {
            let g = span & t.guessed.word(w);
            if g & !populated != 0 {
                unpopulated = true;
            } else {
                t.guessed.and_word(w, !g);
            }
        }
    });
    if !whole || !unpopulated {
        return; // (a pagemap error leaves the rest guessed: reported whole)
    }
    // Step 1: arm the guessed run together with the open pages around it
    // (a whole open run: its ends are VMA boundaries, so this only merges;
    // those pages keep their written bits).
    critical(t, |t| {
        let mut i = s;
        while let Some((a, b, prot)) = t.prot_run(i, e) {
            if prot & PROT_WRITE != 0 {
                let (ea, eb) = open_run_around(t, a, b, prot);
                if t.protect_run(ea, eb, prot, true).is_err() {
                    MAP_PRESSURE.store(true, Relaxed);
                }
            }
            i = b;
        }
    });
    // Step 2: read the pagemap again, then drop W where A is still set and
    // the page is not populated.
    for_each_populated_chunk(t, s, e, |words| {
        critical(t, |t| {
            for &(w, span, populated) in words {
                let settled = span & t.guessed.word(w) & t.armed.word(w);
                t.written.and_word(w, !(settled & !populated));
                t.guessed.and_word(w, !settled);
            }
        });
    });
}

/// Reads the pagemap of pages `[s, e)` in chunks and calls `f` per chunk
/// with one `(word, span, populated)` per bitmap word: `span` marks the
/// word's pages inside the range, `populated` those the kernel shows
/// present or swapped. False if a read failed (the chunks from there on are
/// skipped).
fn for_each_populated_chunk(
    t: &Tracking,
    s: usize,
    e: usize,
    mut f: impl FnMut(&[(usize, u64, u64)]),
) -> bool {
    let ps = page_size();
    let mut entries = [0u64; SETTLE_CHUNK];
    let mut words = [(0usize, 0u64, 0u64); SETTLE_CHUNK / 64 + 1];
    let mut c = s;
    while c < e {
        // Whole bitmap words per chunk (the first may start mid-word).
        let n = (e - c).min(SETTLE_CHUNK - c % 64);
        let Some(addr) = t.addr(c) else { return false };
        if pagemap::read_entries(addr, ps, &mut entries[..n]).is_err() {
            return false;
        }
        let mut k = 0;
        let mut len = 0;
        while k < n {
            let first = (c + k) % 64;
            let count = (64 - first).min(n - k);
            let mut populated = 0u64;
            for (j, entry) in entries[k..k + count].iter().enumerate() {
                if entry & (PM_PRESENT | PM_SWAP) != 0 {
                    populated |= 1 << (first + j);
                }
            }
            let span = if count == 64 {
                u64::MAX
            } else {
                ((1u64 << count) - 1) << first
            };
            words[len] = ((c + k) / 64, span, populated);
            len += 1;
            k += count;
        }
        f(&words[..len]);
        c += n;
    }
    true
}

/// The maximal run around `[a, b)` of un-armed pages with caller
/// protection `prot`.
fn open_run_around(t: &Tracking, a: usize, b: usize, prot: i32) -> (usize, usize) {
    let same = |i: usize| t.caller_prot(i) == prot && !t.is_armed(i);
    let mut ea = a;
    while ea > 0 && same(ea - 1) {
        ea -= 1;
    }
    let mut eb = b;
    while eb < t.pages && same(eb) {
        eb += 1;
    }
    (ea, eb)
}

/// Collects reported runs and re-arms them in batches.
struct Rearm<'a> {
    t: &'a Tracking,
    runs: [(usize, usize); BATCH],
    len: usize,
}

impl<'a> Rearm<'a> {
    fn new(t: &'a Tracking) -> Rearm<'a> {
        Rearm {
            t,
            runs: [(0, 0); BATCH],
            len: 0,
        }
    }

    fn push(&mut self, s: usize, d: usize) {
        if self.len == BATCH {
            self.flush();
        }
        self.runs[self.len] = (s, d);
        self.len += 1;
    }

    fn flush(&mut self) {
        let runs = &self.runs[..self.len];
        if !runs.is_empty() {
            critical(self.t, |t| {
                if !rearm_span(t, runs) {
                    runs.iter().for_each(|&(s, d)| rearm(t, s, d));
                }
            });
        }
        self.len = 0;
    }
}

/// Sets the caller's protection `prot` on `[a, b)`, armed or not. The
/// flag must be held.
fn set_protection(
    t: &Tracking,
    a: usize,
    b: usize,
    prot: i32,
    arm: bool,
) -> std::result::Result<(), c_int> {
    let before = t.boundaries_now(a, b);
    let target = if arm { prot & !PROT_WRITE } else { prot };
    let mut result = t.mprotect_pages(a, b, target);
    let mut armed = arm;
    if result == Err(libc::ENOMEM) && arm {
        // Splitting off a read-only run failed: leave the pages writable
        // and count them written instead.
        t.set_caller_prot(a, b, prot);
        t.set_written(a, b);
        armed = false;
        result = t.mprotect_pages(a, b, prot);
    }
    if result.is_err() {
        // mprotect may have changed part of the range: the safe reading
        // is "written, not armed" (set W while the old protection still
        // says which pages were writable).
        t.set_written(a, b);
        armed = false;
    }
    t.set_caller_prot(a, b, prot);
    t.set_armed_bits(a, b, armed);
    t.account(t.boundaries_now(a, b) - before);
    result
}

impl Backend for Mprotect {
    fn kind(&self) -> BackendKind {
        BackendKind::Mprotect
    }

    fn new_state(&self, range: PageRange) -> Box<dyn Any + Send + Sync> {
        Box::new(State {
            t: Tracking::new(range.start, range.pages(), page_size()),
            ops: Mutex::new(()),
            private: AtomicBool::new(false),
        })
    }

    fn watch(&self, r: &Region, fresh: bool) -> Result<()> {
        let st = state(r)?;
        let t = &st.t;
        let _ops = st.ops.lock();
        // Give every VMA of the region an anon_vma before we split it. A
        // VMA split off one without an anon_vma gets its own on first
        // write, and VMAs with different anon_vmas never merge: every page
        // ever opened would stay a VMA of its own even after re-arming
        // (measured: 10 written pages, 20 VMAs, still 10 after re-arming
        // everything; with one page populated first: back to 1).
        // MADV_POPULATE_WRITE faults one page in as if written, keeping its
        // contents. Failure (kernels before 5.14) only costs merging.
        if fresh {
            let _ = mm::advise(r.range.start, page_size(), libc::MADV_POPULATE_WRITE);
            st.private.store(true, Relaxed); // our own private anonymous mapping
        } else {
            // The caller's memory: keep its protection (PROT_EXEC too).
            let maps = mm::mappings_in(r.range.start, r.range.end)?;
            st.private
                .store(maps.iter().all(|m| m.perms[3] == b'p'), Relaxed);
            for m in maps {
                let s = m.start.max(r.range.start);
                let e = m.end.min(r.range.end);
                let (a, b) = indices(t, PageRange::new(s, e));
                t.set_caller_prot(a, b, perms_to_prot(&m.perms));
                let _ = mm::advise(s, page_size(), libc::MADV_POPULATE_WRITE);
            }
        }
        let armed = critical(t, |t| {
            let mut i = 0;
            while let Some((s, e, prot)) = t.prot_run(i, t.pages) {
                if prot & PROT_WRITE != 0 {
                    t.protect_run(s, e, prot, true)?;
                }
                i = e;
            }
            Ok(())
        });
        if let Err(errno) = armed {
            // Give the caller its memory back as it was.
            let _ = critical(t, |t| t.open(0, t.pages));
            return Err(Error::from_errno(errno));
        }
        Ok(())
    }

    fn unwatch(&self, r: &Region) -> Result<()> {
        let st = state(r)?;
        let t = &st.t;
        let _ops = st.ops.lock();
        // Whole caller-protection runs only: merges VMAs, needs no split.
        critical(t, |t| t.open(0, t.pages)).map_err(Error::from_errno)?;
        let ours = t.vmas.swap(0, Relaxed);
        VMA_ESTIMATE.fetch_sub(ours, Relaxed);
        Ok(())
    }

    fn scan(&self, r: &Region, range: PageRange, reset: bool, sink: &mut Sink<'_>) -> Result<()> {
        let st = state(r)?;
        let t = &st.t;
        let _ops = st.ops.lock();
        if reset {
            refresh_if_pressed();
        }
        let ps = page_size();
        let (lo, hi) = indices(t, range);
        if st.private.load(Relaxed) && t.any_guessed.load(Acquire) {
            if lo == 0 && hi == t.pages {
                // Before reading the G bits: one set from now on sets the
                // flag again.
                t.any_guessed.store(false, Release);
            }
            settle(t, lo, hi);
        }
        let mut rearm = Rearm::new(t);
        let mut i = lo;
        while i < hi {
            let Some(s) = t.written.next_set(i, hi) else {
                break;
            };
            let e = t.written.next_clear(s, hi).unwrap_or(hi);
            // Report first (this writes the caller's array, which may itself
            // be watched: no flag may be held here), re-arm afterwards. A
            // write landing in between is covered by this report.
            let done = sink.push(t.start + s * ps, t.start + e * ps);
            let d = (done - t.start) / ps;
            if reset && d > s {
                rearm.push(s, d);
            }
            if d < e {
                break; // the output is full
            }
            i = e;
        }
        rearm.flush();
        Ok(())
    }

    fn reset(&self, r: &Region, range: PageRange) -> Result<()> {
        let st = state(r)?;
        let t = &st.t;
        let _ops = st.ops.lock();
        refresh_if_pressed();
        let (lo, hi) = indices(t, range);
        let mut rearm = Rearm::new(t);
        let mut i = lo;
        while let Some(s) = t.written.next_set(i, hi) {
            let e = t.written.next_clear(s, hi).unwrap_or(hi);
            rearm.push(s, e);
            i = e;
        }
        rearm.flush();
        Ok(())
    }

    fn protect(&self, r: &Region, range: PageRange, prot: i32) -> Result<()> {
        let st = state(r)?;
        let t = &st.t;
        let _ops = st.ops.lock();
        let (lo, hi) = indices(t, range);
        critical(t, |t| {
            let mut i = lo;
            while i < hi {
                // One mprotect per run with one target: a writable
                // protection arms the unwritten pages and not the others.
                let (e, arm) = if prot & PROT_WRITE != 0 {
                    let written = t.written.get(i);
                    let e = if written {
                        t.written.next_clear(i, hi)
                    } else {
                        t.written.next_set(i, hi)
                    };
                    (e.unwrap_or(hi), !written)
                } else {
                    (hi, false)
                };
                set_protection(t, i, e, prot, arm)?;
                i = e;
            }
            Ok(())
        })
        .map_err(Error::from_errno)
    }

    fn prepare_kernel_write(&self, r: &Region, range: PageRange) -> Result<()> {
        let st = state(r)?;
        let t = &st.t;
        let _ops = st.ops.lock();
        let (lo, hi) = indices(t, range);
        // Marks written, then unprotects, exactly like a fault would, with
        // the same fallback to larger blocks under map-count pressure.
        if critical(t, |t| t.open_covering(lo, hi)) {
            Ok(())
        } else {
            Err(Error::NOMEM)
        }
    }

    fn after_fork(&self, _regions: &[Arc<Region>]) -> Result<()> {
        // Protections, handler and bitmaps are inherited: nothing to do.
        Ok(())
    }
}
