//! An owned userfaultfd used only for asynchronous write-protection
//! (`UFFD_FEATURE_WP_ASYNC`): the kernel resolves write faults itself by
//! clearing the page's uffd-wp bit, so nobody ever reads events from it.
//!
//! References: userfaultfd(2), ioctl_userfaultfd(2),
//! `Documentation/admin-guide/mm/userfaultfd.rst`.
//!
//! A userfaultfd is bound to the address space that created it: after
//! `fork` the child must not use an inherited one (its ioctls would act on
//! the parent's mappings). Callers check [`Uffd::owner`].

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::uapi::*;
use super::{cvt, getpid};

/// A userfaultfd. Dropping it closes the descriptor.
pub struct Uffd {
    fd: OwnedFd,
    owner: libc::pid_t,
}

impl Uffd {
    /// `userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)`.
    /// User-mode-only works unprivileged even with
    /// `vm.unprivileged_userfaultfd = 0`; we never need kernel-mode faults
    /// because async WP resolves kernel-side writes too.
    pub fn open() -> io::Result<Uffd> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY as libc::c_int;
        // SAFETY: the userfaultfd syscall takes one int and returns a new fd or -1.
        let fd = cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, flags) })?;
        // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        Ok(Uffd {
            fd,
            owner: getpid(),
        })
    }

    /// The process that created this userfaultfd.
    pub fn owner(&self) -> libc::pid_t {
        self.owner
    }

    /// `UFFDIO_API` handshake requesting `features`; returns what the
    /// kernel granted. Fails with EINVAL if a requested feature is unknown.
    pub fn api(&self, features: u64) -> io::Result<u64> {
        let mut arg = uffdio_api {
            api: UFFD_API as u64,
            features,
            ioctls: 0,
        };
        // SAFETY: `arg` is a live uffdio_api, which is what UFFDIO_API reads and writes.
        unsafe { self.ioctl(UFFDIO_API, (&raw mut arg).cast()) }?;
        Ok(arg.features)
    }

    /// `UFFDIO_REGISTER` with `UFFDIO_REGISTER_MODE_WP` over `[start, start+len)`.
    pub fn register_wp(&self, start: usize, len: usize) -> io::Result<()> {
        let mut arg = uffdio_register {
            range: uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_WP as u64,
            ioctls: 0,
        };
        // SAFETY: `arg` is a live uffdio_register, which UFFDIO_REGISTER reads and writes.
        unsafe { self.ioctl(UFFDIO_REGISTER, (&raw mut arg).cast()) }
    }

    /// `UFFDIO_UNREGISTER` over `[start, start+len)`.
    pub fn unregister(&self, start: usize, len: usize) -> io::Result<()> {
        let mut arg = uffdio_range {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: `arg` is a live uffdio_range, which UFFDIO_UNREGISTER reads.
        unsafe { self.ioctl(UFFDIO_UNREGISTER, (&raw mut arg).cast()) }
    }

    /// `UFFDIO_WRITEPROTECT`: arm (`protect`) or disarm the range. Armed
    /// pages read as not written; disarmed ones as written.
    pub fn writeprotect(&self, start: usize, len: usize, protect: bool) -> io::Result<()> {
        let mode = if protect {
            UFFDIO_WRITEPROTECT_MODE_WP
        } else {
            // Nobody waits on an async-WP fault, so there is nobody to wake.
            UFFDIO_WRITEPROTECT_MODE_DONTWAKE
        };
        let mut arg = uffdio_writeprotect {
            range: uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: mode as u64,
        };
        // SAFETY: `arg` is a live uffdio_writeprotect, which UFFDIO_WRITEPROTECT reads.
        unsafe { self.ioctl(UFFDIO_WRITEPROTECT, (&raw mut arg).cast()) }
    }

    /// # Safety
    /// `arg` must point to the live struct type that `request` expects.
    unsafe fn ioctl(&self, request: u32, arg: *mut libc::c_void) -> io::Result<()> {
        // SAFETY: the fd is open; the caller guarantees `arg` matches `request`.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, arg) };
        cvt(ret as libc::c_long).map(drop)
    }
}
