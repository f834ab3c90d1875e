//! Backends: the kernel mechanisms that find written pages.
//!
//! | backend | mechanism | kernel |
//! |---|---|---|
//! | [`written`] | userfaultfd async write-protect + `PAGEMAP_SCAN` | 6.7+ |
//! | [`soft_dirty`] | PTE soft-dirty bit + `clear_refs` | `CONFIG_MEM_SOFT_DIRTY` |
//! | [`mprotect`] | `mprotect` + SIGSEGV handler | any |
//!
//! Each implements [`Backend`]. The API layer has already validated and
//! page-aligned every range and holds the region alive; a backend never
//! sees a C pointer. The process uses one backend, chosen once (see
//! `crate::api`); availability is probed by doing, once per process.

pub mod mprotect;
pub mod soft_dirty;
pub mod written;

use std::any::Any;
use std::sync::OnceLock;

use crate::error::Result;
use crate::page::{PageRange, page_size};
use crate::registry::Region;

/// A backend, as named in the C header (`ww_backend`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Best available (only as a request).
    Auto = 0,
    /// userfaultfd `WP_ASYNC` + `PAGEMAP_SCAN` (Linux 6.7+).
    Written = 1,
    /// PTE soft-dirty bit.
    SoftDirty = 2,
    /// mprotect + SIGSEGV.
    Mprotect = 3,
}

impl BackendKind {
    /// The concrete backends, best first (the order AUTO tries them in).
    pub const CONCRETE: [BackendKind; 3] = [
        BackendKind::Written,
        BackendKind::SoftDirty,
        BackendKind::Mprotect,
    ];

    /// From the C enum value.
    pub fn from_raw(v: u32) -> Option<BackendKind> {
        [
            BackendKind::Auto,
            BackendKind::Written,
            BackendKind::SoftDirty,
            BackendKind::Mprotect,
        ]
        .into_iter()
        .find(|k| *k as u32 == v)
    }

    /// `"auto"`, `"written"`, `"soft-dirty"`, `"mprotect"`.
    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or("?")
    }

    /// [`name`](Self::name) as a C string with static lifetime.
    pub fn c_name(self) -> &'static std::ffi::CStr {
        match self {
            BackendKind::Auto => c"auto",
            BackendKind::Written => c"written",
            BackendKind::SoftDirty => c"soft-dirty",
            BackendKind::Mprotect => c"mprotect",
        }
    }

    /// Parses a [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<BackendKind> {
        [
            BackendKind::Auto,
            BackendKind::Written,
            BackendKind::SoftDirty,
            BackendKind::Mprotect,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// How much a scan may report.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// At most this many pages (`ww_get_write_watch`).
    Pages(usize),
    /// At most this many maximal runs (`ww_get_written_ranges`).
    Runs(usize),
}

/// A written run `[start, start + size)` in the caller's output array;
/// same layout as C `ww_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WrittenRange {
    /// First byte of the run.
    pub start: usize,
    /// Length in bytes.
    pub size: usize,
}

/// Where a scan's results go: straight into the caller's array, so a get
/// allocates nothing. Runs arrive in ascending order; adjacent runs are
/// merged (the kernel may split one run across its internal buffers).
pub struct Sink<'a> {
    out: Out<'a>,
    filled: usize,
    pages: usize,
    /// End of the last reported page (0 before the first).
    reported_end: usize,
}

enum Out<'a> {
    Pages(&'a mut [usize]),
    Runs(&'a mut [WrittenRange]),
}

impl<'a> Sink<'a> {
    /// Page addresses into `out`.
    pub fn pages(out: &'a mut [usize]) -> Sink<'a> {
        Sink {
            out: Out::Pages(out),
            filled: 0,
            pages: 0,
            reported_end: 0,
        }
    }

    /// Runs into `out`.
    pub fn runs(out: &'a mut [WrittenRange]) -> Sink<'a> {
        Sink {
            out: Out::Runs(out),
            filled: 0,
            pages: 0,
            reported_end: 0,
        }
    }

    /// The limit left: pages or runs.
    pub fn remaining(&self) -> Limit {
        match &self.out {
            Out::Pages(o) => Limit::Pages(o.len() - self.filled),
            Out::Runs(o) => Limit::Runs(o.len() - self.filled),
        }
    }

    /// True when nothing more fits (a further run could still merge).
    pub fn is_full(&self) -> bool {
        match &self.out {
            Out::Pages(o) => self.filled == o.len(),
            Out::Runs(o) => self.filled == o.len(),
        }
    }

    /// Reports the written run `[start, end)`. Returns where the reported
    /// part ends: `end` if it all fit, less (possibly `start`) if the
    /// output filled. The caller must reset exactly what was reported.
    ///
    /// Runs must come in ascending order. A run that overlaps what was
    /// already reported is clipped, so a page is never listed twice even if
    /// the kernel's resume address lags (seen with `PAGEMAP_SCAN` vectors
    /// longer than 512 entries on 6.18).
    pub fn push(&mut self, start: usize, end: usize) -> usize {
        let ps = page_size();
        let start = start.max(self.reported_end).min(end);
        if start == end {
            return end;
        }
        let done = match &mut self.out {
            Out::Pages(o) => {
                let fit = ((end - start) / ps).min(o.len() - self.filled);
                for (k, slot) in o[self.filled..self.filled + fit].iter_mut().enumerate() {
                    *slot = start + k * ps;
                }
                self.filled += fit;
                self.pages += fit;
                start + fit * ps
            }
            Out::Runs(o) => {
                if let Some(last) = self.filled.checked_sub(1).map(|i| &mut o[i])
                    && last.start + last.size == start
                {
                    last.size += end - start;
                } else if self.filled < o.len() {
                    o[self.filled] = WrittenRange {
                        start,
                        size: end - start,
                    };
                    self.filled += 1;
                } else {
                    return start;
                }
                self.pages += (end - start) / ps;
                end
            }
        };
        self.reported_end = self.reported_end.max(done);
        done
    }

    /// Entries written (pages or runs).
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// Pages reported.
    pub fn pages_reported(&self) -> usize {
        self.pages
    }
}

/// One kernel mechanism for finding written pages.
pub trait Backend: Send + Sync + 'static {
    /// Which one.
    fn kind(&self) -> BackendKind;

    /// The per-region state this backend keeps.
    fn new_state(&self, range: PageRange) -> Box<dyn Any + Send + Sync>;

    /// Starts tracking `r`: afterwards no page reads as written, and any
    /// later write is caught. `fresh`: the memory was just mapped by us.
    fn watch(&self, r: &Region, fresh: bool) -> Result<()>;

    /// Stops tracking `r`, leaving it accessible as the caller set it.
    fn unwatch(&self, r: &Region) -> Result<()>;

    /// Reports the written pages of `range` (inside `r`) into `sink` in
    /// ascending order until it is full; with `reset`, exactly the
    /// reported pages are reset, atomically per page with respect to
    /// concurrent writes (a racing write is reported now or next time).
    fn scan(&self, r: &Region, range: PageRange, reset: bool, sink: &mut Sink<'_>) -> Result<()>;

    /// Marks every page of `range` unwritten.
    fn reset(&self, r: &Region, range: PageRange) -> Result<()>;

    /// Sets the caller's protection on `range`, keeping written state.
    fn protect(&self, r: &Region, range: PageRange, prot: i32) -> Result<()>;

    /// Marks `range` written and makes it writable by the kernel.
    fn prepare_kernel_write(&self, r: &Region, range: PageRange) -> Result<()>;

    /// Called in a forked child before its first operation, with every
    /// region: make tracking work in this new address space. Reporting
    /// extra pages is allowed; missing a write made after the fork is not.
    fn after_fork(&self, regions: &[std::sync::Arc<Region>]) -> Result<()>;
}

/// Why a backend is or is not available here, found by trying it on a
/// scratch mapping once per process.
pub fn probe(kind: BackendKind) -> &'static std::result::Result<(), String> {
    static CACHE: [OnceLock<std::result::Result<(), String>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    match kind {
        BackendKind::Auto => &Ok(()),
        BackendKind::Written => CACHE[0].get_or_init(written::probe),
        BackendKind::SoftDirty => CACHE[1].get_or_init(soft_dirty::probe),
        BackendKind::Mprotect => CACHE[2].get_or_init(mprotect::probe),
    }
}

/// The instance in `cell`, made by `make` on first use once the probe of
/// `kind` has passed (`ENOTSUP` if it failed). One lock serializes the
/// making, so `make` runs at most once per success; a failed `make` is
/// retried by the next call.
fn instance_once<T: Sync>(
    cell: &'static OnceLock<T>,
    kind: BackendKind,
    make: impl FnOnce() -> Result<T>,
) -> Result<&'static T> {
    static MAKING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let _g = MAKING.lock();
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    probe(kind)
        .as_ref()
        .map_err(|_| crate::error::Error::NOTSUP)?;
    let v = make()?;
    Ok(cell.get_or_init(|| v))
}

/// The process-wide instance of an available backend.
pub fn instance(kind: BackendKind) -> Result<&'static dyn Backend> {
    match kind {
        BackendKind::Written => Ok(written::instance()?),
        BackendKind::SoftDirty => soft_dirty::instance(),
        BackendKind::Mprotect => mprotect::instance(),
        BackendKind::Auto => Err(crate::error::Error::INVAL),
    }
}
