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
//! - here: the calling thread's signal mask ([`block_signals`]),
//!   `sched_yield`, `futex` and `errno`, which the soft-dirty backend and
//!   the signal handler need.

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

/// The calling thread's previous signal mask; dropping this restores it.
/// Made by [`block_signals`].
pub struct SignalsBlocked {
    old: libc::sigset_t,
}

/// Blocks every signal on the calling thread (pthread_sigmask(3)) until the
/// returned value is dropped. Synchronous faults (SIGSEGV, SIGBUS) cannot
/// really be blocked: one raised while blocked kills the process, so code
/// that runs blocked must not touch memory that may fault.
pub fn block_signals() -> SignalsBlocked {
    let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises the set it is given.
    unsafe { libc::sigfillset(all.as_mut_ptr()) };
    // SAFETY: `all` is initialised and `old` is writable; pthread_sigmask
    // only fails for an invalid `how`, and SIG_BLOCK is valid.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, all.as_ptr(), old.as_mut_ptr()) };
    // SAFETY: pthread_sigmask filled `old` (it cannot fail here, see above).
    let old = unsafe { old.assume_init() };
    SignalsBlocked { old }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: `old` is the mask pthread_sigmask returned on this thread.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// `futex(FUTEX_WAIT_PRIVATE)`: sleeps while `word` holds `expected`, at
/// most `timeout_ns` nanoseconds (and may return early, spuriously).
/// Async-signal-safe (a raw syscall).
pub fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32, timeout_ns: i64) {
    let ts = libc::timespec {
        tv_sec: timeout_ns / 1_000_000_000,
        tv_nsec: timeout_ns % 1_000_000_000,
    };
    // SAFETY: `word` is a live, aligned 32-bit atomic and `ts` a valid
    // relative timeout; FUTEX_WAIT only reads the word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

/// `futex(FUTEX_WAKE_PRIVATE)` of every thread waiting on `word`.
pub fn futex_wake_all(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE does not
    // access memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}

/// `sched_yield(2)`. Async-signal-safe.
pub fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// The calling thread's `errno`. Async-signal-safe.
pub fn errno() -> i32 {
    // SAFETY: __errno_location returns the calling thread's errno slot,
    // valid for the thread's lifetime.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`. Async-signal-safe.
pub fn set_errno(value: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value };
}
