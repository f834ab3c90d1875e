//! The soft-dirty backend: the PTE soft-dirty bit (pagemap bit 55) and
//! `clear_refs`, for kernels with `CONFIG_MEM_SOFT_DIRTY` (x86-64, and
//! most distribution kernels; not arm64).
//!
//! # Mechanism
//!
//! The kernel sets a page's soft-dirty bit on every write; writing `4` to
//! `/proc/self/clear_refs` clears the bit of **every page of the process**
//! and write-protects the PTEs so the next write faults and sets it again
//! (`Documentation/admin-guide/mm/soft-dirty.rst`). A VMA flagged
//! `VM_SOFTDIRTY` (new, expanded or merged mappings) reads soft-dirty on
//! every page until the next clear.
//!
//! The kernel bits are read with `/proc/self/pagemap` (one `u64` per page,
//! any kernel) or, where the kernel has it (6.8+), with `PAGEMAP_SCAN`
//! asking for `PAGE_IS_SOFT_DIRTY` runs. [`probe`] tries both on a scratch
//! page and picks `PAGEMAP_SCAN` only if it agrees with pagemap; setting
//! `WW_SOFT_DIRTY_READER=pagemap` forces pagemap reads (to test that path
//! on new kernels). Both report `VM_SOFTDIRTY` VMAs as all soft-dirty, so
//! merges and remaps over-report, never under-report.
//!
//! Each region keeps, per page, a software bit `written` (harvested kernel
//! bits and faults, see below). A page is reported written when
//! `written | kernel bit`.
//!
//! # Exact partial reset over a process-wide clear
//!
//! Because a clear wipes every page of the process, before any clear we
//! **harvest**: OR the kernel bit of every page of every watched region
//! into `written` (all live regions of `registry::all()`, reading only
//! watched ranges, in batches). After the clear we clear `written` for
//! exactly the pages being reset. So a reset of region A (or of part of it)
//! never loses or invents a write in region B or in the rest of A. Clears
//! are serialized by one mutex, `CLEAR`.
//!
//! Get-with-reset chooses the pages to return *after* the harvest, from
//! `written`: the first pages (or runs) of the range that fit the caller's
//! array. Exactly those are cleared; the rest keep their bit. The chosen
//! set is copied into a private bitmap and given to the caller's array only
//! after the clear is over (the array may itself be watched memory).
//!
//! # The gap, and why no write is lost in it
//!
//! A write that lands after a page's kernel bit was read but before the
//! process-wide clear would be wiped by the clear and never harvested. So
//! the harvest and the clear run inside a **gap** during which no watched
//! page can be written:
//!
//! 1. The clearing thread takes `CLEAR` with **every signal blocked**
//!    (held that way for as long as the mutex is held), makes its
//!    allocations and reads `/proc/self/maps` (see "Costs and limits"),
//!    then makes `GEN` odd ("gap open").
//! 2. It harvests every region once, before any `mprotect` (see "VMA
//!    merges").
//! 3. It `mprotect`s to read-only every page of every region whose caller
//!    protection is writable (the per-page `readonly` record kept from
//!    `ww_protect`), except pages prepared for kernel writes (`sticky`, see
//!    below). `PROT_EXEC` is kept where the caller had it.
//! 4. Per region, it hashes the sticky pages that may end the gap
//!    unwritten and harvests; checks the sentinel (see "Interference");
//!    chooses the pages a get-with-reset returns; `clear_refs`; dirties the
//!    sentinel; clears the `written` bits being reset; marks written every
//!    hashed page whose content changed and every page that sits in a
//!    writable mapping now. If there was such a mapping, steps 3 and 4 run
//!    again (see "Mappings changed during the gap").
//! 5. It restores every page it protected to exactly the caller's
//!    protection (and a region's in-place growth, see "Costs and limits"),
//!    makes `GEN` even ("gap closed"), wakes the held writers and releases
//!    the mutex.
//!
//! **A writer thread** that writes a protected page during the gap takes a
//! SIGSEGV (`SEGV_ACCERR`). The handler (`crate::signal`) calls
//! `on_fault`, which records the page in `written` and waits until `GEN`
//! changes (a few `sched_yield`s, then a `futex(2)` sleep on `GEN`, woken
//! when the gap closes: spinners would starve the clearing thread on a
//! busy machine), then returns; the write is
//! retried and now succeeds, after the clear, so the kernel bit is set too.
//! The write is therefore seen either by the harvest (it happened before
//! the protection), or by the handler's record and the kernel bit (it
//! happened after the gap). It is delayed by at most one gap, never lost.
//! A fault whose handler runs only after the gap is over is claimed too
//! (the write is simply retried); a page the caller made non-writable is
//! never claimed, so genuine faults still reach the previous handler.
//!
//! **The clearing thread** writes no watched memory during the gap (its
//! buffers were allocated before, the caller's array is written after; it
//! only reads prepared pages, which are never protected), takes no lock
//! another thread could hold while writing watched memory (no malloc, no
//! registry lock: only `mprotect`, `mincore`, `pread`, `open`/`read`/
//! `write`/`close` and atomics), and has all signals blocked: a host
//! signal handler that writes watched memory therefore cannot run on it
//! and spin forever waiting for its own gap; it runs once the mutex is
//! released.
//!
//! **A kernel write** (`read(2)`, `recv(2)`, ... into watched memory):
//! outside gaps it just works and is tracked (the kernel's own write fault
//! sets the soft-dirty bit). During a gap, into a gap-protected page, the
//! kernel's copy fails and the syscall returns `EFAULT` (or a short count):
//! no signal is raised, so nothing can wait for the gap. Pages passed to
//! `ww_prepare_kernel_write` therefore become **sticky**, for as long as
//! the region is watched: they are marked written at once and are never
//! protected by a gap, so a syscall into them never fails, however it
//! overlaps gaps (the header promises no `EFAULT` after preparing, and a
//! blocking `read(2)` may stay pending across any number of resets).
//!
//! A sticky page is not held still during a gap, so a write to it between
//! its harvest and the clear would be wiped. While its `written` bit is set
//! that cannot matter (only a reset clears the bit). For every sticky page
//! that may end the gap with the bit clear (it is clear now, or the gap
//! may reset it), the gap hashes the page's content before the harvest and
//! again after the clear, and marks it written if the content changed. So
//! prepared pages reset exactly, and a write to one is missed only if it
//! lands inside that window *and* leaves the page's bytes as they were:
//! the one write this backend cannot see. The cost is reading such pages
//! twice per gap, for as long as the region lives.
//!
//! **Mappings changed during the gap.** The protection is on the VMAs that
//! existed when the gap opened. A mapping the caller moves or maps into a
//! region while the gap is open (`mremap`, `MAP_FIXED`, a decommit and
//! recommit) arrives writable, and a write to it before the clear would be
//! wiped (seen on 6.12: an `mremap` into a region racing another thread's
//! reset lost the next write). So right after the clear the gap reads
//! `/proc/self/maps` (into a buffer sized before the gap) and marks written
//! every non-prepared page of a region that lies in a writable VMA. Normally
//! there is none; if the text does not fit, every page is marked written.
//! One more round (protect, harvest, clear, check) then follows, up to
//! four, so that no mapping that arrived during the gap still carries
//! `VM_SOFTDIRTY` when protections are restored (see "VMA merges"). Left
//! open: a mapping that was writable during the window and is made
//! non-writable again before that read.
//!
//! **VMA merges** (6.1 to 6.18). For a VMA flagged `VM_SOFTDIRTY`, the
//! kernel considers soft-dirty tracking off: `mprotect(RW)` may make clean
//! PTEs writable without a fault (`can_change_pte_writable`), so writes to
//! them set no PTE bit and only the VMA flag records them. VMA merges
//! ignore the flag and keep the surviving VMA's flags, so a later merge can
//! drop it, and those writes read clean (upstream "mm: propagate
//! VM_SOFTDIRTY on merge", 6.19). Our own `mprotect` calls merge VMAs, so
//! every gap first harvests all regions *before* protecting them (a flagged
//! VMA reads dirty on every page, so its pages stay marked whatever is
//! written to them afterwards), and `ww_protect` harvests the region and
//! its neighbours before its `mprotect`. Merges made by the caller outside
//! the library (raw `mprotect`/`madvise` on or next to watched memory) can
//! still drop the flag on these kernels.
//!
//! # Born clean
//!
//! A fresh `ww_alloc` mapping is `VM_SOFTDIRTY` (every page reads dirty) and
//! caller memory passed to `ww_watch` carries its old bits, so `watch` runs
//! a gap that harvests the other regions, clears, and resets the new
//! region: it starts with no page written, and earlier writes are not
//! reported. The API registers a region *before* calling `watch`, so every
//! gap that could clear a region's bits has that region in its list (a gap
//! holding a list taken just before the registration would otherwise wipe
//! a write made right after `ww_alloc` returned); a gap that runs before
//! the region's own watch gap only harvests bits which that gap resets. A
//! write racing the `watch` call itself may or may not be reported.
//!
//! # Interference
//!
//! Another soft-dirty user in the process (a GC using soft-dirty, another
//! copy of this library) or CRIU writing our `clear_refs` from outside
//! clears our bits too. We keep one **sentinel** page (between two
//! `PROT_NONE` guards, so it never merges into a `VM_SOFTDIRTY` VMA) and
//! write it right after each of our clears. Every harvest reads the
//! sentinel *after* reading region bits: if it reads clean, someone else
//! cleared since our last clear, so every page of every region is marked
//! written (over-report instead of losing writes), and the sentinel is
//! dirtied again. A foreign clear landing inside our gap loses nothing (the
//! gap's own clear follows). Our own [`probe`] clears a few times, once per
//! process and before any region exists. Foreign users are disturbed by our
//! clears in turn; that cannot be avoided.
//!
//! # Fork
//!
//! A `pthread_atfork` handler takes `CLEAR` around `fork`, so a child never
//! starts inside a gap (with pages protected and the mutex held by a thread
//! that does not exist there). In the child [`Backend::after_fork`] marks
//! every page of every region written: its first get over-reports, and no
//! write is missed (the pagemap descriptor is re-opened by
//! `sys::pagemap`, `clear_refs` is opened per call).
//!
//! # Costs and limits
//!
//! Every reset, get-with-reset and watch is a process-wide clear (the
//! kernel walks the whole address space), two harvests of every watched
//! page (pagemap: 8 bytes read per page; `PAGEMAP_SCAN`: cost grows with
//! populated memory), two or three reads of `/proc/self/maps`, and two
//! `mprotect` calls per run of writable pages of every region; writers to
//! watched memory are held for the length of the gap. A plain get only
//! harvests its own range. Soft-dirty is per 2 MiB on a PMD-mapped THP
//! (the API applies `MADV_NOHUGEPAGE`; huge pages that already exist in
//! `ww_watch` memory report 512 pages per write until split). Shared
//! (shmem) memory loses the bit when a page is swapped out, so a write to
//! shared watched memory that is swapped out before the next harvest can be
//! missed (pagemap.rst); private anonymous memory keeps it in the swap entry.
//!
//! While a gap is open, `/proc/self/maps` shows watched read-write pages
//! as read-only. A watched mapping grown in place (`mremap` without
//! `MREMAP_MAYMOVE`) while another thread's gap is open grows read-only;
//! the gap gives the grown part the caller's protection back when it
//! closes, but a write to the grown part before that faults outside every
//! region, is not a write-watch fault, and kills the process like any
//! other. Grow watched memory with `MREMAP_MAYMOVE` (and watch again), or
//! watch the whole reservation up front.

use std::any::Any;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, MutexGuard};

use super::{Backend, BackendKind, Limit, Sink};
use crate::bitmap::{AtomicBitmap, for_each_run_in_words, word_mask};
use crate::error::{Error, Result};
use crate::page::{PageRange, page_size};
use crate::registry::{self, Region};
use crate::stats::{self, FAULTS_HANDLED};
use crate::sys::pagemap::{self, EMPTY_REGION, Scan};
use crate::sys::uapi::{PAGE_IS_SOFT_DIRTY, PM_SOFT_DIRTY};
use crate::sys::{self, SignalsBlocked, mm};

/// Pagemap entries read per `pread` (4 KiB of stack).
const PAGEMAP_BATCH: usize = 512;
/// `PAGEMAP_SCAN` output entries per call (3 KiB of stack).
const SCAN_BUF: usize = 128;
/// `sched_yield` calls a held writer makes before it sleeps on the futex.
const FAULT_SPINS: u32 = 16;
/// Protect-harvest-clear rounds per gap at most (see
/// [`SoftDirty::protect_harvest_clear`]).
const MAX_ROUNDS: usize = 4;
/// Faults claimed per gap generation after the gap closed (see [`on_fault`]).
const LATE_CLAIMS_PER_GEN: u64 = 1 << 14;

/// Serializes clears and every change to the per-page records. Only ever
/// held with all signals blocked on the holding thread (see [`Held`]).
/// Guards the gap's reusable scratch space.
static CLEAR: Mutex<Scratch> = Mutex::new(Scratch {
    maps: Vec::new(),
    maps_len: 0,
});

/// Buffers a gap needs, kept across gaps (a gap must not allocate).
struct Scratch {
    /// `/proc/self/maps` text read right after the clear.
    maps: Vec<u8>,
    /// Length of that text last time (to size the buffer).
    maps_len: usize,
}

/// Gap generation: odd while a gap is open (pages protected), even
/// otherwise. Written only under [`CLEAR`]; read by [`on_fault`].
/// 32 bits so that `on_fault` can sleep on it with futex(2); it wraps after
/// 2^31 gaps, harmlessly (only changes are compared).
static GEN: AtomicU32 = AtomicU32::new(0);

/// `(generation << 20) | count` of faults claimed by [`on_fault`] while no
/// gap was open (see there).
static LATE_CLAIMS: AtomicU64 = AtomicU64::new(0);

/// How the kernel's soft-dirty bits are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    /// `/proc/self/pagemap` entries, bit 55 (any kernel).
    Pagemap,
    /// `PAGEMAP_SCAN` with `PAGE_IS_SOFT_DIRTY` (Linux 6.8+).
    Scan,
}

/// The reader [`probe`] found to work.
static PROBED_READER: OnceLock<Reader> = OnceLock::new();

/// The backend.
pub struct SoftDirty {
    reader: Reader,
    /// Our sentinel page (see "Interference" in the module docs).
    sentinel: usize,
}

/// Per-region state: one bit per page in each map. Only `written` changes
/// outside [`CLEAR`] (set by [`on_fault`], for pages that are not sticky).
struct State {
    pages: usize,
    /// Written since the last reset, as far as harvests and faults know.
    written: AtomicBitmap,
    /// Prepared for kernel writes: never gap-protected; compared by content
    /// across gaps while not written (module docs, "kernel write").
    sticky: AtomicBitmap,
    /// The caller's protection lacks `PROT_WRITE` (`ww_protect`).
    readonly: AtomicBitmap,
    /// The caller's protection has `PROT_EXEC`.
    exec: AtomicBitmap,
    /// Set by `unwatch` under `CLEAR`: gaps leave the region alone from
    /// then on, although it stays in the registry a little longer (the API
    /// removes it only after `unwatch`, and then may unmap it).
    retired: AtomicBool,
}

impl State {
    fn new(pages: usize) -> State {
        State {
            pages,
            written: AtomicBitmap::new(pages),
            sticky: AtomicBitmap::new(pages),
            readonly: AtomicBitmap::new(pages),
            exec: AtomicBitmap::new(pages),
            retired: AtomicBool::new(false),
        }
    }
}

/// The regions gaps and harvests act on: every registered region that
/// `unwatch` has not retired. Call with `CLEAR` held.
fn live_regions() -> Vec<Arc<Region>> {
    let mut list = registry::all();
    list.retain(|r| !state(r).retired.load(Ordering::SeqCst));
    list
}

fn state(r: &Region) -> &State {
    r.state::<State>()
}

static INSTANCE: OnceLock<SoftDirty> = OnceLock::new();

/// The process-wide instance; `ENOTSUP` if the probe failed.
pub fn instance() -> Result<&'static dyn Backend> {
    let b = super::instance_once(&INSTANCE, BackendKind::SoftDirty, || {
        let probed = *PROBED_READER.get().ok_or(Error::NOTSUP)?;
        let reader = match std::env::var("WW_SOFT_DIRTY_READER").as_deref() {
            Ok("pagemap") => Reader::Pagemap,
            _ => probed,
        };
        crate::signal::install()?;
        let sentinel = new_sentinel()?;
        // SAFETY: the three handlers are plain functions that only lock and
        // unlock our mutex and restore the signal mask.
        let rc = unsafe {
            libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child))
        };
        if rc != 0 {
            return Err(Error::from_errno(rc));
        }
        Ok(SoftDirty { reader, sentinel })
    })?;
    Ok(b)
}

/// Maps the sentinel page between two `PROT_NONE` guards and dirties it.
fn new_sentinel() -> Result<usize> {
    let ps = page_size();
    let map = mm::reserve(3 * ps)?;
    // SAFETY: the middle page of our fresh reservation.
    unsafe { mm::protect(map + ps, ps, libc::PROT_READ | libc::PROT_WRITE) }?;
    let sentinel = map + ps;
    touch(sentinel);
    Ok(sentinel)
}

/// Writes one byte of a page we own and keep read-write (scratch or sentinel).
fn touch(page: usize) {
    // SAFETY: callers pass only our own private read-write pages (the
    // probe's scratch page, the sentinel), which no Rust reference covers.
    unsafe { std::ptr::write_volatile(page as *mut u8, 1) };
}

/// Reads the soft-dirty bit of one page through pagemap.
fn page_is_soft_dirty(page: usize) -> io::Result<bool> {
    let mut e = [0u64; 1];
    pagemap::read_entries(page, page_size(), &mut e)?;
    Ok(e[0] & PM_SOFT_DIRTY != 0)
}

// ---------------------------------------------------------------------------
// Holding the clear mutex
// ---------------------------------------------------------------------------

/// [`CLEAR`] held with every signal blocked on this thread. Fields drop in
/// order: the mutex is released before the signal mask is restored.
struct Held {
    scratch: MutexGuard<'static, Scratch>,
    _signals: SignalsBlocked,
}

fn hold() -> Held {
    let signals = sys::block_signals();
    Held {
        scratch: CLEAR.lock(),
        _signals: signals,
    }
}

/// The signal mask saved by [`fork_prepare`], restored after `fork`.
static FORK_SIGNALS: Mutex<Option<SignalsBlocked>> = Mutex::new(None);

extern "C" fn fork_prepare() {
    let signals = sys::block_signals();
    std::mem::forget(CLEAR.lock());
    *FORK_SIGNALS.lock() = Some(signals);
}

extern "C" fn fork_parent() {
    fork_release();
}

extern "C" fn fork_child() {
    fork_release();
}

fn fork_release() {
    let signals = FORK_SIGNALS.lock().take();
    // SAFETY: `fork_prepare` locked CLEAR on this thread and forgot the
    // guard; in the child this thread is the copy of that one.
    unsafe { CLEAR.force_unlock() };
    drop(signals);
}

// ---------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------

/// What a gap does besides harvesting and clearing.
enum Plan<'a> {
    /// Born clean: `r` (registered, possibly harvested by earlier gaps)
    /// starts with no page written.
    Watch { r: &'a Region },
    /// `ResetWriteWatch` of pages `[from, to)` of `r`.
    Reset {
        r: &'a Region,
        from: usize,
        to: usize,
    },
    /// Get-with-reset of `[from, to)` in `r`: the first pages or runs that
    /// fit `limit` are copied into `taken` (bit 0 = page `from`) and reset.
    Take {
        r: &'a Region,
        from: usize,
        to: usize,
        limit: Limit,
        taken: &'a AtomicBitmap,
    },
}

impl Plan<'_> {
    /// The region and pages whose `written` bits this gap may clear.
    fn scope(&self) -> (&Region, usize, usize) {
        match *self {
            Plan::Watch { r } => (r, 0, state(r).pages),
            Plan::Reset { r, from, to } | Plan::Take { r, from, to, .. } => (r, from, to),
        }
    }
}

/// A sticky page whose content is compared across a gap.
struct Hashed {
    /// Index into the gap's region list.
    region: usize,
    page: usize,
    /// False if the page was unmapped (nothing to compare).
    mapped: bool,
    hash: u64,
}

/// The sticky pages of `list` that may end the gap with `written` clear
/// (clear now, or in the plan's scope), skipping pages the caller made
/// non-writable. Allocates: call before the gap opens.
fn hash_list(list: &[Arc<Region>], plan: &Plan<'_>) -> Vec<Hashed> {
    let (scope_r, lo, hi) = plan.scope();
    let mut out = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let Some(st) = r.state.downcast_ref::<State>() else {
            continue;
        };
        let in_scope = std::ptr::eq(r.as_ref(), scope_r);
        let word = |w: usize| {
            let scope = if in_scope { word_mask(w, lo, hi) } else { 0 };
            st.sticky.word(w) & !st.readonly.word(w) & (!st.written.word(w) | scope)
        };
        for_each_run_in_words(word, 0, st.pages, |s, e| {
            out.extend((s..e).map(|page| Hashed {
                region: i,
                page,
                mapped: false,
                hash: 0,
            }));
            true
        });
    }
    out
}

/// After a clear: the gap protected every writable, unprepared page, but
/// a mapping the caller moved or mapped into a region while the gap was
/// open (`mremap`, `MAP_FIXED`, decommit/recommit) is not protected, and a
/// write to it before the clear was wiped. So every page of a region that
/// lies in a writable VMA now, and is not a prepared page (those are
/// writable on purpose and compared by content), is marked written. If
/// `/proc/self/maps` cannot be read or does not fit the buffer, every page
/// of every region is marked written instead. Returns whether such a
/// writable mapping was found (the gap then runs another round). Allocates
/// nothing.
fn mark_writable_vmas(list: &[Arc<Region>], scratch: &mut Scratch) -> bool {
    let complete = mm::read_maps_into(&mut scratch.maps).unwrap_or(false);
    scratch.maps_len = if complete {
        scratch.maps.len()
    } else {
        2 * scratch.maps.capacity()
    };
    let ps = page_size();
    if !complete {
        for r in list {
            if let Some(st) = r.state.downcast_ref::<State>() {
                st.written.set_range(0, st.pages);
            }
        }
        return false;
    }
    // One merged pass: the maps lines and `list` (the registry's order) are
    // both sorted by address, and regions do not overlap. (A pass over the
    // whole text per region made a gap quadratic in the number of regions.)
    let mut found = false;
    let mut first = 0; // regions before this one end at or below the VMA
    for (vs, ve, writable) in mm::maps_ranges(&scratch.maps) {
        while list.get(first).is_some_and(|r| r.range.end <= vs) {
            first += 1;
        }
        if !writable {
            continue;
        }
        for r in list[first..].iter().take_while(|r| r.range.start < ve) {
            let Some(st) = r.state.downcast_ref::<State>() else {
                continue;
            };
            let PageRange { start, end } = r.range;
            let (s, e) = (vs.max(start), ve.min(end));
            if s >= e {
                continue;
            }
            let (from, to) = ((s - start) / ps, (e - start).div_ceil(ps));
            let word = |w: usize| !st.sticky.word(w);
            for_each_run_in_words(word, from, to, |a, b| {
                st.written.set_range(a, b);
                found = true;
                true
            });
        }
    }
    found
}

/// A 64-bit hash of the page at `addr`'s content.
fn hash_page(addr: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..page_size() / 8 {
        // SAFETY: `addr` is a mapped, readable page of a watched region
        // (checked by the caller with mincore, caller protection not
        // PROT_NONE). Volatile: the kernel or another thread may be writing
        // the page; a torn value only makes the comparison say "changed".
        let w = unsafe { std::ptr::read_volatile((addr as *const u64).add(i)) };
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(23);
    }
    h
}

impl SoftDirty {
    /// ORs the kernel soft-dirty bits of pages `[from, to)` of `r` into
    /// `written`. Allocates nothing.
    fn harvest(&self, r: &Region, st: &State, from: usize, to: usize) -> io::Result<()> {
        let ps = page_size();
        let base = r.range.start;
        match self.reader {
            Reader::Pagemap => {
                let mut buf = [0u64; PAGEMAP_BATCH];
                let mut i = from;
                while i < to {
                    let n = (to - i).min(PAGEMAP_BATCH);
                    pagemap::read_entries(base + i * ps, ps, &mut buf[..n])?;
                    for (k, e) in buf[..n].iter().enumerate() {
                        if e & PM_SOFT_DIRTY != 0 {
                            st.written.set(i + k);
                        }
                    }
                    i += n;
                }
            }
            Reader::Scan => {
                let mut buf = [EMPTY_REGION; SCAN_BUF];
                let (start, end) = ((base + from * ps) as u64, (base + to * ps) as u64);
                let mut scan = Scan {
                    start,
                    end,
                    flags: 0,
                    max_pages: 0,
                    category_mask: PAGE_IS_SOFT_DIRTY as u64,
                    category_anyof_mask: 0,
                    return_mask: PAGE_IS_SOFT_DIRTY as u64,
                };
                while scan.start < scan.end {
                    let before = scan.start;
                    let n = scan.run(&mut buf)?;
                    for reg in &buf[..n] {
                        let (s, e) = (reg.start.max(start), reg.end.min(end));
                        if s < e {
                            let idx = |a: u64| (a as usize - base) / ps;
                            st.written.set_range(idx(s), idx(e));
                        }
                    }
                    if n == 0 && scan.start <= before {
                        return Err(io::Error::from_raw_os_error(libc::EIO));
                    }
                }
            }
        }
        Ok(())
    }

    /// After a harvest: if the sentinel reads clean, someone else cleared
    /// since our last clear, so every page of every region in `list` is
    /// marked written. Returns whether that happened (the caller dirties
    /// the sentinel again after its own clear, or at once if it makes none).
    fn foreign_clear_check(&self, list: &[Arc<Region>]) -> io::Result<bool> {
        if page_is_soft_dirty(self.sentinel)? {
            return Ok(false);
        }
        for r in list {
            if let Some(st) = r.state.downcast_ref::<State>() {
                st.written.set_range(0, st.pages);
            }
        }
        Ok(true)
    }

    /// Runs one gap (module docs, "The gap"). `held` is [`CLEAR`], held with
    /// signals blocked; `list` is every registered region, taken under it;
    /// `hashed` comes from [`hash_list`] for the same list and plan. Sizes
    /// the scratch buffer, then allocates nothing while the gap is open.
    fn gap(
        &self,
        held: &mut Held,
        list: &[Arc<Region>],
        plan: &Plan<'_>,
        hashed: &mut [Hashed],
    ) -> Result<()> {
        let scratch = &mut *held.scratch;
        if scratch.maps_len == 0 {
            scratch.maps_len = std::fs::read("/proc/self/maps").map_or(0, |t| t.len());
        }
        let want = 2 * scratch.maps_len + (64 << 10);
        scratch.maps.clear();
        scratch.maps.reserve(want);
        // Regions whose next page is not read-only now: if it is read-only
        // after the gap, their mapping grew while protected.
        let complete = mm::read_maps_into(&mut scratch.maps).unwrap_or(false);
        let open_tail: Vec<bool> = vmas_at_ends(list.iter(), &scratch.maps)
            .map(|(r, vma)| complete && gap_like_tail(r, vma).is_none())
            .collect();

        GEN.fetch_add(1, Ordering::SeqCst); // odd: open
        let result = self.protect_harvest_clear(list, plan, hashed, scratch);
        // Restore every region, also after a failure part-way (restoring a
        // page that was not protected is a no-op).
        for r in list {
            if let Some(st) = r.state.downcast_ref::<State>() {
                restore_or_abort(r, st);
            }
        }
        restore_grown_tails(list, &open_tail, scratch);
        GEN.fetch_add(1, Ordering::SeqCst); // even: closed
        sys::futex_wake_all(&GEN);
        result
    }

    fn protect_harvest_clear(
        &self,
        list: &[Arc<Region>],
        plan: &Plan<'_>,
        hashed: &mut [Hashed],
        scratch: &mut Scratch,
    ) -> Result<()> {
        // Pre-harvest, before our own mprotect calls can merge VMAs and drop
        // a VM_SOFTDIRTY flag (module docs, "VMA merges").
        self.harvest_all(list, plan, &mut [])?;
        for round in 0..MAX_ROUNDS {
            for r in list {
                if let Some(st) = r.state.downcast_ref::<State>() {
                    set_gap_protection(r, st, true)?;
                }
            }
            self.harvest_all(list, plan, hashed)?;
            self.foreign_clear_check(list)?;
            if round == 0
                && let Plan::Take {
                    r,
                    from,
                    to,
                    limit,
                    taken,
                } = *plan
            {
                choose(&state(r).written, from, to, limit, taken);
            }

            pagemap::clear_soft_dirty()?;
            touch(self.sentinel);

            if round == 0 {
                self.apply_reset(plan);
            }
            // Sticky pages stayed writable through the gap: one whose
            // content changed since before its harvest was written in it.
            let ps = page_size();
            for h in hashed.iter() {
                let r = &list[h.region];
                if h.mapped && hash_page(r.range.start + h.page * ps) != h.hash {
                    state(r).written.set(h.page);
                }
            }
            // A mapping that arrived during the gap was not protected: its
            // pages are marked written, and one more round protects it and
            // clears its VM_SOFTDIRTY before protections are restored.
            if !mark_writable_vmas(list, scratch) {
                break;
            }
        }
        Ok(())
    }

    /// Harvests every region of `list`, skipping the pages a Watch or Reset
    /// plan resets anyway; first hashes the prepared pages of each region
    /// that are in `hashed` (which is in region order).
    fn harvest_all(
        &self,
        list: &[Arc<Region>],
        plan: &Plan<'_>,
        hashed: &mut [Hashed],
    ) -> Result<()> {
        let ps = page_size();
        let (scope_r, lo, hi) = plan.scope();
        let mut next_hashed = 0;
        for (i, r) in list.iter().enumerate() {
            let Some(st) = r.state.downcast_ref::<State>() else {
                continue;
            };
            // Hash right before the harvest: a write in between is seen
            // twice (bit and content; a duplicate report), so the shorter
            // the better.
            while let Some(h) = hashed.get_mut(next_hashed).filter(|h| h.region == i) {
                let addr = r.range.start + h.page * ps;
                h.mapped = mm::page_is_mapped(addr);
                if h.mapped {
                    h.hash = hash_page(addr);
                }
                next_hashed += 1;
            }
            if std::ptr::eq(r.as_ref(), scope_r) && !matches!(plan, Plan::Take { .. }) {
                self.harvest(r, st, 0, lo)?;
                self.harvest(r, st, hi, st.pages)?;
            } else {
                self.harvest(r, st, 0, st.pages)?;
            }
        }
        Ok(())
    }

    /// Clears the `written` bits the plan resets (after the clear).
    fn apply_reset(&self, plan: &Plan<'_>) {
        let (_, lo, hi) = plan.scope();
        match *plan {
            Plan::Watch { r } | Plan::Reset { r, .. } => state(r).written.clear_range(lo, hi),
            Plan::Take {
                r, from, to, taken, ..
            } => {
                let st = state(r);
                taken.for_each_run(0, to - from, |s, e| {
                    st.written.clear_range(from + s, from + e);
                    true
                });
            }
        }
    }

    /// Reports the written pages of `[from, to)` into `sink` (no reset).
    fn report(r: &Region, st: &State, from: usize, to: usize, sink: &mut Sink<'_>) {
        let (base, ps) = (r.range.start, page_size());
        st.written.for_each_run(from, to, |s, e| {
            let (s, e) = (base + s * ps, base + e * ps);
            sink.push(s, e) == e && !sink.is_full()
        });
    }
}

/// Copies into `taken` (bit 0 = page `from`) the set bits of `[from, to)`
/// that fit `limit`: the first N pages, or the first N maximal runs.
fn choose(written: &AtomicBitmap, from: usize, to: usize, limit: Limit, taken: &AtomicBitmap) {
    match limit {
        Limit::Pages(mut left) => written.for_each_run(from, to, |s, e| {
            let take = (e - s).min(left);
            taken.set_range(s - from, s - from + take);
            left -= take;
            left > 0
        }),
        Limit::Runs(mut left) => written.for_each_run(from, to, |s, e| {
            if left == 0 {
                return false;
            }
            taken.set_range(s - from, e - from);
            left -= 1;
            left > 0
        }),
    }
}

/// Calls `f(start, end, exec)` for each run of pages of `r` that a gap
/// protects: caller-writable and not sticky, split by `PROT_EXEC`.
fn for_each_gap_run(st: &State, mut f: impl FnMut(usize, usize, bool) -> bool) {
    for exec in [false, true] {
        let word = |w| {
            let x = st.exec.word(w);
            !st.readonly.word(w) & !st.sticky.word(w) & if exec { x } else { !x }
        };
        let mut go = true;
        for_each_run_in_words(word, 0, st.pages, |s, e| {
            go = f(s, e, exec);
            go
        });
        if !go {
            return;
        }
    }
}

/// Makes the gap runs of `r` read-only (`on`) or gives them back the
/// caller's protection. Stops at the first error when protecting; when
/// restoring, tries every run and returns the first error.
///
/// Watched memory must stay mapped, but if the caller unmapped part of it
/// anyway, mprotect(2) fails with `ENOMEM` at the hole (having changed the
/// pages before it). Then the run is redone page by page and unmapped pages
/// are skipped: there is nothing to write in a hole, and a gap must never
/// leave mapped pages protected.
fn set_gap_protection(r: &Region, st: &State, on: bool) -> io::Result<()> {
    let ps = page_size();
    let mut first_err = None;
    for_each_gap_run(st, |s, e, exec| {
        let mut prot = libc::PROT_READ | if on { 0 } else { libc::PROT_WRITE };
        if exec {
            prot |= libc::PROT_EXEC;
        }
        // SAFETY: `[s, e)` is watched memory of a live region (its unwatch
        // waits for CLEAR, which we hold). Removing write access only makes
        // writers fault into `on_fault`, which waits for the restore.
        if unsafe { mm::protect(r.range.start + s * ps, (e - s) * ps, prot) }.is_ok() {
            return true;
        }
        for p in s..e {
            let page = r.range.start + p * ps;
            // SAFETY: as above, one page of the run.
            if let Err(err) = unsafe { mm::protect(page, ps, prot) }
                && mm::page_is_mapped(page)
            {
                first_err.get_or_insert(err);
                if on {
                    return false;
                }
            }
        }
        true
    });
    first_err.map_or(Ok(()), Err)
}

/// A mapping grown in place (`mremap` without `MREMAP_MAYMOVE`) while the
/// gap had its last pages read-only grows with *that* protection, past the
/// region where the restore does not reach. Called after the regions were
/// restored (which splits such a VMA at the region's end): for every region
/// whose next page was not read-only when the gap opened and now starts a
/// VMA with exactly the protection the gap gives the region's last page,
/// that VMA grew while protected (growing later inherits the restored
/// protection), so it gets the caller's protection of the last page. It
/// misjudges only memory right after a region that another thread made
/// read-only, or mapped read-only, while the gap was open: that becomes
/// writable. (A write to the grown part while the gap is still open
/// faults outside any region and is not ours: module docs, "Costs and
/// limits".)
fn restore_grown_tails(list: &[Arc<Region>], open_tail: &[bool], scratch: &mut Scratch) {
    let candidates = || {
        list.iter()
            .zip(open_tail)
            .filter(|(r, open)| **open && mm::page_is_mapped(r.range.end))
    };
    if candidates().next().is_none() || !mm::read_maps_into(&mut scratch.maps).unwrap_or(false) {
        return;
    }
    for (r, vma) in vmas_at_ends(candidates().map(|(r, _)| r), &scratch.maps) {
        let Some(st) = r.state.downcast_ref::<State>() else {
            continue;
        };
        let Some(vma_end) = gap_like_tail(r, vma) else {
            continue;
        };
        let end = r.range.end;
        let mut prot = libc::PROT_READ | libc::PROT_WRITE;
        if st.exec.try_get(st.pages - 1) == Some(true) {
            prot |= libc::PROT_EXEC;
        }
        // SAFETY: the tail is the caller's mapping, grown while our gap had
        // it read-only; this gives it the protection it was grown with (the
        // caller's protection of the region's last page).
        let _ = unsafe { mm::protect(end, vma_end - end, prot) };
    }
}

/// One `/proc/self/maps` line: start, end, permissions (`b"rw-p"`).
type Vma = (usize, usize, [u8; 4]);

/// Each region of `regions` (in address order) with the `/proc/self/maps`
/// line of `maps` that contains the region's end address, if any: one
/// merged pass over both. Allocates nothing.
fn vmas_at_ends<'a>(
    regions: impl Iterator<Item = &'a Arc<Region>>,
    maps: &'a [u8],
) -> impl Iterator<Item = (&'a Arc<Region>, Option<Vma>)> {
    let mut vmas = mm::maps_perms(maps).peekable();
    regions.map(move |r| {
        let end = r.range.end;
        while vmas.next_if(|&(_, e, _)| e <= end).is_some() {}
        let vma = vmas.peek().copied().filter(|&(s, _, _)| s <= end);
        (r, vma)
    })
}

/// If `vma`, the VMA at `r`'s end, starts there and has exactly the
/// protection a gap gives `r`'s last page (read-only, `PROT_EXEC` as the
/// caller has it), and that page is caller-writable: the VMA's end.
fn gap_like_tail(r: &Region, vma: Option<Vma>) -> Option<usize> {
    let st = r.state.downcast_ref::<State>()?;
    let last = st.pages.checked_sub(1)?;
    if st.readonly.try_get(last) != Some(false) {
        return None;
    }
    let exec = if st.exec.try_get(last) == Some(true) {
        b'x'
    } else {
        b'-'
    };
    let end = r.range.end;
    let (start, vma_end, perms) = vma.filter(|&(s, e, _)| s <= end && end < e)?;
    (start == end && perms[..3] == [b'r', b'-', exec]).then_some(vma_end)
}

/// Restores the caller's protection after a gap. Writers are waiting for
/// it; if `mprotect` keeps failing they would wait forever, so after many
/// tries this aborts the process with a message instead.
fn restore_or_abort(r: &Region, st: &State) {
    for _ in 0..1000 {
        if set_gap_protection(r, st, false).is_ok() {
            return;
        }
        sys::yield_now();
    }
    let msg = b"writewatch: soft-dirty: cannot restore page protection after a clear; aborting\n";
    // SAFETY: writes a static buffer to stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    std::process::abort();
}

impl Backend for SoftDirty {
    fn kind(&self) -> BackendKind {
        BackendKind::SoftDirty
    }

    fn new_state(&self, range: PageRange) -> Box<dyn Any + Send + Sync> {
        let st = State::new(range.pages());
        // Keep PROT_EXEC where the caller's memory has it: gaps restore
        // exactly the caller's protection. (Done here because the region is
        // registered, and so protected by gaps, before `watch` runs.)
        let ps = page_size();
        for m in mm::mappings_in(range.start, range.end).unwrap_or_default() {
            if m.perms[2] == b'x' {
                let s = m.start.max(range.start);
                let e = m.end.min(range.end);
                st.exec
                    .set_range((s - range.start) / ps, (e - range.start) / ps);
            }
        }
        Box::new(st)
    }

    fn watch(&self, r: &Region, _fresh: bool) -> Result<()> {
        let mut held = hold();
        let list = live_regions();
        let plan = Plan::Watch { r };
        let mut hashed = hash_list(&list, &plan);
        self.gap(&mut held, &list, &plan, &mut hashed)
    }

    fn unwatch(&self, r: &Region) -> Result<()> {
        // Waiting for CLEAR means no gap still has the region protected, and
        // marking it retired under CLEAR keeps every later gap away from it
        // (the API removes it from the registry only after this returns,
        // then may unmap it): the caller gets its memory back with its own
        // protection, and no gap ever touches memory that is gone or reused.
        let _held = hold();
        state(r).retired.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn scan(&self, r: &Region, range: PageRange, reset: bool, sink: &mut Sink<'_>) -> Result<()> {
        let st = state(r);
        let (from, to) = (r.page_index(range.start), r.page_index(range.end));
        if !reset {
            {
                let _held = hold();
                self.harvest(r, st, from, to)?;
                if !page_is_soft_dirty(self.sentinel)? {
                    self.foreign_clear_check(&live_regions())?;
                    touch(self.sentinel);
                }
            }
            Self::report(r, st, from, to, sink);
            return Ok(());
        }
        let limit = sink.remaining();
        if matches!(limit, Limit::Pages(0) | Limit::Runs(0)) {
            return Ok(());
        }
        let taken = AtomicBitmap::new(to - from);
        {
            let mut held = hold();
            let list = live_regions();
            let plan = Plan::Take {
                r,
                from,
                to,
                limit,
                taken: &taken,
            };
            let mut hashed = hash_list(&list, &plan);
            self.gap(&mut held, &list, &plan, &mut hashed)?;
        }
        // The caller's array may be watched memory: filled after the gap.
        let (base, ps) = (range.start, page_size());
        taken.for_each_run(0, to - from, |s, e| {
            let end = base + e * ps;
            let done = sink.push(base + s * ps, end);
            debug_assert_eq!(done, end, "chosen pages must fit the sink");
            true
        });
        Ok(())
    }

    fn reset(&self, r: &Region, range: PageRange) -> Result<()> {
        let (from, to) = (r.page_index(range.start), r.page_index(range.end));
        let mut held = hold();
        let list = live_regions();
        let plan = Plan::Reset { r, from, to };
        let mut hashed = hash_list(&list, &plan);
        self.gap(&mut held, &list, &plan, &mut hashed)
    }

    fn protect(&self, r: &Region, range: PageRange, prot: i32) -> Result<()> {
        let st = state(r);
        let (from, to) = (r.page_index(range.start), r.page_index(range.end));
        // Under CLEAR no gap is open, so the pages have the caller's
        // protection and the record changes together with it. Soft-dirty
        // bits live in the PTEs and survive mprotect(2), but the VMA merge
        // it may cause can drop a VM_SOFTDIRTY flag (module docs, "VMA
        // merges"): harvest this region and the regions next to the range
        // first.
        let _held = hold();
        self.harvest(r, st, 0, st.pages)?;
        let ps = page_size();
        for addr in [range.start.checked_sub(ps), Some(range.end)]
            .into_iter()
            .flatten()
        {
            let near = PageRange::new(addr, addr + ps);
            if let Some(n) = registry::find_containing(&near).filter(|n| {
                !std::ptr::eq(n.as_ref(), r) && !state(n).retired.load(Ordering::SeqCst)
            }) {
                let nst = state(&n);
                self.harvest(&n, nst, 0, nst.pages)?;
            }
        }
        // SAFETY: the API layer checked that `range` is watched memory; the
        // caller asked for this protection.
        unsafe { mm::protect(range.start, range.len(), prot) }?;
        if prot & libc::PROT_WRITE != 0 {
            st.readonly.clear_range(from, to);
        } else {
            st.readonly.set_range(from, to);
        }
        if prot & libc::PROT_EXEC != 0 {
            st.exec.set_range(from, to);
        } else {
            st.exec.clear_range(from, to);
        }
        Ok(())
    }

    fn prepare_kernel_write(&self, r: &Region, range: PageRange) -> Result<()> {
        let st = state(r);
        let (from, to) = (r.page_index(range.start), r.page_index(range.end));
        // Under CLEAR no gap is open: the pages are writable now (if the
        // caller's protection allows) and no later gap protects them.
        let _held = hold();
        st.sticky.set_range(from, to);
        st.written.set_range(from, to);
        Ok(())
    }

    fn after_fork(&self, regions: &[Arc<Region>]) -> Result<()> {
        // fork_prepare kept gaps out of the fork. Shared mappings are not
        // copied to the child's page tables, so bits of writes made before
        // the fork can be missing here: report everything once.
        let _held = hold();
        for r in regions {
            let st = state(r);
            st.written.set_range(0, st.pages);
        }
        touch(self.sentinel);
        Ok(())
    }
}

/// The fault path, called by the SIGSEGV handler for a write-protection
/// fault (`SEGV_ACCERR`) at `addr` inside `r`. Returns true if the fault
/// comes from a gap and is resolved: the handler returns and the write is
/// retried. Async-signal-safe: atomics, `sched_yield` and `futex(2)` only;
/// no allocation, lock or panic.
///
/// - The caller's protection of the page lacks `PROT_WRITE`: not ours
///   (false), the host's handler or the default action gets it.
/// - A gap is open and the page is not sticky, so the gap protected it:
///   record the page in `written`, wait until the gap closes (protection
///   restored), return true.
/// - Otherwise the gap that protected the page is already over (the
///   handler ran late), or the page is sticky and was protected by an
///   earlier gap: return true so the write is retried. A fault that is not
///   ours at all (memory re-protected behind our back) would repeat
///   forever, so at most [`LATE_CLAIMS_PER_GEN`] such claims are made per
///   gap generation; after that it goes to the previous handler.
pub(crate) fn on_fault(r: &Region, addr: usize) -> bool {
    let Some(st) = r.state.downcast_ref::<State>() else {
        return false;
    };
    if addr < r.range.start || addr >= r.range.end {
        return false;
    }
    let i = (addr - r.range.start) / page_size();
    if st.readonly.try_get(i) != Some(false) {
        return false;
    }
    let g = GEN.load(Ordering::Acquire);
    if g % 2 == 1 && st.sticky.try_get(i) == Some(false) {
        st.written.try_set(i);
        // Yield a little (gaps are short), then sleep until the gap
        // closes: spinning threads would starve the clearing thread.
        let mut spins = 0;
        while GEN.load(Ordering::Acquire) == g {
            if spins < FAULT_SPINS {
                spins += 1;
                sys::yield_now();
            } else {
                sys::futex_wait(&GEN, g, 10_000_000);
            }
        }
    } else if !claim_late(g) {
        return false;
    }
    stats::add(&FAULTS_HANDLED, 1);
    true
}

/// Counts one late claim against generation `g`; false once the budget of
/// that generation is spent.
fn claim_late(g: u32) -> bool {
    let g = u64::from(g);
    let mut cur = LATE_CLAIMS.load(Ordering::Relaxed);
    loop {
        let next = if cur >> 20 == g {
            if cur & ((1 << 20) - 1) >= LATE_CLAIMS_PER_GEN {
                return false;
            }
            cur + 1
        } else {
            (g << 20) | 1
        };
        match LATE_CLAIMS.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

// ---------------------------------------------------------------------------
// Probe
// ---------------------------------------------------------------------------

/// Tries the whole mechanism on a scratch page, twice: write, read bit 55,
/// clear, read, write, read. `clear_refs` accepting the write proves
/// nothing (kernels without `CONFIG_MEM_SOFT_DIRTY` accept it and do
/// nothing). Then checks whether `PAGEMAP_SCAN` reports the same bits.
/// Note the clear is process-wide: it runs once per process, before any
/// region exists, but it does reset other soft-dirty users' bits.
pub fn probe() -> std::result::Result<(), String> {
    let ps = page_size();
    let map = mm::reserve(3 * ps).map_err(|e| format!("mmap failed: {e}"))?;
    let page = map + ps;
    let result = (|| {
        // SAFETY: the middle page of our fresh reservation.
        unsafe { mm::protect(page, ps, libc::PROT_READ | libc::PROT_WRITE) }
            .map_err(|e| format!("mprotect failed: {e}"))?;
        let bit =
            || page_is_soft_dirty(page).map_err(|e| format!("cannot read /proc/self/pagemap: {e}"));
        let clear = || {
            pagemap::clear_soft_dirty()
                .map_err(|e| format!("cannot write \"4\" to /proc/self/clear_refs: {e}"))
        };
        touch(page);
        let fresh = bit()?;
        clear()?;
        let cleared = bit()?;
        touch(page);
        let rewritten = bit()?;
        if !fresh && !cleared && !rewritten {
            return Err(
                "clear_refs accepted but bit 55 never set: kernel built without \
                        CONFIG_MEM_SOFT_DIRTY (or the architecture lacks soft-dirty)"
                    .to_string(),
            );
        }
        if !fresh {
            return Err("a written page did not read soft-dirty (pagemap bit 55)".into());
        }
        if cleared {
            return Err("clear_refs \"4\" did not clear bit 55 of a written page".into());
        }
        if !rewritten {
            return Err("a write after clear_refs did not set bit 55 again".into());
        }
        // Some kernels got only the first round trip right (bdwgc #479).
        clear()?;
        let cleared2 = bit()?;
        touch(page);
        if cleared2 || !bit()? {
            return Err("second clear_refs/write round trip not reflected in bit 55".into());
        }
        let reader = if scan_agrees(page, &clear) {
            Reader::Scan
        } else {
            Reader::Pagemap
        };
        let _ = PROBED_READER.set(reader);
        Ok(())
    })();
    // SAFETY: the scratch mapping is ours and nothing references it.
    let _ = unsafe { mm::unmap(map, 3 * ps) };
    result
}

/// True if `PAGEMAP_SCAN` with `PAGE_IS_SOFT_DIRTY` works here and agrees
/// with pagemap on `page` (dirty now; clean after a clear; dirty after a
/// write). False on kernels without it (before 6.8: `EINVAL`/`ENOTTY`).
fn scan_agrees(page: usize, clear: &dyn Fn() -> std::result::Result<(), String>) -> bool {
    let ps = page_size();
    let scan_dirty = || -> Option<bool> {
        let mut buf = [EMPTY_REGION; 2];
        let mut scan = Scan {
            start: page as u64,
            end: (page + ps) as u64,
            flags: 0,
            max_pages: 0,
            category_mask: PAGE_IS_SOFT_DIRTY as u64,
            category_anyof_mask: 0,
            return_mask: PAGE_IS_SOFT_DIRTY as u64,
        };
        let n = scan.run(&mut buf).ok()?;
        Some(n == 1 && buf[0].start == page as u64 && buf[0].end == (page + ps) as u64)
    };
    let agree =
        |want: bool| scan_dirty() == Some(want) && page_is_soft_dirty(page).ok() == Some(want);
    if !agree(true) || clear().is_err() || !agree(false) {
        return false;
    }
    touch(page);
    agree(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_takes_first_pages_or_runs() {
        let w = AtomicBitmap::new(40);
        w.set_range(2, 5);
        w.set(8);
        w.set_range(10, 12);
        let taken = AtomicBitmap::new(38);
        choose(&w, 2, 40, Limit::Pages(4), &taken);
        let mut got = vec![];
        taken.for_each_run(0, 38, |s, e| {
            got.push((s + 2, e + 2));
            true
        });
        assert_eq!(got, vec![(2, 5), (8, 9)]);

        let taken = AtomicBitmap::new(37);
        choose(&w, 3, 40, Limit::Runs(2), &taken);
        let mut got = vec![];
        taken.for_each_run(0, 37, |s, e| {
            got.push((s + 3, e + 3));
            true
        });
        assert_eq!(got, vec![(3, 5), (8, 9)]);
    }

    #[test]
    fn late_claims_are_bounded_per_generation() {
        let g = 1_000_002;
        for _ in 0..LATE_CLAIMS_PER_GEN {
            assert!(claim_late(g));
        }
        assert!(!claim_late(g));
        assert!(claim_late(g + 2), "a new generation has a new budget");
    }
}
