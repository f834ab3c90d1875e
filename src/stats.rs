//! Process-wide counters behind `ww_get_stats`. Plain relaxed atomics, so
//! they may be bumped from the fault handler too.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub(crate) static REGIONS: AtomicU64 = AtomicU64::new(0);
pub(crate) static WATCHED_BYTES: AtomicU64 = AtomicU64::new(0);
pub(crate) static SCANS: AtomicU64 = AtomicU64::new(0);
pub(crate) static RESETS: AtomicU64 = AtomicU64::new(0);
pub(crate) static PAGES_REPORTED: AtomicU64 = AtomicU64::new(0);
pub(crate) static FAULTS_HANDLED: AtomicU64 = AtomicU64::new(0);

/// A copy of the counters (same fields as C `ww_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Regions currently watched.
    pub regions: u64,
    /// Bytes currently watched, guard pages excluded.
    pub watched_bytes: u64,
    /// Successful get calls (both forms).
    pub scans: u64,
    /// Gets with reset, plus explicit resets.
    pub resets: u64,
    /// Pages reported by all gets.
    pub pages_reported: u64,
    /// Write faults resolved by the mprotect backend.
    pub faults_handled: u64,
}

/// Reads every counter (each atomically; not a snapshot across counters).
pub fn stats() -> Stats {
    Stats {
        regions: REGIONS.load(Relaxed),
        watched_bytes: WATCHED_BYTES.load(Relaxed),
        scans: SCANS.load(Relaxed),
        resets: RESETS.load(Relaxed),
        pages_reported: PAGES_REPORTED.load(Relaxed),
        faults_handled: FAULTS_HANDLED.load(Relaxed),
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

pub(crate) fn sub(counter: &AtomicU64, n: u64) {
    counter.fetch_sub(n, Relaxed);
}
