//! `/proc/self/pagemap`: 64-bit entry reads and the `PAGEMAP_SCAN` ioctl.
//!
//! One descriptor per process, opened on first use. A descriptor inherited
//! through `fork` still describes the *parent's* address space, so every
//! use checks the pid and re-opens in the child; `dup3` puts the new file on
//! the old number so a concurrent user of the number never sees a closed fd.
//!
//! `PAGEMAP_SCAN` (Linux 6.7+, PAGEMAP_SCAN(2const)) walks a range and
//! returns runs of pages whose categories match, optionally
//! write-protecting (async uffd-wp) exactly the pages it returns
//! (`PM_SCAN_WP_MATCHING`), atomically per page under the PTE lock. The walk
//! stops early when the output vector fills or `max_pages` is reached and
//! says where in `walk_end`, so callers loop.
//!
//! [`clear_soft_dirty`] writes `4` to `/proc/self/clear_refs`
//! (`Documentation/admin-guide/mm/soft-dirty.rst`): it clears the soft-dirty
//! bit of every page of the *whole process* and write-protects them, so the
//! next write to each page faults and sets the bit again.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use parking_lot::Mutex;

use super::uapi::*;
use super::{cvt, getpid};

static FD: AtomicI32 = AtomicI32::new(-1);
static OWNER: AtomicI32 = AtomicI32::new(0);
static REOPEN: Mutex<()> = Mutex::new(());

/// The pagemap descriptor of the calling process.
fn fd() -> io::Result<RawFd> {
    let pid = getpid();
    if OWNER.load(Ordering::Acquire) == pid {
        return Ok(FD.load(Ordering::Acquire));
    }
    let _guard = REOPEN.lock();
    if OWNER.load(Ordering::Acquire) == pid {
        return Ok(FD.load(Ordering::Acquire));
    }
    let path = c"/proc/self/pagemap";
    // SAFETY: `path` is a NUL-terminated string; open returns a new fd or -1.
    let new = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }.into())?
        as RawFd;
    let old = FD.load(Ordering::Acquire);
    let fd = if old >= 0 {
        // Replace the inherited (parent's) file on the same number.
        // SAFETY: both descriptors are open; dup3 atomically replaces `old`.
        let r = cvt(unsafe { libc::dup3(new, old, libc::O_CLOEXEC) }.into());
        // SAFETY: `new` is ours and no longer needed (its file lives on as `old`).
        unsafe { libc::close(new) };
        r?;
        old
    } else {
        new
    };
    FD.store(fd, Ordering::Release);
    OWNER.store(pid, Ordering::Release);
    Ok(fd)
}

/// Reads the pagemap entries of the pages starting at `addr` into `out`
/// (one `u64` per page). Bits: see [`PM_SOFT_DIRTY`] and friends.
pub fn read_entries(addr: usize, page_size: usize, out: &mut [u64]) -> io::Result<()> {
    let fd = fd()?;
    let mut done = 0;
    while done < out.len() {
        let rest = &mut out[done..];
        let offset = ((addr / page_size + done) * 8) as libc::off_t;
        // SAFETY: `rest` is a writable buffer of `rest.len() * 8` bytes.
        let n = unsafe { libc::pread(fd, rest.as_mut_ptr().cast(), rest.len() * 8, offset) };
        let n = cvt(n as libc::c_long)? as usize;
        if n == 0 || n % 8 != 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        done += n / 8;
    }
    Ok(())
}

/// One `PAGEMAP_SCAN` request. Field names follow `struct pm_scan_arg`;
/// `run` fills the caller's output buffer and advances `start` to the
/// kernel's `walk_end`.
#[derive(Clone, Copy, Debug)]
pub struct Scan {
    /// Where the next walk starts (page aligned).
    pub start: u64,
    /// End of the walk (exclusive).
    pub end: u64,
    /// `PM_SCAN_WP_MATCHING`, `PM_SCAN_CHECK_WPASYNC`.
    pub flags: u64,
    /// Stop after this many pages; 0 means unlimited (so never pass 0 for
    /// "caller wants 0 pages").
    pub max_pages: u64,
    /// Categories that must be set (`category_mask`).
    pub category_mask: u64,
    /// At least one of these must be set (`category_anyof_mask`).
    pub category_anyof_mask: u64,
    /// Categories reported in the output (`return_mask`).
    pub return_mask: u64,
}

impl Scan {
    /// Runs one ioctl. Returns how many entries of `buf` were filled; on
    /// return `self.start` is the kernel's `walk_end`. `buf` must not be
    /// empty (a zero-length vector crashes kernels before late 2025 when
    /// the walk backs out of a partial huge page).
    pub fn run(&mut self, buf: &mut [page_region]) -> io::Result<usize> {
        self.run_excluding(buf, 0)
    }

    /// Like [`run`](Self::run), but pages in any of the categories
    /// `exclude` never match (they are neither returned nor, with
    /// `PM_SCAN_WP_MATCHING`, write-protected): the kernel's
    /// `category_inverted` with the same bits required in `category_mask`.
    /// E.g. `PAGE_IS_PFNZERO`: a page mapped to the shared zero page by a
    /// read fault has never been written, whatever its uffd-wp bit says.
    pub fn run_excluding(&mut self, buf: &mut [page_region], exclude: u64) -> io::Result<usize> {
        // SAFETY: `MaybeUninit<T>` has the layout of `T`, and the kernel
        // only ever stores whole, valid `page_region`s into the buffer.
        let uninit =
            unsafe { &mut *(buf as *mut [page_region] as *mut [MaybeUninit<page_region>]) };
        self.run_uninit(uninit, exclude).map(|filled| filled.len())
    }

    /// [`run_excluding`](Self::run_excluding) into a buffer that need not be
    /// initialised (so callers can keep a large one on the stack without
    /// clearing it on every call); returns the entries the kernel filled.
    ///
    /// Keep `buf` at most 512 entries (one PMD's worth, the kernel's bounce
    /// buffer): with a longer vector, a call whose walk fills the bounce
    /// buffer, flushes it, and then reaches `end` returns the `walk_end` of
    /// the first flush (seen on 6.18), and resuming there reports pages twice.
    pub fn run_uninit<'a>(
        &mut self,
        buf: &'a mut [MaybeUninit<page_region>],
        exclude: u64,
    ) -> io::Result<&'a [page_region]> {
        assert!(!buf.is_empty(), "PAGEMAP_SCAN needs an output buffer");
        let mut arg = pm_scan_arg {
            size: size_of::<pm_scan_arg>() as u64,
            flags: self.flags,
            start: self.start,
            end: self.end,
            walk_end: 0,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            max_pages: self.max_pages,
            category_inverted: exclude,
            category_mask: self.category_mask | exclude,
            category_anyof_mask: self.category_anyof_mask,
            return_mask: self.return_mask,
        };
        let fd = fd()?;
        // SAFETY: `arg` is a fully initialised pm_scan_arg whose `vec` points
        // at `buf`, writable for `vec_len` entries, both live for the call.
        let n = unsafe { libc::ioctl(fd, PAGEMAP_SCAN as _, &raw mut arg) };
        let n = (cvt(n as libc::c_long)? as usize).min(buf.len());
        self.start = arg.walk_end;
        // SAFETY: the kernel wrote `n` entries to the front of `buf`
        // (PAGEMAP_SCAN returns the number of `page_region`s it stored).
        Ok(unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<page_region>(), n) })
    }
}

/// A zeroed output entry (for initialising scan buffers).
pub const EMPTY_REGION: page_region = page_region {
    start: 0,
    end: 0,
    categories: 0,
};

/// `echo 4 > /proc/self/clear_refs`: clears the soft-dirty bit (pagemap bit
/// 55) and `VM_SOFTDIRTY` everywhere in this process. Opened per call, so
/// it always acts on the calling process, also after `fork`. Allocates
/// nothing (safe to call while other threads are held in a fault handler).
/// On kernels without `CONFIG_MEM_SOFT_DIRTY` this succeeds and does nothing.
pub fn clear_soft_dirty() -> io::Result<()> {
    let path = c"/proc/self/clear_refs";
    // SAFETY: `path` is NUL-terminated; open returns a new fd or -1.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) }.into())?
        as RawFd;
    // SAFETY: writes one byte from a static buffer to the fd we just opened.
    let written = cvt(unsafe { libc::write(fd, b"4".as_ptr().cast(), 1) } as libc::c_long);
    // SAFETY: `fd` is ours and not used after this.
    unsafe { libc::close(fd) };
    match written? {
        1 => Ok(()),
        _ => Err(io::Error::from_raw_os_error(libc::EIO)),
    }
}
