//! The operations behind the C API, and a safe Rust API on top of them.
//!
//! Raw-address functions (`get_write_watch`, `reset_write_watch`, ...)
//! validate in the order the C contract fixes, then call the backend.
//! [`WatchedAlloc`] and [`WatchedRange`] are the owning Rust types.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::backend::{self, Backend, BackendKind, Sink, WrittenRange};
use crate::error::{Error, Result};
use crate::page::{PageRange, is_aligned, page_size};
use crate::registry::{self, Origin, Region};
use crate::stats::{self, PAGES_REPORTED, REGIONS, RESETS, SCANS, WATCHED_BYTES};
use crate::sys::{getpid, mm};

// ---------------------------------------------------------------------------
// Backend selection
// ---------------------------------------------------------------------------

/// What `init` asked for before the backend was committed.
static REQUESTED: Mutex<Option<BackendKind>> = Mutex::new(None);
/// The backend in use, fixed by the first `alloc`/`watch`.
static ACTIVE: OnceLock<&'static dyn Backend> = OnceLock::new();
/// The process the registry's kernel state belongs to (fork detection).
static OWNER: AtomicI32 = AtomicI32::new(0);
static FORK_LOCK: Mutex<()> = Mutex::new(());
/// Set once every backend has been probed (all answers are cached).
static ALL_PROBED: AtomicBool = AtomicBool::new(false);

/// Each backend is probed once and the answer kept for the life of the
/// process (`backend::probe`). A shortage at that moment (no free
/// descriptor, no address space) says nothing about the kernel, and
/// remembering it would leave the backend "unavailable" (and AUTO on a
/// worse one) for good. So before a probe may run, check there is room for
/// one, and otherwise fail with that errno (`EMFILE`, `ENFILE`, `ENOMEM`):
/// the caller may retry, and the next call probes afresh. A backend the
/// kernel or a sandbox refuses for good (`ENOSYS`, seccomp's `EPERM`) is
/// probed normally and reported unavailable; AUTO then picks the next one.
fn room_to_probe() -> Result<()> {
    if ALL_PROBED.load(Ordering::Acquire) {
        return Ok(());
    }
    Ok(crate::sys::probe_room()?)
}

/// Chooses the backend. Allowed any number of times before the first
/// allocation or watch; after that `Ok` for the active backend (or
/// `Auto`), `EBUSY` for another. `ENOTSUP` if unavailable here.
pub fn init(kind: BackendKind) -> Result<()> {
    let mut req = REQUESTED.lock();
    if let Some(active) = ACTIVE.get() {
        return if kind == BackendKind::Auto || kind == active.kind() {
            Ok(())
        } else {
            Err(Error::BUSY)
        };
    }
    room_to_probe()?;
    if backend::probe(kind).is_err() {
        return Err(Error::NOTSUP);
    }
    *req = Some(kind);
    Ok(())
}

/// The backend in use, or the one the next allocation would use. Never `Auto`.
pub fn active_backend() -> BackendKind {
    match ACTIVE.get() {
        Some(b) => b.kind(),
        None => resolve(*REQUESTED.lock()).unwrap_or(BackendKind::Mprotect),
    }
}

/// Bit `1 << kind` set for each available backend. 0 while there is no
/// room to probe (see `room_to_probe`): nothing is remembered then.
pub fn available_backends() -> u32 {
    if room_to_probe().is_err() {
        return 0;
    }
    let bits = BackendKind::CONCRETE
        .into_iter()
        .filter(|k| backend::probe(*k).is_ok())
        .fold(0, |bits, k| bits | 1 << k as u32);
    ALL_PROBED.store(true, Ordering::Release);
    bits
}

/// Why `kind` is or is not available (probed once).
pub fn probe_backend(kind: BackendKind) -> std::result::Result<(), String> {
    if kind != BackendKind::Auto
        && let Err(e) = room_to_probe()
    {
        return Err(format!("not probed: no room to probe now ({e})"));
    }
    backend::probe(kind).clone()
}

/// The concrete backend for a request: `init`'s, else `$WW_BACKEND`,
/// else the best available.
fn resolve(requested: Option<BackendKind>) -> Result<BackendKind> {
    let kind = match requested {
        Some(k) => k,
        None => match std::env::var("WW_BACKEND") {
            Ok(s) if !s.is_empty() => BackendKind::from_name(&s).ok_or(Error::INVAL)?,
            _ => BackendKind::Auto,
        },
    };
    if kind != BackendKind::Auto {
        return Ok(kind);
    }
    room_to_probe()?;
    BackendKind::CONCRETE
        .into_iter()
        .find(|k| backend::probe(*k).is_ok())
        .ok_or(Error::NOTSUP)
}

/// The active backend, committing the choice on first use.
fn commit() -> Result<&'static dyn Backend> {
    if let Some(b) = ACTIVE.get() {
        return Ok(*b);
    }
    let req = REQUESTED.lock();
    if let Some(b) = ACTIVE.get() {
        return Ok(*b);
    }
    let kind = resolve(*req)?;
    // An explicitly named backend is probed here, by `instance`.
    room_to_probe()?;
    let b = backend::instance(kind)?;
    // Before any region exists: the fault handler dispatches on this.
    crate::signal::set_active_kind(b.kind());
    OWNER.store(getpid(), Ordering::Release);
    mm::fork_canary::init();
    Ok(*ACTIVE.get_or_init(|| b))
}

/// The active backend for an operation on existing regions, after
/// bringing a forked child's kernel state up to date.
fn active() -> Result<&'static dyn Backend> {
    let b = *ACTIVE.get().ok_or(Error::INVAL)?;
    // One load in the common case; getpid (a system call) only in a child
    // or where the canary is unavailable.
    if mm::fork_canary::same_process() {
        return Ok(b);
    }
    let pid = getpid();
    if OWNER.load(Ordering::Acquire) != pid {
        let _g = FORK_LOCK.lock();
        if OWNER.load(Ordering::Acquire) != pid {
            b.after_fork(&registry::all())?;
            OWNER.store(pid, Ordering::Release);
        }
    }
    // Only once the child's state is up to date.
    mm::fork_canary::mark();
    Ok(b)
}

// ---------------------------------------------------------------------------
// Regions
// ---------------------------------------------------------------------------

fn add_region(b: &'static dyn Backend, range: PageRange, origin: Origin) -> Result<Arc<Region>> {
    let region = Arc::new(Region {
        range,
        origin,
        life: parking_lot::RwLock::new(true),
        state: b.new_state(range),
    });
    // Huge pages would make tracking 2 MiB coarse (soft-dirty) or force
    // splits on first write (uffd-wp); keep watched memory at 4 KiB.
    let _ = mm::advise(range.start, range.len(), libc::MADV_NOHUGEPAGE);
    // Registered before the backend arms it: once a page is
    // write-protected, a write fault on it must find its region (a
    // thread may be writing to memory passed to `watch` right now), and
    // the soft-dirty backend's process-wide clears must harvest every
    // region they might clear (backend/soft_dirty.rs, "Born clean").
    registry::insert(region.clone())?;
    if let Err(e) = b.watch(&region, origin != Origin::Watch) {
        registry::remove(&region);
        return Err(e);
    }
    stats::add(&REGIONS, 1);
    stats::add(&WATCHED_BYTES, range.len() as u64);
    Ok(region)
}

/// How [`retire`] ended.
enum Retired {
    /// The region was stopped and removed; the backend's `unwatch` result.
    Done(Result<()>),
    /// Someone else retired it first.
    AlreadyDead,
}

/// Stops tracking `region`, then removes it from the registry. In that
/// order: while pages are still write-protected, a fault on them must
/// find the region (mprotect backend). If `unwatch` fails and `force` is
/// false, the region stays alive and registered.
fn retire(b: &'static dyn Backend, region: &Arc<Region>, force: bool) -> Retired {
    let mut life = region.life.write();
    if !*life {
        return Retired::AlreadyDead;
    }
    let unwatched = b.unwatch(region);
    if unwatched.is_err() && !force {
        return Retired::Done(unwatched);
    }
    *life = false;
    drop(life);
    registry::remove(region);
    stats::sub(&REGIONS, 1);
    stats::sub(&WATCHED_BYTES, region.range.len() as u64);
    Retired::Done(unwatched)
}

/// Maps `size` bytes (rounded up to pages) of zeroed read-write memory,
/// watched from birth, between two PROT_NONE guard pages. Returns its base.
pub fn alloc(size: usize) -> Result<usize> {
    if size == 0 {
        return Err(Error::INVAL);
    }
    let b = commit()?;
    active()?;
    let ps = page_size();
    let len = crate::page::align_up(size).ok_or(Error::NOMEM)?;
    // Regions of at least the span of one page-table page (2 MiB with 4 KiB
    // pages) start on such a boundary, as the kernel places large anonymous
    // mappings. Behind a one-page guard they would otherwise straddle page
    // tables: a heap touched in aligned 2 MiB chunks then needed two
    // page-table pages per chunk instead of one.
    let table_span = ps * (ps / 8);
    let align = if len >= table_span { table_span } else { ps };
    let total = len.checked_add(2 * ps + (align - ps)).ok_or(Error::NOMEM)?;
    let reserved = mm::reserve(total)?;
    let base = (reserved + ps).next_multiple_of(align);
    let (map, map_end) = (base - ps, base + len + ps);
    // Give back what the alignment did not use.
    if map > reserved {
        // SAFETY: the head of our fresh reservation, before the region.
        let _ = unsafe { mm::unmap(reserved, map - reserved) };
    }
    if reserved + total > map_end {
        // SAFETY: the tail of our fresh reservation, after the region.
        let _ = unsafe { mm::unmap(map_end, reserved + total - map_end) };
    }
    let total = map_end - map;
    // The guards stay PROT_NONE, so the read-write middle can never merge
    // with a neighbouring mapping (a merged VMA reads all soft-dirty).
    // SAFETY: `[base, base+len)` is inside our fresh reservation.
    let made_rw = unsafe { mm::protect(base, len, libc::PROT_READ | libc::PROT_WRITE) };
    let added = made_rw.map_err(Error::from).and_then(|()| {
        add_region(
            b,
            PageRange::new(base, base + len),
            Origin::Alloc { guard: ps },
        )
    });
    if let Err(e) = added {
        // SAFETY: nothing references the reservation yet.
        let _ = unsafe { mm::unmap(map, total) };
        return Err(e);
    }
    Ok(base)
}

/// Frees a region made by [`alloc`].
///
/// # Safety
/// No live reference may point into the region.
pub unsafe fn free(base: usize) -> Result<()> {
    let b = active()?;
    let region = registry::find_base(base)
        .filter(|r| matches!(r.origin, Origin::Alloc { .. }))
        .ok_or(Error::INVAL)?;
    let Retired::Done(unwatched) = retire(b, &region, true) else {
        return Err(Error::INVAL);
    };
    let Origin::Alloc { guard } = region.origin else {
        unreachable!()
    };
    let (start, len) = (region.range.start - guard, region.range.len() + 2 * guard);
    // SAFETY: the caller gives up the memory; the region is dead, so no
    // operation of ours touches it any more.
    unsafe { mm::unmap(start, len) }?;
    unwatched
}

/// Starts watching the caller's memory `[base, base + size)`: page-aligned
/// `base`, size rounded up to pages, read-write private or shared
/// anonymous memory. Contents are kept; earlier writes are not reported.
///
/// # Safety
/// The memory must stay mapped until [`unwatch`].
pub unsafe fn watch(base: usize, size: usize) -> Result<()> {
    if size == 0 || !is_aligned(base) || base == 0 {
        return Err(Error::INVAL);
    }
    let range = PageRange::covering(base, size).ok_or(Error::INVAL)?;
    let b = commit()?;
    active()?;
    if registry::any_overlapping(&range) {
        return Err(Error::BUSY);
    }
    check_watchable(range)?;
    add_region(b, range, Origin::Watch).map(drop)
}

/// Every byte of `range` must be mapped read-write anonymous memory.
fn check_watchable(range: PageRange) -> Result<()> {
    let maps = mm::mappings_in(range.start, range.end)?;
    let mut next = range.start;
    for m in &maps {
        if m.start > next || !m.is_rw() || !m.is_anonymous() {
            return Err(Error::INVAL);
        }
        next = m.end;
    }
    if next < range.end {
        Err(Error::INVAL)
    } else {
        Ok(())
    }
}

/// Stops watching memory passed to [`watch`]; it stays read-write.
pub fn unwatch(base: usize) -> Result<()> {
    let b = active()?;
    let region = registry::find_base(base)
        .filter(|r| r.origin == Origin::Watch)
        .ok_or(Error::INVAL)?;
    match retire(b, &region, false) {
        Retired::Done(unwatched) => unwatched,
        Retired::AlreadyDead => Err(Error::INVAL),
    }
}

/// The region holding all of `[base, base+size)` (rounded out to pages).
fn lookup(base: usize, size: usize) -> Result<(Arc<Region>, PageRange)> {
    let range = PageRange::covering(base, size).ok_or(Error::INVAL)?;
    let region = registry::find_containing(&range).ok_or(Error::INVAL)?;
    Ok((region, range))
}

fn scan(reset: bool, base: usize, size: usize, sink: &mut Sink<'_>) -> Result<()> {
    if size == 0 {
        return Err(Error::INVAL);
    }
    let (region, range) = lookup(base, size)?;
    let b = active()?;
    let _alive = region.enter()?;
    b.scan(&region, range, reset, sink)?;
    stats::add(&SCANS, 1);
    if reset {
        stats::add(&RESETS, 1);
    }
    stats::add(&PAGES_REPORTED, sink.pages_reported() as u64);
    Ok(())
}

/// `GetWriteWatch`: fills `out` with up to `out.len()` written page
/// addresses of `[base, base+size)`, ascending; returns how many. With
/// `reset`, exactly the returned pages are reset, atomically per page.
/// `out` must not be empty (`EINVAL`).
pub fn get_write_watch(reset: bool, base: usize, size: usize, out: &mut [usize]) -> Result<usize> {
    if out.is_empty() {
        return Err(Error::INVAL);
    }
    let mut sink = Sink::pages(out);
    scan(reset, base, size, &mut sink)?;
    Ok(sink.filled())
}

/// Like [`get_write_watch`], but maximal runs of written pages, clipped to
/// the rounded range; with `reset`, the returned runs are reset.
pub fn get_written_ranges(
    reset: bool,
    base: usize,
    size: usize,
    out: &mut [WrittenRange],
) -> Result<usize> {
    if out.is_empty() {
        return Err(Error::INVAL);
    }
    let mut sink = Sink::runs(out);
    scan(reset, base, size, &mut sink)?;
    Ok(sink.filled())
}

/// `ResetWriteWatch`: marks every page of the range unwritten.
pub fn reset_write_watch(base: usize, size: usize) -> Result<()> {
    if size == 0 {
        return Err(Error::INVAL);
    }
    let (region, range) = lookup(base, size)?;
    let b = active()?;
    let _alive = region.enter()?;
    b.reset(&region, range)?;
    stats::add(&RESETS, 1);
    Ok(())
}

/// `VirtualProtect` for watched memory: `PROT_NONE`, `PROT_READ`,
/// `PROT_READ|PROT_WRITE`, each optionally `|PROT_EXEC`. Written state is kept.
///
/// # Safety
/// Removing access from memory that Rust code still reads is the caller's
/// responsibility.
pub unsafe fn protect(base: usize, size: usize, prot: i32) -> Result<()> {
    let allowed = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
    if size == 0
        || prot & !allowed != 0
        || (prot & libc::PROT_WRITE != 0 && prot & libc::PROT_READ == 0)
    {
        return Err(Error::INVAL);
    }
    let (region, range) = lookup(base, size)?;
    let b = active()?;
    let _alive = region.enter()?;
    b.protect(&region, range, prot)
}

/// Before a syscall writes into `[addr, addr+len)`: marks every watched
/// page there written and writable by the kernel. Unwatched parts are
/// ignored. `EINVAL` only if the range wraps.
pub fn prepare_kernel_write(addr: usize, len: usize) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let range = PageRange::covering(addr, len).ok_or(Error::INVAL)?;
    if ACTIVE.get().is_none() {
        return Ok(()); // nothing is watched yet
    }
    let b = active()?;
    for region in registry::overlapping(&range) {
        let Ok(_alive) = region.enter() else { continue };
        if let Some(part) = region.range.intersect(&range) {
            b.prepare_kernel_write(&region, part)?;
        }
    }
    Ok(())
}

/// For hosts that own SIGSEGV: resolves a write-watch fault at `addr`.
/// Returns true if it was ours. Async-signal-safe.
pub fn handle_fault(addr: usize) -> bool {
    crate::signal::handle_fault(addr)
}

/// The counters.
pub fn stats() -> stats::Stats {
    stats::stats()
}

// ---------------------------------------------------------------------------
// Safe owning types
// ---------------------------------------------------------------------------

/// Page protection for [`WatchedAlloc::protect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// No access.
    None,
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

impl Protection {
    fn bits(self) -> i32 {
        match self {
            Protection::None => libc::PROT_NONE,
            Protection::Read => libc::PROT_READ,
            Protection::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        }
    }
}

/// Memory from [`alloc`], freed on drop.
///
/// ```
/// use writewatch::WatchedAlloc;
/// let mut mem = WatchedAlloc::new(16 * writewatch::page_size()).unwrap();
/// assert!(mem.written_pages(.., false).unwrap().is_empty());
/// mem.as_mut_slice()[5 * writewatch::page_size()] = 1;
/// assert_eq!(mem.written_pages(.., true).unwrap(), vec![5]);
/// assert!(mem.written_pages(.., false).unwrap().is_empty());
/// ```
pub struct WatchedAlloc {
    base: usize,
    len: usize,
}

// SAFETY: the type owns plain memory; concurrent access goes through `&`
// methods that only call thread-safe library functions, and mutable
// access needs `&mut`.
unsafe impl Send for WatchedAlloc {}
// SAFETY: as above; shared references only read metadata or call
// thread-safe library functions.
unsafe impl Sync for WatchedAlloc {}

/// Turns an offset range within a region of `len` bytes into bytes.
fn offsets(r: impl std::ops::RangeBounds<usize>, len: usize) -> Result<Range<usize>> {
    use std::ops::Bound::*;
    let start = match r.start_bound() {
        Included(&s) => s,
        Excluded(&s) => s.checked_add(1).ok_or(Error::INVAL)?,
        Unbounded => 0,
    };
    let end = match r.end_bound() {
        Included(&e) => e.checked_add(1).ok_or(Error::INVAL)?,
        Excluded(&e) => e,
        Unbounded => len,
    };
    if start >= end || end > len {
        Err(Error::INVAL)
    } else {
        Ok(start..end)
    }
}

macro_rules! region_methods {
    () => {
        /// Base address.
        pub fn as_ptr(&self) -> *mut u8 {
            self.base as *mut u8
        }

        /// Length in bytes (a whole number of pages).
        pub fn len(&self) -> usize {
            self.len
        }

        /// Always false: regions are at least one page.
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// Indices of the written pages within `range` (byte offsets, rounded
        /// out to pages); with `reset`, those pages are reset atomically.
        pub fn written_pages(
            &self,
            range: impl std::ops::RangeBounds<usize>,
            reset: bool,
        ) -> Result<Vec<usize>> {
            let r = offsets(range, self.len)?;
            let mut out = vec![0usize; r.len().div_ceil(page_size()) + 1];
            let n = get_write_watch(reset, self.base + r.start, r.len(), &mut out)?;
            out.truncate(n);
            Ok(out
                .into_iter()
                .map(|a| (a - self.base) / page_size())
                .collect())
        }

        /// Up to `out.len()` written page addresses of `range`; returns how many.
        pub fn written_pages_into(
            &self,
            range: impl std::ops::RangeBounds<usize>,
            reset: bool,
            out: &mut [usize],
        ) -> Result<usize> {
            let r = offsets(range, self.len)?;
            get_write_watch(reset, self.base + r.start, r.len(), out)
        }

        /// Maximal runs of written pages within `range`, as byte offset ranges.
        pub fn written_ranges(
            &self,
            range: impl std::ops::RangeBounds<usize>,
            reset: bool,
        ) -> Result<Vec<Range<usize>>> {
            let r = offsets(range, self.len)?;
            let mut out = vec![WrittenRange::default(); r.len().div_ceil(2 * page_size()) + 1];
            let n = get_written_ranges(reset, self.base + r.start, r.len(), &mut out)?;
            Ok(out[..n]
                .iter()
                .map(|w| w.start - self.base..w.start - self.base + w.size)
                .collect())
        }

        /// Marks the pages of `range` unwritten.
        pub fn reset(&self, range: impl std::ops::RangeBounds<usize>) -> Result<()> {
            let r = offsets(range, self.len)?;
            reset_write_watch(self.base + r.start, r.len())
        }
    };
}

impl WatchedAlloc {
    /// `size` bytes (rounded up to pages) of zeroed, watched memory.
    pub fn new(size: usize) -> Result<WatchedAlloc> {
        let base = alloc(size)?;
        Ok(WatchedAlloc {
            base,
            len: crate::page::align_up(size).ok_or(Error::NOMEM)?,
        })
    }

    region_methods!();

    /// The memory as bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: we own `len` readable and writable bytes at `base` (unless
        // the caller changed protection with `protect`, which takes `&mut`
        // and is documented), and `&mut self` makes this borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.base as *mut u8, self.len) }
    }

    /// Changes the protection of `range`; written state is kept. While
    /// pages are not read-write, [`as_mut_slice`](Self::as_mut_slice)
    /// accesses to them fault: restore access first.
    pub fn protect(
        &mut self,
        range: impl std::ops::RangeBounds<usize>,
        prot: Protection,
    ) -> Result<()> {
        let r = offsets(range, self.len)?;
        // SAFETY: `&mut self` means no borrow of the memory is live.
        unsafe { protect(self.base + r.start, r.len(), prot.bits()) }
    }
}

impl Drop for WatchedAlloc {
    fn drop(&mut self) {
        // SAFETY: we own the region and no borrow outlives `self`.
        let _ = unsafe { free(self.base) };
    }
}

/// Caller memory being watched ([`watch`]); unwatched on drop.
pub struct WatchedRange {
    base: usize,
    len: usize,
}

impl WatchedRange {
    /// Watches `[base, base+len)`.
    ///
    /// # Safety
    /// The memory must stay mapped for the life of the returned value.
    pub unsafe fn new(base: *mut u8, len: usize) -> Result<WatchedRange> {
        // SAFETY: forwarded to the caller.
        unsafe { watch(base as usize, len) }?;
        Ok(WatchedRange {
            base: base as usize,
            len: crate::page::align_up(len).ok_or(Error::INVAL)?,
        })
    }

    region_methods!();
}

impl Drop for WatchedRange {
    fn drop(&mut self) {
        let _ = unwatch(self.base);
    }
}
