//! The kernel interface: every `ioctl`, `syscall`, `mmap`-family call and
//! `/proc` access of the crate goes through this module (the signal
//! handler is the one other place that calls `mprotect`).
//!
//! - [`uapi`]: kernel structs and constants (from `linux-raw-sys`), plus the
//!   one ioctl number it lacks, pinned by tests.
//! - [`uffd`]: an owned userfaultfd and its ioctls.
//! - [`pagemap`]: `/proc/self/pagemap` (entry reads and `PAGEMAP_SCAN`),
//!   re-opened after `fork`.
//! - [`mm`]: `mmap`, `munmap`, `mprotect`, `madvise`, `/proc/self/maps`.

pub mod mm;
pub mod pagemap;
pub mod uapi;
pub mod uffd;

use std::io;

/// Converts a `-1`-on-error libc return value into `io::Result`.
pub(crate) fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The calling process's id (not cached: it must change after `fork`).
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}
