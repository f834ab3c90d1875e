//! The written-page backend: userfaultfd write-protect in async mode plus
//! the `PAGEMAP_SCAN` ioctl (Linux 6.7+).
//!
//! Each watched region is registered with one process-wide userfaultfd in
//! `UFFDIO_REGISTER_MODE_WP`, with `UFFD_FEATURE_WP_ASYNC`: a write to a
//! write-protected page is resolved by the kernel itself, which clears the
//! page's uffd-wp bit. So "written since the last reset" is exactly "not
//! write-protected", which `PAGEMAP_SCAN` reports as `PAGE_IS_WRITTEN`.
//! With `PM_SCAN_WP_MATCHING` the same walk write-protects the pages it
//! reports, per page under the PTE lock, so get-and-reset is atomic per page:
//! a write racing the walk either lands before the page is reported (and is
//! reported) or faults after it was re-protected (and is reported next time).
//! `max_pages` is set to the caller's remaining capacity, so only returned
//! pages are reset; `walk_end` says where to resume.
//!
//! Kernel writes (`read(2)` into watched memory) resolve the async fault in
//! the kernel's own fault path: they never fail and are reported.
//!
//! Two arming strategies, chosen per region by size:
//! - **dense** (regions up to [`DENSE_LIMIT`]): every page is
//!   write-protected up front with `UFFD_FEATURE_WP_UNPOPULATED`, so even
//!   unpopulated pages carry a marker, and scans use the kernel's fast path
//!   (`category_mask == return_mask == PAGE_IS_WRITTEN`).
//! - **sparse** (larger regions, e.g. a GC's 64 GiB reservation): nothing
//!   is armed up front (that would build page tables for the whole range);
//!   a page is populated unprotected on first touch, so scans ask for
//!   `PAGE_IS_WRITTEN` among `PAGE_IS_PRESENT | PAGE_IS_SWAPPED` pages and
//!   cost grows with touched memory, not reserved size. First touch may be
//!   a *read*: in private anonymous memory that maps the shared zero page,
//!   also without the uffd-wp bit, so sparse scans skip `PAGE_IS_PFNZERO`
//!   pages (a write always replaces the zero page first). In shared memory
//!   (shmem, memfd) a read maps a real page that nothing tells apart from a
//!   written one, so such regions are always dense, whatever their size.
//!
//! Resets use `UFFDIO_WRITEPROTECT` (dense) or a scan with an output
//! buffer (sparse) — never `PAGEMAP_SCAN` with `vec_len = 0`, which
//! crashes kernels before late 2025 when the walk backs out of a partial
//! huge page.

use std::any::Any;
use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::{Backend, BackendKind, Limit, Sink};
use crate::error::{Error, Result};
use crate::page::{PageRange, page_size};
use crate::registry::{Origin, Region};
use crate::sys::pagemap::{EMPTY_REGION, Scan};
use crate::sys::uapi::*;
use crate::sys::uffd::Uffd;
use crate::sys::{getpid, mm};

/// Regions up to this size are armed up front (see the module docs).
pub const DENSE_LIMIT: usize = 1 << 30;

/// Output entries per `PAGEMAP_SCAN` call (12 KiB on the stack, left
/// uninitialised). 512 is the kernel's bounce buffer (one PMD of pages): fewer
/// means more calls on scattered writes (each ~2.5 µs of fixed kernel cost),
/// more would make the kernel return a stale `walk_end` (see
/// [`Scan::run_uninit`]).
const SCAN_BUF: usize = 512;

/// Features we need from `UFFDIO_API`.
const FEATURES: u64 = (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED) as u64;

/// The backend. Its userfaultfd is replaced in a forked child.
pub struct Written {
    uffd: Mutex<Arc<Uffd>>,
}

/// Per-region state.
struct State {
    dense: bool,
}

static INSTANCE: OnceLock<Written> = OnceLock::new();

/// The process-wide instance; `ENOTSUP` if the probe failed.
pub fn instance() -> Result<&'static Written> {
    super::instance_once(&INSTANCE, BackendKind::Written, || {
        // The probe worked, so a failure now is a shortage (EMFILE, ...): say so.
        let uffd = open_uffd().map_err(|(e, _)| e)?;
        Ok(Written {
            uffd: Mutex::new(Arc::new(uffd)),
        })
    })
}

/// A userfaultfd with async write-protect enabled; on failure the errno
/// and a reason for the probe.
fn open_uffd() -> std::result::Result<Uffd, (Error, String)> {
    let uffd = Uffd::open().map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => "out of resources",
            _ => "CONFIG_USERFAULTFD off, or blocked by seccomp/sandbox",
        };
        let reason = format!("userfaultfd(2) failed: {e} ({why})");
        (Error::from(e), reason)
    })?;
    let granted = uffd.api(FEATURES).map_err(|e| {
        (
            Error::NOTSUP,
            format!("UFFDIO_API rejected WP_ASYNC|WP_UNPOPULATED: {e} (needs Linux 6.7+)"),
        )
    })?;
    if granted & FEATURES != FEATURES {
        return Err((
            Error::NOTSUP,
            format!("UFFDIO_API granted features {granted:#x} without WP_ASYNC|WP_UNPOPULATED"),
        ));
    }
    Ok(uffd)
}

impl Written {
    fn uffd(&self) -> Arc<Uffd> {
        self.uffd.lock().clone()
    }

    /// Categories a scan of `r` must never match (see the module docs).
    fn exclude(r: &Region) -> u64 {
        if r.state::<State>().dense {
            0 // keeps the kernel's fast path (WRITTEN only, nothing inverted)
        } else {
            PAGE_IS_PFNZERO as u64
        }
    }

    fn scan_for(r: &Region, range: PageRange, reset: bool) -> Scan {
        let dense = r.state::<State>().dense;
        let mut flags = PM_SCAN_CHECK_WPASYNC;
        if reset {
            flags |= PM_SCAN_WP_MATCHING;
        }
        Scan {
            start: range.start as u64,
            end: range.end as u64,
            flags: flags as u64,
            max_pages: 0,
            category_mask: PAGE_IS_WRITTEN as u64,
            category_anyof_mask: if dense {
                0
            } else {
                (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) as u64
            },
            return_mask: PAGE_IS_WRITTEN as u64,
        }
    }

    /// Write-protects every written page of `range` by scanning with
    /// `PM_SCAN_WP_MATCHING` (output discarded; the buffer is required).
    fn arm_by_scan(r: &Region, range: PageRange) -> Result<()> {
        let mut buf = [const { MaybeUninit::uninit() }; SCAN_BUF];
        let mut scan = Self::scan_for(r, range, true);
        while scan.start < scan.end {
            let before = scan.start;
            scan.run_uninit(&mut buf, Self::exclude(r))?;
            if scan.start <= before {
                return Err(Error::IO);
            }
        }
        Ok(())
    }
}

impl Backend for Written {
    fn kind(&self) -> BackendKind {
        BackendKind::Written
    }

    fn new_state(&self, range: PageRange) -> Box<dyn Any + Send + Sync> {
        Box::new(State {
            dense: range.len() <= DENSE_LIMIT || !private_anonymous(range),
        })
    }

    fn watch(&self, r: &Region, fresh: bool) -> Result<()> {
        let uffd = self.uffd();
        let PageRange { start, end } = r.range;
        uffd.register_wp(start, end - start)?;
        let armed = if r.state::<State>().dense {
            uffd.writeprotect(start, end - start, true)
                .map_err(Error::from)
        } else if fresh {
            Ok(()) // nothing populated yet, so nothing reads as written
        } else {
            Self::arm_by_scan(r, r.range)
        };
        if armed.is_err() {
            let _ = uffd.unregister(start, end - start);
        }
        armed
    }

    fn unwatch(&self, r: &Region) -> Result<()> {
        if matches!(r.origin, Origin::Alloc { .. }) {
            // Only `free` unwatches `ww_alloc` memory, and it unmaps it right
            // after: munmap drops the registration and the uffd-wp bits
            // with the VMA, so clearing them first would only cost two
            // ioctls (and VMA updates) per free.
            return Ok(());
        }
        let uffd = self.uffd();
        let PageRange { start, end } = r.range;
        // Clear the uffd-wp bits first: kernels before 6.9 could leave them
        // behind (CVE-2024-36881), and the memory must stay writable.
        uffd.writeprotect(start, end - start, false)?;
        uffd.unregister(start, end - start)?;
        Ok(())
    }

    fn scan(&self, r: &Region, range: PageRange, reset: bool, sink: &mut Sink<'_>) -> Result<()> {
        let mut buf = [const { MaybeUninit::uninit() }; SCAN_BUF];
        let ps = page_size();
        let mut scan = Self::scan_for(r, range, reset);
        while scan.start < scan.end {
            // No longer than what can come back: the kernel allocates its
            // bounce buffer by `vec_len`, and small regions are common.
            let most = ((scan.end - scan.start) as usize / ps).div_ceil(2);
            let vec_len = match sink.remaining() {
                Limit::Pages(0) | Limit::Runs(0) => break,
                // max_pages = 0 would mean "unlimited": never pass it.
                Limit::Pages(n) => {
                    scan.max_pages = n as u64;
                    n
                }
                Limit::Runs(n) => n,
            }
            .min(SCAN_BUF)
            .min(most)
            .max(1);
            let before = scan.start;
            let runs = scan.run_uninit(&mut buf[..vec_len], Self::exclude(r))?;
            for reg in runs {
                let (s, e) = (reg.start as usize, reg.end as usize);
                let done = sink.push(s, e);
                if done < e && reset {
                    // Cannot happen with the limits above; if it ever did,
                    // un-protect what we could not report so it reads as
                    // written again instead of being lost.
                    self.uffd().writeprotect(done, e - done, false)?;
                }
            }
            if scan.start <= before && runs.is_empty() {
                return Err(Error::IO); // the walk made no progress
            }
        }
        Ok(())
    }

    fn reset(&self, r: &Region, range: PageRange) -> Result<()> {
        if r.state::<State>().dense {
            Ok(self.uffd().writeprotect(range.start, range.len(), true)?)
        } else {
            Self::arm_by_scan(r, range)
        }
    }

    fn protect(&self, _r: &Region, range: PageRange, prot: i32) -> Result<()> {
        // uffd-wp bits live in the PTEs and survive mprotect(2); a write
        // fault on a re-enabled page is still resolved asynchronously.
        // SAFETY: the API layer checked that `range` is watched memory.
        Ok(unsafe { mm::protect(range.start, range.len(), prot) }?)
    }

    fn prepare_kernel_write(&self, _r: &Region, range: PageRange) -> Result<()> {
        // Kernel writes resolve async WP faults by themselves; marking the
        // pages written up front mirrors Windows (the whole buffer reads as
        // written once the I/O is queued). Un-protecting makes present pages
        // read as written; populating for write covers unpopulated ones
        // without touching contents (so no racing store can be lost).
        self.uffd().writeprotect(range.start, range.len(), false)?;
        let _ = mm::advise(range.start, range.len(), libc::MADV_POPULATE_WRITE);
        Ok(())
    }

    fn after_fork(&self, regions: &[Arc<Region>]) -> Result<()> {
        // The inherited userfaultfd belongs to the parent's address space,
        // and our VMAs lost their registration in the child (no
        // UFFD_FEATURE_EVENT_FORK). Register them with a fresh one, unarmed:
        // every page then reads as written until the child's first reset.
        let uffd = open_uffd().map_err(|(e, _)| e)?;
        for r in regions {
            uffd.register_wp(r.range.start, r.range.len())?;
        }
        *self.uffd.lock() = Arc::new(uffd);
        Ok(())
    }
}

/// True if all of `range` is private anonymous memory, where sparse
/// tracking is exact (see the module docs). Asked only for regions over
/// [`DENSE_LIMIT`]; if `/proc/self/maps` cannot be read, dense is the safe
/// answer.
fn private_anonymous(range: PageRange) -> bool {
    match mm::mappings_in(range.start, range.end) {
        Ok(maps) => !maps.is_empty() && maps.iter().all(|m| m.inode == 0 && m.perms[3] == b'p'),
        Err(_) => false,
    }
}

/// Tries the whole mechanism on a scratch mapping: register, arm, scan,
/// write, scan-and-reset, scan.
pub fn probe() -> std::result::Result<(), String> {
    let uffd = open_uffd().map_err(|(_, why)| why)?;
    let ps = page_size();
    let len = 4 * ps;
    let base = mm::reserve(len).map_err(|e| format!("mmap failed: {e}"))?;
    let result = (|| {
        // SAFETY: `base` is our own fresh reservation.
        unsafe { mm::protect(base, len, libc::PROT_READ | libc::PROT_WRITE) }
            .map_err(|e| format!("mprotect failed: {e}"))?;
        uffd.register_wp(base, len)
            .map_err(|e| format!("UFFDIO_REGISTER(MODE_WP) failed: {e}"))?;
        uffd.writeprotect(base, len, true)
            .map_err(|e| format!("UFFDIO_WRITEPROTECT failed: {e}"))?;
        let written = |reset: bool| -> std::result::Result<Vec<usize>, String> {
            let mut buf = [EMPTY_REGION; 4];
            let mut scan = Scan {
                start: base as u64,
                end: (base + len) as u64,
                flags: (PM_SCAN_CHECK_WPASYNC | if reset { PM_SCAN_WP_MATCHING } else { 0 }) as u64,
                max_pages: 0,
                category_mask: PAGE_IS_WRITTEN as u64,
                category_anyof_mask: 0,
                return_mask: PAGE_IS_WRITTEN as u64,
            };
            let n = scan.run(&mut buf).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                    format!("PAGEMAP_SCAN ioctl unsupported: {e} (needs Linux 6.7+)")
                }
                Some(libc::EACCES) => format!(
                    "cannot open /proc/self/pagemap: {e} (a non-dumpable process, e.g. one \
                     that changed uid, cannot open its own /proc files)"
                ),
                _ => format!("PAGEMAP_SCAN failed: {e}"),
            })?;
            Ok(buf[..n]
                .iter()
                .flat_map(|r| (r.start as usize..r.end as usize).step_by(ps))
                .map(|a| (a - base) / ps)
                .collect())
        };
        let fresh = written(false)?;
        if !fresh.is_empty() {
            return Err(format!("armed scratch pages read as written: {fresh:?}"));
        }
        // SAFETY: page 2 of our scratch mapping is read-write.
        unsafe { std::ptr::write_volatile((base + 2 * ps) as *mut u8, 1) };
        let got = written(true)?;
        let after = written(false)?;
        if got != [2] || !after.is_empty() {
            return Err(format!(
                "scratch write to page 2 read back as {got:?}, then {after:?}"
            ));
        }
        uffd.unregister(base, len)
            .map_err(|e| format!("UFFDIO_UNREGISTER failed: {e}"))
    })();
    // SAFETY: the scratch mapping is ours and nothing references it.
    let _ = unsafe { mm::unmap(base, len) };
    if result.is_ok() && uffd.owner() != getpid() {
        return Err("forked during probe".into());
    }
    result
}
