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

/// Whether a backend probe has room to run now: three free descriptors
/// (a probe opens a userfaultfd and `/proc/self` files) and 64 KiB of
/// address space (its scratch mapping). `EMFILE`/`ENFILE`/`ENOMEM` if not.
/// Nothing is kept: the descriptors and the mapping are released at once.
pub fn probe_room() -> io::Result<()> {
    let mut fds = [-1; 3];
    let mut result = Ok(());
    for slot in &mut fds {
        // SAFETY: eventfd takes no pointers and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            result = Err(io::Error::last_os_error());
            break;
        }
        *slot = fd;
    }
    for fd in fds.into_iter().filter(|&fd| fd >= 0) {
        // SAFETY: a descriptor we just opened and nobody else knows.
        unsafe { libc::close(fd) };
    }
    result?;
    let len = 16 * crate::page::page_size();
    let map = mm::reserve(len)?;
    // SAFETY: our own fresh reservation, referenced by nothing.
    unsafe { mm::unmap(map, len) }
}
