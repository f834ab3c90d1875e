//! # READ BEFORE CHANGING THIS FILE
//!
//! Everything in this file may run inside our SIGSEGV handler (or inside a
//! host's handler, through `ww_handle_fault`). Such a handler interrupts
//! an arbitrary thread at an arbitrary instruction: inside `malloc`,
//! holding a `parking_lot` lock, half way through one of our own
//! operations. So code reachable from [`on_sigsegv`] and [`dispatch`]
//! must obey these rules:
//!
//! - **No allocation, deallocation or lazy initialisation** (`Box`, `Vec`,
//!   `OnceLock`, formatting, thread-locals with destructors).
//! - **No lock that an interrupted thread could hold.** The only lock
//!   taken is a region's [`SpinFlag`], and every holder of it runs with
//!   all signals blocked and touches no watched memory while holding it,
//!   so the thread we interrupted cannot be holding it.
//! - **No panics.** The lints below deny the usual sources; slices are
//!   read with `get`, arithmetic is checked or wrapping. A panic here
//!   would abort the process (an `extern "C"` function cannot unwind).
//! - **Only these system calls:** `mprotect`, `madvise`, `sigaction`,
//!   `pthread_sigmask`, `getpid`, `sched_yield`, `raise`, `write` (plus
//!   the pure `sig*set`/`sigismember` helpers); all are async-signal-safe.
//! - **errno is saved on entry and restored on exit** ([`ErrnoGuard`]).
//! - **Claim only our own faults** (see [`on_sigsegv`]); forward the rest
//!   exactly as the kernel would have delivered them ([`forward`]).
//!
//! Contents, in order: the active-backend byte; errno and signal-mask
//! guards; the lock-free region snapshot ([`SnapshotCell`], our own take
//! on signal-hook-registry's "HalfLock"); tombstones of recently
//! unwatched ranges; the handler entry point and forwarding; the
//! per-region spin flag; and the mprotect backend's per-region state
//! [`Tracking`] with the fault resolution and the map-count budget.
//!
//! The only parts meant for normal context are marked "Normal context
//! only" (publishing a snapshot, building a `Tracking`); they still obey
//! the lints.

#![deny(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicI32, AtomicIsize, AtomicPtr, AtomicU8, AtomicUsize, Ordering::*};

use crate::backend::BackendKind;
use crate::bitmap::{AtomicBitmap, for_word_masks, word_mask};
use crate::registry::Region;

/// `si_code` of a fault on a mapped page whose protection forbids the
/// access (`<asm-generic/siginfo.h>`; the libc crate lacks it on Linux).
pub(crate) const SEGV_ACCERR: c_int = 2;

const PROT_WRITE: i32 = libc::PROT_WRITE;

// ---------------------------------------------------------------------------
// Which backend owns faults
// ---------------------------------------------------------------------------

/// `BackendKind as u8` of the committed backend; 0 (`Auto`) until then.
/// Set once by `api::commit`, before any region exists.
static ACTIVE_KIND: AtomicU8 = AtomicU8::new(0);

/// Records the committed backend (normal context).
pub(crate) fn set_active_kind(kind: BackendKind) {
    ACTIVE_KIND.store(kind as u32 as u8, Release);
}

fn active_kind() -> Option<BackendKind> {
    let k = ACTIVE_KIND.load(Acquire);
    [
        BackendKind::Written,
        BackendKind::SoftDirty,
        BackendKind::Mprotect,
    ]
    .into_iter()
    .find(|b| *b as u32 as u8 == k)
}

// ---------------------------------------------------------------------------
// Guards
// ---------------------------------------------------------------------------

/// Restores the interrupted code's `errno` when dropped: `mprotect`,
/// `madvise` and friends may overwrite it.
pub(crate) struct ErrnoGuard(c_int);

impl ErrnoGuard {
    pub(crate) fn save() -> ErrnoGuard {
        // SAFETY: __errno_location returns the calling thread's errno slot,
        // valid for the thread's life.
        ErrnoGuard(unsafe { *libc::__errno_location() })
    }
}

impl Drop for ErrnoGuard {
    fn drop(&mut self) {
        // SAFETY: as in `save`.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

fn errno() -> c_int {
    // SAFETY: as in `ErrnoGuard::save`.
    unsafe { *libc::__errno_location() }
}

/// Blocks every signal in the calling thread until dropped. Held around
/// every [`SpinFlag`] section outside our own handler (whose `sa_mask`
/// already blocks everything): otherwise a host signal handler that
/// writes to watched memory could interrupt the holder, fault, and spin
/// forever on the flag its own thread holds.
pub(crate) struct BlockAll {
    old: libc::sigset_t,
}

impl BlockAll {
    pub(crate) fn new() -> BlockAll {
        // SAFETY: sigset_t is plain data; all-zero is a valid (empty) set.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `all` is a valid sigset_t we own.
        unsafe { libc::sigfillset(&mut all) };
        // SAFETY: both sets are valid; pthread_sigmask only fails for a
        // bad `how`, and SIG_BLOCK is valid.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) };
        BlockAll { old }
    }
}

impl Drop for BlockAll {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

// ---------------------------------------------------------------------------
// The region snapshot: readers never wait
// ---------------------------------------------------------------------------
//
// Assumptions and orderings:
// - Writers (registry insert/remove) are serialized by the registry's
//   write lock and run in normal context. Readers run anywhere, any
//   number at once, including in signal handlers; they never block.
// - A reader reads `generation` to pick one of two counters, increments
//   it, loads `current`, uses the snapshot, decrements the same counter.
// - A writer swaps `current`, then twice flips `generation` and waits for
//   the counter that readers used before the flip to read zero. After
//   both rounds each counter has been seen at zero after the swap. A
//   reader still holding the old snapshot incremented its counter before
//   loading `current`, hence before the swap, and decrements only when
//   done; so seeing that counter at zero means it is done. Only then is
//   the old snapshot freed (and only then may the registry drop a
//   removed `Region`).
// - Flipping makes new readers use the other counter, so a steady stream
//   of readers cannot starve the writer.
// - All protocol accesses are SeqCst: the argument needs the increment,
//   the load of `current`, the swap and the writer's loads in one total
//   order. The decrement being SeqCst (hence Release) orders the reader's
//   use of the snapshot before the writer's free.

/// One registered region in a snapshot.
pub(crate) struct Entry {
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// Kept alive by the registry until this snapshot is retired.
    pub(crate) region: *const Region,
}

/// An immutable, sorted, non-overlapping list of regions.
pub(crate) struct Snapshot {
    pub(crate) entries: Box<[Entry]>,
}

/// The published snapshot and its reader counters.
pub(crate) struct SnapshotCell {
    current: AtomicPtr<Snapshot>,
    generation: AtomicUsize,
    readers_even: AtomicUsize,
    readers_odd: AtomicUsize,
}

/// The registry's snapshot.
pub(crate) static REGION_SNAPSHOT: SnapshotCell = SnapshotCell {
    current: AtomicPtr::new(std::ptr::null_mut()),
    generation: AtomicUsize::new(0),
    readers_even: AtomicUsize::new(0),
    readers_odd: AtomicUsize::new(0),
};

/// A reader's hold on the current snapshot.
pub(crate) struct SnapshotRead<'a> {
    counter: &'a AtomicUsize,
    snapshot: *const Snapshot,
}

impl SnapshotCell {
    fn counter(&self, generation: usize) -> &AtomicUsize {
        if generation & 1 == 0 {
            &self.readers_even
        } else {
            &self.readers_odd
        }
    }

    /// Holds the current snapshot until the guard drops. Never waits.
    pub(crate) fn read(&self) -> SnapshotRead<'_> {
        let counter = self.counter(self.generation.load(SeqCst));
        counter.fetch_add(1, SeqCst);
        SnapshotRead {
            counter,
            snapshot: self.current.load(SeqCst),
        }
    }

    /// Normal context only; callers serialize. Publishes `new`, waits
    /// until no reader can still see the previous snapshot, frees it.
    pub(crate) fn replace(&self, new: Box<Snapshot>) {
        let old = self.current.swap(Box::into_raw(new), SeqCst);
        for _ in 0..2 {
            let before_flip = self.generation.fetch_add(1, SeqCst);
            let counter = self.counter(before_flip);
            while counter.load(SeqCst) != 0 {
                std::thread::yield_now();
            }
        }
        if !old.is_null() {
            // SAFETY: `old` came from Box::into_raw in an earlier `replace`,
            // is no longer published, and every reader that loaded it has
            // finished (see the orderings above).
            drop(unsafe { Box::from_raw(old) });
        }
    }
}

impl SnapshotRead<'_> {
    /// The region containing `addr`, if any.
    pub(crate) fn find(&self, addr: usize) -> Option<&Region> {
        // SAFETY: the snapshot stays allocated while we hold the counter
        // (the writer waits for it before freeing); null means "empty".
        let snapshot = unsafe { self.snapshot.as_ref() }?;
        let entries = &snapshot.entries;
        let after = entries.partition_point(|e| e.start <= addr);
        let e = entries.get(after.checked_sub(1)?)?;
        if addr < e.end {
            // SAFETY: the registry keeps every Region of a published
            // snapshot alive until that snapshot has been retired, which
            // cannot happen while we hold the counter.
            Some(unsafe { &*e.region })
        } else {
            None
        }
    }
}

impl Drop for SnapshotRead<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Tombstones: recently unwatched ranges
// ---------------------------------------------------------------------------
//
// `ww_unwatch` makes the pages writable and only then removes the region.
// A write that faulted just before the pages became writable may reach the
// handler after the removal: it finds no region, yet retrying it would now
// succeed. For addresses in one of the last few unwatched ranges the
// handler asks the kernel whether the page is writable now
// (`MADV_POPULATE_WRITE` fails with EFAULT if it is not, and never changes
// contents) and retries the write if so. A torn read of a slot can only
// cost that one extra system call.

const TOMBSTONES: usize = 16;
static TOMB_START: [AtomicUsize; TOMBSTONES] = [const { AtomicUsize::new(0) }; TOMBSTONES];
static TOMB_END: [AtomicUsize; TOMBSTONES] = [const { AtomicUsize::new(0) }; TOMBSTONES];
static TOMB_NEXT: AtomicUsize = AtomicUsize::new(0);

/// Remembers that `[start, end)` was just unwatched (normal context).
pub(crate) fn bury(start: usize, end: usize) {
    let slot = TOMB_NEXT
        .fetch_add(1, Relaxed)
        .checked_rem(TOMBSTONES)
        .unwrap_or(0);
    if let (Some(s), Some(e)) = (TOMB_START.get(slot), TOMB_END.get(slot)) {
        e.store(0, Release);
        s.store(start, Release);
        e.store(end, Release);
    }
}

fn in_tombstone(addr: usize) -> bool {
    TOMB_START
        .iter()
        .zip(TOMB_END.iter())
        .any(|(s, e)| s.load(Acquire) <= addr && addr < e.load(Acquire))
}

/// True if the page holding `addr` accepts writes now.
fn writable_now(addr: usize) -> bool {
    let ps = page_size();
    let page = addr & !ps.wrapping_sub(1);
    // SAFETY: MADV_POPULATE_WRITE only faults pages in as if written,
    // without changing their contents; it fails (EFAULT/EINVAL/ENOMEM)
    // instead of signalling when the page is not writable or not mapped.
    unsafe { libc::madvise(page as *mut c_void, ps, libc::MADV_POPULATE_WRITE) == 0 }
}

fn page_size() -> usize {
    crate::page::page_size()
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// The action that was installed before ours (never freed once set).
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

/// Records the previous action (normal context, by `install`).
pub(crate) fn set_previous(prev: &'static libc::sigaction) {
    PREVIOUS.store(
        prev as *const libc::sigaction as *mut libc::sigaction,
        Release,
    );
}

/// Our SIGSEGV handler.
///
/// A fault is ours only if all hold: it was generated by the kernel
/// (`si_code > 0`, not `kill`/`sigqueue`), it is `SEGV_ACCERR` (a mapped
/// page whose protection forbids the access), it is a write (checked
/// from the page-fault error code where the architecture gives it), it
/// lies in a registered region, and the active backend's `on_fault`
/// resolves it. Anything else goes to [`forward`].
pub(crate) extern "C" fn on_sigsegv(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    let _errno = ErrnoGuard::save();
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid siginfo
    // (null only if someone calls us by hand; then we forward).
    if let Some(si) = unsafe { info.as_ref() } {
        if si.si_code > 0 && si.si_code == SEGV_ACCERR && is_write(ctx) {
            // SAFETY: for SIGSEGV the kernel fills the si_addr union member.
            let addr = unsafe { si.si_addr() } as usize;
            if dispatch(addr) {
                return; // resolved: returning retries the faulting write
            }
        }
    }
    forward(sig, info, ctx);
}

/// True if the fault in `ctx` was a write. x86-64 reports it in bit 1 of
/// the page-fault error code (`REG_ERR`).
#[cfg(target_arch = "x86_64")]
fn is_write(ctx: *mut c_void) -> bool {
    const X86_PF_WRITE: libc::greg_t = 1 << 1;
    // SAFETY: for an SA_SIGINFO handler the third argument is the
    // interrupted context, a ucontext_t (null only if called by hand).
    let Some(uc) = (unsafe { ctx.cast::<libc::ucontext_t>().as_ref() }) else {
        return false;
    };
    uc.uc_mcontext
        .gregs
        .get(libc::REG_ERR as usize)
        .is_some_and(|e| e & X86_PF_WRITE != 0)
}

/// Elsewhere we do not decode the context (untested here) and treat every
/// access fault as a write. Our pages are only ever made read-only, so a
/// read cannot fault on them; an instruction fetch from a watched,
/// non-executable page would loop instead of crashing.
#[cfg(not(target_arch = "x86_64"))]
fn is_write(_ctx: *mut c_void) -> bool {
    true
}

/// Finds the region holding `addr` without waiting and lets the active
/// backend resolve the fault. True if resolved (retry the access).
pub(crate) fn dispatch(addr: usize) -> bool {
    let snapshot = REGION_SNAPSHOT.read();
    if let Some(region) = snapshot.find(addr) {
        return match active_kind() {
            Some(BackendKind::Mprotect) => crate::backend::mprotect::on_fault(region, addr),
            Some(BackendKind::SoftDirty) => crate::backend::soft_dirty::on_fault(region, addr),
            _ => false,
        };
    }
    drop(snapshot);
    // Only backends that write-protect pages can have a fault in flight.
    matches!(
        active_kind(),
        Some(BackendKind::Mprotect | BackendKind::SoftDirty)
    ) && in_tombstone(addr)
        && writable_now(addr)
}

/// `ww_handle_fault`: a host's handler asks whether `addr` is ours. We may
/// run with the host's signal mask, so block everything around the
/// dispatch (see [`BlockAll`]).
pub(crate) fn handle_fault_from_host(addr: usize) -> bool {
    let _errno = ErrnoGuard::save();
    let _blocked = BlockAll::new();
    dispatch(addr)
}

/// Hands a fault that is not ours to the action installed before ours,
/// as the kernel would have: a handler function runs with the mask it
/// asked for; for SIG_DFL or SIG_IGN that action is restored and we
/// return, so the faulting instruction repeats and the default action
/// kills the process with SIGSEGV (a SIGSEGV sent with `kill` does not
/// repeat: under SIG_DFL it is re-raised, under SIG_IGN dropped, and we
/// stay installed). SA_RESETHAND of the previous action is not emulated.
fn forward(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: PREVIOUS is null or points to a leaked, never-freed action.
    let prev = unsafe { PREVIOUS.load(Acquire).as_ref() };
    let handler = prev.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        restore_and_return(sig, prev, info, handler == libc::SIG_DFL);
        return;
    }
    let Some(prev) = prev else { return };
    set_mask_as_kernel_would(sig, prev, ctx);
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: with SA_SIGINFO, sa_sigaction holds the address of a
        // three-argument handler, registered by whoever installed it.
        let f = unsafe {
            std::mem::transmute::<usize, extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void)>(
                handler,
            )
        };
        f(sig, info, ctx);
    } else {
        // SAFETY: without SA_SIGINFO, sa_sigaction holds a one-argument
        // sa_handler address.
        let f = unsafe { std::mem::transmute::<usize, extern "C" fn(c_int)>(handler) };
        f(sig);
    }
    // Returning restores the interrupted mask from `ctx` (sigreturn).
}

fn restore_and_return(
    sig: c_int,
    prev: Option<&libc::sigaction>,
    info: *mut libc::siginfo_t,
    default: bool,
) {
    // SAFETY: `info` is null or the kernel's siginfo.
    let from_kernel = unsafe { info.as_ref() }.is_some_and(|si| si.si_code > 0);
    if !default && !from_kernel {
        // An ignored signal that someone sent: ignoring it is all the
        // kernel would have done. Stay installed.
        return;
    }
    // SAFETY: a zeroed sigaction is SIG_DFL with no flags and an empty mask.
    let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    let action = prev.unwrap_or(&dfl);
    // SAFETY: `action` is a valid sigaction; this uninstalls our handler,
    // deliberately: the process is about to die of this signal (a
    // repeating fault is fatal even under SIG_IGN).
    unsafe { libc::sigaction(sig, action, std::ptr::null_mut()) };
    if !from_kernel {
        // Pending until our handler returns and unblocks it, then fatal.
        // SAFETY: raise is async-signal-safe.
        unsafe { libc::raise(sig) };
    }
}

/// The kernel would run the previous handler with: the interrupted mask,
/// plus its `sa_mask`, plus the signal itself unless SA_NODEFER.
fn set_mask_as_kernel_would(sig: c_int, prev: &libc::sigaction, ctx: *mut c_void) {
    // SAFETY: ctx is the kernel's ucontext_t for this delivery (or null).
    let Some(uc) = (unsafe { ctx.cast::<libc::ucontext_t>().as_ref() }) else {
        return;
    };
    let mut mask = uc.uc_sigmask;
    for s in 1..=64 {
        // SAFETY: both sets are valid; out-of-range numbers just fail.
        if unsafe { libc::sigismember(&prev.sa_mask, s) } == 1 {
            // SAFETY: as above.
            unsafe { libc::sigaddset(&mut mask, s) };
        }
    }
    if prev.sa_flags & libc::SA_NODEFER == 0 {
        // SAFETY: as above.
        unsafe { libc::sigaddset(&mut mask, sig) };
    }
    // SAFETY: `mask` is valid; pthread_sigmask is async-signal-safe.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut()) };
}

/// Last words before giving a fault we could not resolve to the previous
/// handler (which usually kills the process).
fn complain(msg: &[u8]) {
    // SAFETY: writing a static buffer to stderr; write is async-signal-safe.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

// ---------------------------------------------------------------------------
// The per-region spin flag
// ---------------------------------------------------------------------------

/// Serializes, per region, the fault handler against the operations that
/// change page protection (reset, protect, prepare, watch, unwatch).
///
/// Holders: our handler (every signal blocked by its `sa_mask`) and
/// sections wrapped in [`BlockAll`]. No holder touches watched memory, so
/// no holder can fault or be interrupted by a handler that would need the
/// flag: a waiter never waits for its own thread.
///
/// The word holds the holder's pid. A forked child inherits a flag held
/// by a parent thread that does not exist in the child; a waiter that
/// sees another pid's mark takes the flag over. Every step of every
/// section leaves the state safe (written bit set before a page becomes
/// writable), so taking over mid-section loses nothing.
pub(crate) struct SpinFlag(AtomicI32);

/// Releases the flag when dropped.
pub(crate) struct FlagGuard<'a>(&'a SpinFlag);

impl SpinFlag {
    pub(crate) const fn new() -> SpinFlag {
        SpinFlag(AtomicI32::new(0))
    }

    /// Takes the flag, spinning (then yielding) while another thread of
    /// this process holds it.
    pub(crate) fn lock(&self) -> FlagGuard<'_> {
        // SAFETY: getpid has no preconditions and cannot fail.
        let me = unsafe { libc::getpid() };
        let mut spins: u32 = 0;
        loop {
            match self.0.compare_exchange_weak(0, me, Acquire, Relaxed) {
                Ok(_) => return FlagGuard(self),
                Err(0) => {}
                Err(holder) if holder != me => {
                    if self
                        .0
                        .compare_exchange(holder, me, Acquire, Relaxed)
                        .is_ok()
                    {
                        return FlagGuard(self);
                    }
                }
                Err(_) => {
                    spins = spins.saturating_add(1);
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else {
                        // SAFETY: sched_yield has no preconditions.
                        unsafe { libc::sched_yield() };
                    }
                }
            }
        }
    }
}

impl Drop for FlagGuard<'_> {
    fn drop(&mut self) {
        self.0.0.store(0, Release);
    }
}

// ---------------------------------------------------------------------------
// mprotect backend: per-region state and fault resolution
// ---------------------------------------------------------------------------
//
// Per page `i` of a region:
//   W = written[i]    written since the last reset
//   A = armed[i]      we hold the page read-only to catch its next write
//   C = may_write[i]  the caller's protection allows writing
//                     (with may_read/may_exec: the caller's protection)
// The kernel protection is the caller's, minus PROT_WRITE when A.
//
// Invariant (no lost write): a page the kernel lets userspace write
// without faulting has W set. Equivalently, every C page with W clear is
// armed.
//
// THE RACE (resetter vs. handler on the same page), and why both the
// ordering and the flag are needed:
//   - reset re-arms a page: mprotect(read-only), set A, and only then
//     clear W;
//   - the handler sets W, and only then mprotect(read-write) and clears A.
// Each order alone keeps the invariant at every step of its own
// sequence. But the two can interleave badly:
//     handler: set W
//     reset:   sees W, reports the page, mprotect(RO), clear W
//     handler: mprotect(RW)            -> writable with W clear: LOST
// After that, writes to the page land silently until some later reset.
// So both sequences run under the region's SpinFlag; with it, the
// handler's pair and the reset's pair cannot interleave, and between
// sections the invariant holds. (A reset that reads W before the handler
// sets it simply does not report or re-arm the page; a write that lands
// between a report and the re-arm is covered by that report, since the
// caller reads the page after the get returns; one that faults after the
// re-arm waits for the flag and sets W afterwards. A write whose fault was
// resolved but which retries only after a reset re-armed its page faults
// once more and is reported again: a duplicate, never a loss.)
// `ww_protect` and `prepare_kernel_write` change protection under the
// same flag, with the same "W before writable" order.
//
// Map count: each isolated writable page inside a read-only run splits a
// VMA in three. The kernel refuses splits beyond vm.max_map_count
// (ENOMEM), and a process at that limit cannot mmap at all. We keep an
// estimate of the VMAs our protections add (exact under the assumption
// that neighbouring pages of equal protection in a region share a VMA)
// and a budget (half the free map entries at start-up). A fault whose
// single-page unprotect would exceed 7/8 of the budget (from then on
// until resets bring the estimate under half of it), or whose block would
// exceed all of it, unprotects an aligned block instead (64, 512, 4096,
// 32768 pages, then the whole region),
// marking every caller-writable page of it written: coarser, never a
// lost write, and the block merges its neighbours' VMAs. The same ladder
// is climbed when mprotect fails with ENOMEM anyway (the rest of the
// process used the entries), and that lowers the budget; the backend
// recomputes it on its next reset.

/// VMAs our protections currently add, summed over regions (estimate).
pub(crate) static VMA_ESTIMATE: AtomicIsize = AtomicIsize::new(0);
/// How many VMAs we allow ourselves (set by the backend at start-up).
pub(crate) static VMA_BUDGET: AtomicIsize = AtomicIsize::new(16384);
/// Single-page unprotects that cost map entries are off (see
/// `open_covering`).
static COARSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Set when mprotect failed with ENOMEM: the backend should re-measure.
pub(crate) static MAP_PRESSURE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Block sizes tried, in pages, before the whole region.
const GRANULES: [usize; 5] = [1, 64, 512, 4096, 32768];

/// Page state of one region for the mprotect backend.
pub(crate) struct Tracking {
    /// Address of page 0.
    pub(crate) start: usize,
    /// Number of pages.
    pub(crate) pages: usize,
    /// W: written since the last reset.
    pub(crate) written: AtomicBitmap,
    /// A: held read-only by us to catch the next write. Set only by the
    /// backend's own operations (which hold the region's `ops` lock and
    /// the flag), cleared by them and by the handler; a page with A set is
    /// read-only in the kernel (a failed un-arm clears A, see
    /// [`Tracking::protect_run`]).
    pub(crate) armed: AtomicBitmap,
    /// G ("guessed"): W was set because the page was unprotected as part
    /// of a block (map-count pressure), not because a write faulted on it;
    /// it may never have been written. G implies W. The backend settles
    /// G pages of private memory before reporting them: it arms them and
    /// keeps W only where the kernel shows the page populated.
    pub(crate) guessed: AtomicBitmap,
    /// Set after G bits are set (cleared by a settle of the whole region
    /// before it reads them): lets a scan skip looking for G bits.
    pub(crate) any_guessed: std::sync::atomic::AtomicBool,
    /// The caller's protection, one bitmap per PROT_* bit.
    pub(crate) may_read: AtomicBitmap,
    /// C: the caller allows writing.
    pub(crate) may_write: AtomicBitmap,
    pub(crate) may_exec: AtomicBitmap,
    /// Serializes protection changes with the handler.
    pub(crate) flag: SpinFlag,
    /// This region's share of [`VMA_ESTIMATE`].
    pub(crate) vmas: AtomicIsize,
    page_size: usize,
}

/// Word index and bit mask of bit `i`.
fn locate(i: usize) -> (usize, u64) {
    (i >> 6, 1u64.wrapping_shl((i & 63) as u32))
}

fn test(bm: &AtomicBitmap, i: usize) -> bool {
    let (w, m) = locate(i);
    bm.words().get(w).is_some_and(|a| a.load(Acquire) & m != 0)
}

/// Sets (or clears) bits `[a, b)` of `bm`.
fn update(bm: &AtomicBitmap, a: usize, b: usize, set: bool) {
    for_word_masks(a, b, |w, m| {
        if let Some(word) = bm.words().get(w) {
            if set {
                word.fetch_or(m, AcqRel);
            } else {
                word.fetch_and(!m, AcqRel);
            }
        }
    });
}

impl Tracking {
    /// Normal context only (allocates). All pages start read-write for
    /// the caller, unwritten and not yet armed.
    pub(crate) fn new(start: usize, pages: usize, page_size: usize) -> Tracking {
        let t = Tracking {
            start,
            pages,
            written: AtomicBitmap::new(pages),
            armed: AtomicBitmap::new(pages),
            guessed: AtomicBitmap::new(pages),
            any_guessed: std::sync::atomic::AtomicBool::new(false),
            may_read: AtomicBitmap::new(pages),
            may_write: AtomicBitmap::new(pages),
            may_exec: AtomicBitmap::new(pages),
            flag: SpinFlag::new(),
            vmas: AtomicIsize::new(0),
            page_size,
        };
        t.may_read.set_range(0, pages);
        t.may_write.set_range(0, pages);
        t
    }

    /// Address of page `i`.
    pub(crate) fn addr(&self, i: usize) -> Option<usize> {
        self.start.checked_add(i.checked_mul(self.page_size)?)
    }

    /// The caller's protection of page `i`.
    pub(crate) fn caller_prot(&self, i: usize) -> i32 {
        let mut p = libc::PROT_NONE;
        if test(&self.may_read, i) {
            p |= libc::PROT_READ;
        }
        if test(&self.may_write, i) {
            p |= PROT_WRITE;
        }
        if test(&self.may_exec, i) {
            p |= libc::PROT_EXEC;
        }
        p
    }

    /// True if the caller allows writing page `i`.
    pub(crate) fn caller_writable(&self, i: usize) -> bool {
        test(&self.may_write, i)
    }

    /// True if page `i` is armed.
    pub(crate) fn is_armed(&self, i: usize) -> bool {
        test(&self.armed, i)
    }

    /// Records the caller's protection for pages `[a, b)`.
    pub(crate) fn set_caller_prot(&self, a: usize, b: usize, prot: i32) {
        for (bm, bit) in [
            (&self.may_read, libc::PROT_READ),
            (&self.may_write, PROT_WRITE),
            (&self.may_exec, libc::PROT_EXEC),
        ] {
            update(bm, a, b, prot & bit != 0);
        }
    }

    /// Sets W for the caller-writable pages of `[a, b)`.
    pub(crate) fn set_written(&self, a: usize, b: usize) {
        for_word_masks(a, b, |w, m| {
            let c = self.may_write.words().get(w).map_or(0, |c| c.load(Acquire));
            if let Some(word) = self.written.words().get(w) {
                word.fetch_or(m & c, AcqRel);
            }
        });
    }

    /// Word `w` of the kernel's protection bits (read, write, exec) with
    /// `arm_override` (a page range and a wish for its A bits) applied.
    /// The kernel's write bit is the caller's minus A.
    fn kernel_words(
        &self,
        w: usize,
        arm_override: Option<(usize, usize, bool)>,
    ) -> (u64, u64, u64) {
        let load = |bm: &AtomicBitmap| bm.words().get(w).map_or(0, |x| x.load(Acquire));
        let mut armed = load(&self.armed);
        if let Some((a, b, arm)) = arm_override {
            let m = word_mask(w, a, b);
            armed = if arm { armed | m } else { armed & !m };
        }
        (
            load(&self.may_read),
            load(&self.may_write) & !armed,
            load(&self.may_exec),
        )
    }

    /// Protection changes between neighbours among pages `a-1 ..= b` as
    /// the kernel sees them with `arm_override` applied (outside the region
    /// counts as different from everything). Word at a time: this runs in
    /// the handler over blocks of up to 32768 pages.
    fn boundaries(&self, a: usize, b: usize, arm_override: Option<(usize, usize, bool)>) -> isize {
        let b = b.min(self.pages);
        let mut count: u32 = 0;
        if a == 0 {
            count = count.saturating_add(1); // (outside, page 0)
        }
        if b == self.pages {
            count = count.saturating_add(1); // (last page, outside)
        }
        // Pairs (i-1, i) with both pages inside: i in [max(a,1), min(b, pages-1)].
        let lo = a.max(1);
        let hi = b.min(self.pages.saturating_sub(1));
        if lo <= hi {
            // Words come in ascending order: each one is the next one's
            // `prev`, so every word is loaded once (plus the first one's
            // predecessor).
            let mut last: Option<(usize, (u64, u64, u64))> = None;
            for_word_masks(lo, hi.saturating_add(1), |w, m| {
                let cur = self.kernel_words(w, arm_override);
                let prev = match (last, w.checked_sub(1)) {
                    (Some((lw, words)), Some(p)) if lw == p => words,
                    (_, Some(p)) => self.kernel_words(p, arm_override),
                    (_, None) => (0, 0, 0),
                };
                last = Some((w, cur));
                // Bit i of `shifted(x, p)` is bit i-1 of the page sequence.
                let shifted = |x: u64, p: u64| x.wrapping_shl(1) | p.wrapping_shr(63);
                let differ = (cur.0 ^ shifted(cur.0, prev.0))
                    | (cur.1 ^ shifted(cur.1, prev.1))
                    | (cur.2 ^ shifted(cur.2, prev.2));
                count = count.saturating_add((differ & m).count_ones());
            });
        }
        count as isize
    }

    /// How many VMAs arming (or un-arming) the caller-writable pages of
    /// `[a, b)` would add (negative: remove).
    pub(crate) fn vma_delta(&self, a: usize, b: usize, arm: bool) -> isize {
        let after = self.boundaries(a, b, Some((a, b, arm)));
        after.saturating_sub(self.boundaries(a, b, None))
    }

    /// [`vma_delta`](Self::vma_delta)`(s, d, true)` for a span whose pages
    /// all have the same caller protection with PROT_WRITE: inside it the
    /// kernel protection changes exactly where A does, so one pass over the
    /// A words replaces two over all the protection words (resets arm long
    /// spans).
    pub(crate) fn uniform_arm_delta(&self, s: usize, d: usize) -> isize {
        let ovr = Some((s, d, true));
        let edges = |o| {
            self.boundaries(s, s, o)
                .saturating_add(self.boundaries(d, d, o))
        };
        let mut inner: u32 = 0;
        let mut last: Option<(usize, u64)> = None;
        let load = |w: usize| self.armed.words().get(w).map_or(0, |x| x.load(Acquire));
        // Pairs (i-1, i) for i in [s+1, d): all armed afterwards.
        for_word_masks(s.saturating_add(1), d, |w, m| {
            let cur = load(w);
            let prev = match (last, w.checked_sub(1)) {
                (Some((lw, v)), Some(p)) if lw == p => v,
                (_, Some(p)) => load(p),
                (_, None) => 0,
            };
            last = Some((w, cur));
            let shifted = cur.wrapping_shl(1) | prev.wrapping_shr(63);
            inner = inner.saturating_add(((cur ^ shifted) & m).count_ones());
        });
        edges(ovr)
            .saturating_sub(edges(None))
            .saturating_sub(inner as isize)
    }

    /// Records a change of `delta` VMAs.
    pub(crate) fn account(&self, delta: isize) {
        self.vmas.fetch_add(delta, Relaxed);
        VMA_ESTIMATE.fetch_add(delta, Relaxed);
    }

    /// The maximal run `[i, end)` within `[i, b)` of pages with the same
    /// caller protection, and that protection.
    pub(crate) fn prot_run(&self, i: usize, b: usize) -> Option<(usize, usize, i32)> {
        let b = b.min(self.pages);
        if i >= b {
            return None;
        }
        let prot = self.caller_prot(i);
        // Word at a time (this runs in the handler over whole regions): the
        // first page at or after `i` whose protection differs from page i's.
        let want = |bit: i32| if prot & bit != 0 { u64::MAX } else { 0 };
        let (r, w, x) = (
            want(libc::PROT_READ),
            want(PROT_WRITE),
            want(libc::PROT_EXEC),
        );
        let mut end = b;
        let mut found = false;
        for_word_masks(i, b, |word, m| {
            if found {
                return;
            }
            let load = |bm: &AtomicBitmap| bm.words().get(word).map_or(0, |v| v.load(Acquire));
            let differ = ((load(&self.may_read) ^ r)
                | (load(&self.may_write) ^ w)
                | (load(&self.may_exec) ^ x))
                & m;
            if differ != 0 {
                found = true;
                end = word
                    .saturating_mul(64)
                    .saturating_add(differ.trailing_zeros() as usize);
            }
        });
        Some((i, end, prot))
    }

    /// Arms (read-only) or un-arms (caller's protection) the run `[a, b)`,
    /// whose pages all have the caller protection `prot` (which includes
    /// PROT_WRITE). The flag must be held. On failure returns errno: a
    /// failed mprotect may have changed part of the run, which is still
    /// safe because callers set W before an un-arm and clear W only after
    /// a successful arm. A failed arm leaves A alone (a page left
    /// read-only but not marked armed is still claimed by the handler: it
    /// claims every caller-writable page); a failed un-arm clears A, so
    /// that A set always means read-only (settling relies on it).
    pub(crate) fn protect_run(
        &self,
        a: usize,
        b: usize,
        prot: i32,
        arm: bool,
    ) -> Result<(), c_int> {
        let target = if arm { prot & !PROT_WRITE } else { prot };
        let delta = self.vma_delta(a, b, arm);
        if let Err(e) = self.mprotect_pages(a, b, target) {
            if !arm {
                update(&self.armed, a, b, false);
            }
            return Err(e);
        }
        update(&self.armed, a, b, arm);
        self.account(delta);
        Ok(())
    }

    /// Arms the span `[s, d)`, whose pages all have the caller protection
    /// `prot` (with PROT_WRITE), with one mprotect: `protect_run(s, d, prot,
    /// true)` with the cheaper [`uniform_arm_delta`](Self::uniform_arm_delta).
    /// The flag must be held.
    pub(crate) fn arm_uniform_span(&self, s: usize, d: usize, prot: i32) -> Result<(), c_int> {
        let delta = self.uniform_arm_delta(s, d);
        self.mprotect_pages(s, d, prot & !PROT_WRITE)?;
        update(&self.armed, s, d, true);
        self.account(delta);
        Ok(())
    }

    /// `mprotect` of pages `[a, b)`; errno on failure.
    pub(crate) fn mprotect_pages(&self, a: usize, b: usize, prot: i32) -> Result<(), c_int> {
        let (Some(addr), Some(end)) = (self.addr(a), self.addr(b.min(self.pages))) else {
            return Err(libc::EINVAL);
        };
        // SAFETY: `[addr, end)` lies in this registered region, whose memory
        // stays mapped while the region is registered; callers pass the
        // caller's protection, possibly without PROT_WRITE.
        let rc = unsafe { libc::mprotect(addr as *mut c_void, end.saturating_sub(addr), prot) };
        if rc == 0 { Ok(()) } else { Err(errno()) }
    }

    /// Sets or clears A for pages `[a, b)`.
    pub(crate) fn set_armed_bits(&self, a: usize, b: usize, armed: bool) {
        update(&self.armed, a, b, armed);
    }

    /// Protection changes between neighbours among pages `a-1 ..= b` as
    /// the kernel has them now (for callers that change several things
    /// at once and account the difference themselves).
    pub(crate) fn boundaries_now(&self, a: usize, b: usize) -> isize {
        self.boundaries(a, b, None)
    }

    /// Makes every caller-writable page of `[a, b)` writable, setting W
    /// first (the invariant's order). The flag must be held.
    pub(crate) fn open(&self, a: usize, b: usize) -> Result<(), c_int> {
        self.set_written(a, b);
        let mut i = a;
        while let Some((s, e, prot)) = self.prot_run(i, b) {
            if prot & PROT_WRITE != 0 {
                self.protect_run(s, e, prot, false)?;
            }
            i = e;
        }
        Ok(())
    }

    /// Marks the caller-writable pages of block `[s, e)` that were not
    /// written as guessed (G), except the pages `[a, b)` the caller asked
    /// for, which are written for real. Before the block is opened.
    fn mark_guessed(&self, s: usize, e: usize, a: usize, b: usize) {
        // [a, b) was asked for (a fault, a prepare): written for real, and
        // no longer a guess if it was one.
        update(&self.guessed, a, b, false);
        let mut marked = false;
        for_word_masks(s, e, |w, m| {
            let load = |bm: &AtomicBitmap| bm.words().get(w).map_or(0, |x| x.load(Acquire));
            let fresh = m & !word_mask(w, a, b) & load(&self.may_write) & !load(&self.written);
            if fresh != 0
                && let Some(word) = self.guessed.words().get(w)
            {
                word.fetch_or(fresh, AcqRel);
                marked = true;
            }
        });
        // Only when a guess was made: a single-page open (every fault below
        // the map budget) must not send the next get looking for guesses.
        if marked {
            self.any_guessed.store(true, Release);
        }
    }

    /// The caller's protection if it is the same for all pages of `[a, b)`
    /// and includes PROT_WRITE (word at a time).
    pub(crate) fn uniform_writable_prot(&self, a: usize, b: usize) -> Option<i32> {
        let prot = self.caller_prot(a);
        if prot & PROT_WRITE == 0 || a >= b || b > self.pages {
            return None;
        }
        let mut uniform = true;
        for_word_masks(a, b, |w, m| {
            for (bm, bit) in [
                (&self.may_read, libc::PROT_READ),
                (&self.may_write, PROT_WRITE),
                (&self.may_exec, libc::PROT_EXEC),
            ] {
                let x = bm.words().get(w).map_or(0, |x| x.load(Acquire)) & m;
                let want = if prot & bit != 0 { m } else { 0 };
                uniform &= x == want;
            }
        });
        uniform.then_some(prot)
    }

    /// Makes pages `[a, b)` writable (where the caller allows it) and marks
    /// them written, climbing to larger aligned blocks when the map-count
    /// budget or the kernel says no; the other pages of a block are marked
    /// guessed (G). The flag must be held. False only if even the whole
    /// region could not be made writable.
    pub(crate) fn open_covering(&self, a: usize, b: usize) -> bool {
        for g in GRANULES {
            let (s, e) = if g == 1 {
                (a, b.min(self.pages))
            } else {
                let s = a.saturating_sub(a.checked_rem(g).unwrap_or(0));
                let e = b.div_ceil(g).saturating_mul(g).min(self.pages);
                (s, e)
            };
            if s == 0 && e == self.pages {
                break; // as large as the region: the final attempt below
            }
            let delta = self.vma_delta(s, e, false);
            if delta > 0 {
                let estimate = VMA_ESTIMATE.load(Relaxed);
                let budget = VMA_BUDGET.load(Relaxed);
                if g == 1 {
                    // Single pages that cost entries stop at 7/8 of the
                    // budget and stay stopped (COARSE) until resets bring
                    // the estimate under half of it. Without that
                    // hysteresis every entry a block frees goes to a
                    // single page the next block swallows anyway, and
                    // writes fault once per page instead of once per block.
                    if estimate < budget / 2 {
                        COARSE.store(false, Relaxed);
                    }
                    if COARSE.load(Relaxed)
                        || estimate.saturating_add(delta) > budget.saturating_sub(budget / 8)
                    {
                        COARSE.store(true, Relaxed);
                        continue;
                    }
                } else if estimate.saturating_add(delta) > budget {
                    continue;
                }
            }
            self.mark_guessed(s, e, a, b);
            match self.open(s, e) {
                Ok(()) => return true,
                Err(libc::ENOMEM) => note_map_pressure(),
                Err(_) => return false,
            }
        }
        self.mark_guessed(0, self.pages, a, b);
        match self.open(0, self.pages) {
            Ok(()) => true,
            Err(e) => {
                if e == libc::ENOMEM {
                    note_map_pressure();
                }
                false
            }
        }
    }

    /// The handler's work for a write fault at `addr`: true if resolved.
    pub(crate) fn resolve(&self, addr: usize) -> bool {
        let Some(offset) = addr.checked_sub(self.start) else {
            return false;
        };
        let Some(i) = offset.checked_div(self.page_size) else {
            return false;
        };
        if i >= self.pages || !self.caller_writable(i) {
            return false; // the caller made it read-only: not ours
        }
        let _held = self.flag.lock();
        if !self.caller_writable(i) {
            return false; // protection changed while we waited
        }
        // Even if the page is not armed any more (another thread's fault
        // on it was resolved first), open it again: it costs one cheap
        // mprotect and always makes progress.
        if self.open_covering(i, i.saturating_add(1)) {
            crate::stats::FAULTS_HANDLED.fetch_add(1, Relaxed);
            true
        } else {
            complain(b"writewatch: cannot make a watched page writable (mprotect failed even for the whole region); passing the fault on\n");
            false
        }
    }
}

/// mprotect said ENOMEM: stop spending map entries beyond what we hold
/// now, and ask the backend to re-measure at its next reset.
fn note_map_pressure() {
    VMA_BUDGET.fetch_min(VMA_ESTIMATE.load(Relaxed), Relaxed);
    MAP_PRESSURE.store(true, Relaxed);
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::expect_used
)]
mod tests {
    use super::*;

    /// The kernel protection of page `i`, page by page (the reference).
    fn naive_prot(t: &Tracking, i: isize, ovr: Option<(usize, usize, bool)>) -> i32 {
        if i < 0 || i as usize >= t.pages {
            return -1;
        }
        let i = i as usize;
        let prot = t.caller_prot(i);
        let armed = match ovr {
            Some((a, b, arm)) if a <= i && i < b => arm,
            _ => t.is_armed(i),
        };
        if armed && prot & PROT_WRITE != 0 {
            prot & !PROT_WRITE
        } else {
            prot
        }
    }

    fn naive_boundaries(
        t: &Tracking,
        a: usize,
        b: usize,
        ovr: Option<(usize, usize, bool)>,
    ) -> isize {
        let b = b.min(t.pages) as isize;
        (a as isize..=b)
            .filter(|&i| naive_prot(t, i - 1, ovr) != naive_prot(t, i, ovr))
            .count() as isize
    }

    #[test]
    fn word_helpers_match_page_by_page() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for pages in [1usize, 2, 63, 64, 65, 130, 300] {
            for _ in 0..40 {
                let t = Tracking::new(0, pages, 4096);
                for i in 0..pages {
                    let r = next();
                    // Mostly runs, sometimes noise: like real regions.
                    let prot = match r % 7 {
                        0 => libc::PROT_READ,
                        1 => libc::PROT_NONE,
                        2 => libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                        _ => libc::PROT_READ | libc::PROT_WRITE,
                    };
                    if r % 3 != 0 {
                        t.set_caller_prot(i, i + 1, prot);
                    }
                    update(
                        &t.armed,
                        i,
                        i + 1,
                        (r >> 8) % 2 == 0 && t.caller_writable(i),
                    );
                }
                for _ in 0..20 {
                    let a = (next() as usize) % pages;
                    let b = a + 1 + (next() as usize) % (pages - a);
                    let (s, e, prot) = t.prot_run(a, b).expect("a < b: a run");
                    let naive_end = (a..b).find(|&i| t.caller_prot(i) != prot).unwrap_or(b);
                    assert_eq!((s, e, prot), (a, naive_end, t.caller_prot(a)), "prot_run");
                    let uniform =
                        (a..b).all(|i| t.caller_prot(i) == prot) && prot & PROT_WRITE != 0;
                    assert_eq!(t.uniform_writable_prot(a, b), uniform.then_some(prot));
                    if uniform {
                        assert_eq!(
                            t.uniform_arm_delta(a, b),
                            t.vma_delta(a, b, true),
                            "pages {pages}, [{a}, {b})"
                        );
                    }
                    for ovr in [None, Some((a, b, true)), Some((a, b, false))] {
                        assert_eq!(
                            t.boundaries(a, b, ovr),
                            naive_boundaries(&t, a, b, ovr),
                            "pages {pages}, [{a}, {b}), {ovr:?}"
                        );
                    }
                }
            }
        }
    }
}
