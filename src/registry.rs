//! The watched regions of this process.
//!
//! A [`Region`] is one `ww_alloc` allocation or one `ww_watch` range. The
//! registry keeps them sorted by address behind a reader-writer lock:
//! lookups (every get/reset/protect) share it, `alloc`/`free`/`watch`/
//! `unwatch` take it exclusively for the instant of the insert or removal.
//!
//! A region's life is guarded separately by [`Region::life`]: operations
//! hold it shared while they touch the memory, `free`/`unwatch` take it
//! exclusively and mark the region dead before unmapping, so an operation
//! that found the region just before its removal either finishes first or
//! sees it dead (EINVAL) — it never scans unmapped or reused memory.

use std::any::Any;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};

use crate::error::{Error, Result};
use crate::page::PageRange;

/// How a region's memory came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `ww_alloc`: we own the mapping, including one guard page each side.
    Alloc {
        /// Size of each PROT_NONE guard, in bytes.
        guard: usize,
    },
    /// `ww_watch`: the caller's memory.
    Watch,
}

/// One watched range and its backend's state.
pub struct Region {
    /// The watched pages (guards excluded).
    pub range: PageRange,
    /// Alloc or watch.
    pub origin: Origin,
    /// Shared by operations, exclusive for teardown; `false` once dead.
    pub life: RwLock<bool>,
    /// Per-backend state, created by `Backend::new_state`.
    pub state: Box<dyn Any + Send + Sync>,
}

impl Region {
    /// Holds the region alive for an operation; `EINVAL` if already freed.
    pub fn enter(&self) -> Result<RwLockReadGuard<'_, bool>> {
        let g = self.life.read();
        if *g { Ok(g) } else { Err(Error::INVAL) }
    }

    /// The backend state, which must be of type `T`.
    pub fn state<T: 'static>(&self) -> &T {
        self.state
            .downcast_ref()
            .expect("region state of the active backend")
    }

    /// Page index of `addr` within the region.
    pub fn page_index(&self, addr: usize) -> usize {
        (addr - self.range.start) / crate::page::page_size()
    }
}

/// Regions sorted by start address; they never overlap.
static REGIONS: RwLock<Vec<Arc<Region>>> = RwLock::new(Vec::new());

/// The region containing all of `range`, if one does.
pub fn find_containing(range: &PageRange) -> Option<Arc<Region>> {
    let regions = REGIONS.read();
    let i = regions.partition_point(|r| r.range.start <= range.start);
    let r = regions.get(i.checked_sub(1)?)?;
    r.range.contains(range).then(|| r.clone())
}

/// The region whose start is exactly `base`.
pub fn find_base(base: usize) -> Option<Arc<Region>> {
    let regions = REGIONS.read();
    let i = regions
        .binary_search_by_key(&base, |r| r.range.start)
        .ok()?;
    Some(regions[i].clone())
}

/// Every region overlapping `range`, in address order.
pub fn overlapping(range: &PageRange) -> Vec<Arc<Region>> {
    let regions = REGIONS.read();
    let first = regions.partition_point(|r| r.range.end <= range.start);
    regions[first..]
        .iter()
        .take_while(|r| r.range.start < range.end)
        .cloned()
        .collect()
}

/// Every region (for fork recovery and soft-dirty harvesting).
pub fn all() -> Vec<Arc<Region>> {
    REGIONS.read().clone()
}

/// Inserts `region`; `EBUSY` if it overlaps one already registered.
pub fn insert(region: Arc<Region>) -> Result<()> {
    let mut regions = REGIONS.write();
    let i = regions.partition_point(|r| r.range.start < region.range.start);
    let overlaps_prev = i > 0 && regions[i - 1].range.end > region.range.start;
    let overlaps_next = regions
        .get(i)
        .is_some_and(|r| r.range.start < region.range.end);
    if overlaps_prev || overlaps_next {
        return Err(Error::BUSY);
    }
    regions.insert(i, region);
    Ok(())
}

/// Removes the region starting at `base` if `pred` accepts it.
pub fn remove_if(base: usize, pred: impl FnOnce(&Region) -> bool) -> Option<Arc<Region>> {
    let mut regions = REGIONS.write();
    let i = regions
        .binary_search_by_key(&base, |r| r.range.start)
        .ok()?;
    if !pred(&regions[i]) {
        return None;
    }
    Some(regions.remove(i))
}

/// True if some registered region overlaps `range`.
pub fn any_overlapping(range: &PageRange) -> bool {
    !overlapping(range).is_empty()
}

/// Runs `f` on the region containing `addr`, for the SIGSEGV handler: it
/// never blocks and never allocates (no `Arc` is cloned, so no region can
/// be dropped here). The registry lock is only *tried* (recursively, so it
/// succeeds while other readers hold it even if a writer waits) and
/// retried with `sched_yield` while an insert or removal holds it; after
/// about a million failed tries it gives up and returns `None`.
///
/// Interim: the mprotect branch brings a lock-free snapshot for the
/// handler (see `crate::signal`), which replaces this.
pub(crate) fn with_region_at<R>(addr: usize, f: impl FnOnce(&Region) -> R) -> Option<R> {
    let mut tries = 0u32;
    let regions = loop {
        if let Some(g) = REGIONS.try_read_recursive() {
            break g;
        }
        tries += 1;
        if tries > 1 << 20 {
            return None;
        }
        crate::sys::yield_now();
    };
    let i = regions.partition_point(|r| r.range.start <= addr);
    let r = regions.get(i.checked_sub(1)?)?;
    (addr < r.range.end).then(|| f(r))
}
