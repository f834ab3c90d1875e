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
//!
//! The fault handler cannot take the lock (it may interrupt a thread that
//! holds it). Every change therefore also publishes an immutable snapshot
//! of `{start, end, &Region}` that the handler reads without waiting
//! (`crate::signal::handler::SnapshotCell`). A removal publishes the
//! snapshot without the region and waits for readers of the old one to
//! finish before the `Arc<Region>` is handed back, so the handler never
//! sees a freed region.

use std::any::Any;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};

use crate::error::{Error, Result};
use crate::page::PageRange;
use crate::signal::handler::{self, Entry, REGION_SNAPSHOT, Snapshot};

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

/// Publishes `regions` for the fault handler and retires the previous
/// snapshot. Called with the write lock held (writers are serialized).
fn publish(regions: &[Arc<Region>]) {
    let entries = regions
        .iter()
        .map(|r| Entry {
            start: r.range.start,
            end: r.range.end,
            region: Arc::as_ptr(r),
        })
        .collect();
    REGION_SNAPSHOT.replace(Box::new(Snapshot { entries }));
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
    publish(&regions);
    Ok(())
}

/// Removes entry `i`; returns it once no fault handler can still see it.
fn remove_at(regions: &mut Vec<Arc<Region>>, i: usize) -> Arc<Region> {
    let region = regions.remove(i);
    if region.origin == Origin::Watch {
        // The caller's memory outlives the region: a write that faulted
        // just before the unwatch may reach the handler after this.
        handler::bury(region.range.start, region.range.end);
    }
    publish(regions);
    region
}

/// Removes exactly `region`, if it is still registered.
pub fn remove(region: &Arc<Region>) -> bool {
    let mut regions = REGIONS.write();
    match regions.binary_search_by_key(&region.range.start, |r| r.range.start) {
        Ok(i) if Arc::ptr_eq(&regions[i], region) => {
            remove_at(&mut regions, i);
            true
        }
        _ => false,
    }
}

/// True if some registered region overlaps `range`.
pub fn any_overlapping(range: &PageRange) -> bool {
    !overlapping(range).is_empty()
}
