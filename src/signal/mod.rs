//! SIGSEGV handling — INTERIM stand-in for the soft-dirty branch.
//!
//! The mprotect backend's branch owns the real module (lock-free region
//! lookup, V8-style "handler inside" file, forwarding rules, tests). Until
//! it is merged, this minimal version provides the same interface, which
//! is all the soft-dirty backend uses:
//!
//! - [`install`]: idempotent; installs the handler once per process.
//! - the handler: for a kernel-generated write fault (`SEGV_ACCERR`) at an
//!   address inside a watched region it calls
//!   `crate::backend::soft_dirty::on_fault(region, addr)`; `true`
//!   means resolved (return, the write is retried). Anything else goes to
//!   the previous handler.
//!
//! Flags: `SA_SIGINFO` (we need `si_code` and `si_addr`), `SA_ONSTACK`
//! (run on the thread's alternate stack if it has one: a fault on a
//! nearly full stack must still be handled), `SA_NODEFER` (a fault inside a
//! host handler that itself runs because of a SIGSEGV must reach us too).
//! `sa_mask` is full: nothing may interrupt the handler, so a host handler
//! for another signal cannot run on top of it.
//!
//! Forwarding: a previous `SA_SIGINFO` handler is called with all three
//! arguments, a plain one with the signal number; for `SIG_DFL`/`SIG_IGN`
//! the previous action is restored and, for a fault, the handler returns so
//! the faulting instruction runs again and the default action kills the
//! process (a sent signal is raised again instead).
//!
//! Limits of this stand-in: the region lookup goes through
//! `registry::with_region_at` (try-lock, no allocation, but not formally
//! async-signal-safe); the handler is never uninstalled.

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// The action that was installed before ours (read by the handler).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);
static LOCK: Mutex<()> = Mutex::new(());

/// Installs the SIGSEGV handler, once per process (later calls return
/// `Ok` at once).
pub fn install() -> Result<()> {
    if INSTALLED.load(Ordering::Acquire) {
        return Ok(());
    }
    let _g = LOCK.lock();
    if INSTALLED.load(Ordering::Acquire) {
        return Ok(());
    }
    // SAFETY: sigaction is a plain C struct; all-zero is a valid value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: queries the current action into `old` (no change).
    if unsafe { libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut old) } != 0 {
        return Err(Error::last_os_error());
    }
    // Published before ours is installed, so the handler can always forward.
    let _ = PREVIOUS.set(old);
    // SAFETY: as above.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
    // SAFETY: `sa.sa_mask` is a valid sigset_t to fill.
    unsafe { libc::sigfillset(&mut sa.sa_mask) };
    // SAFETY: `sa` is fully initialised and `handler` has the SA_SIGINFO
    // signature.
    if unsafe { libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()) } != 0 {
        return Err(Error::last_os_error());
    }
    INSTALLED.store(true, Ordering::Release);
    Ok(())
}

/// The SIGSEGV handler. Async-signal-safe: no allocation, no blocking lock,
/// no panic; `errno` is preserved.
extern "C" fn handler(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    let saved_errno = crate::sys::errno();
    if !ours(info) {
        forward(sig, info, ctx);
    }
    crate::sys::set_errno(saved_errno);
}

/// True if this is a write-watch fault and it was resolved.
fn ours(info: *mut libc::siginfo_t) -> bool {
    if info.is_null() {
        return false;
    }
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    // Only faults the kernel raised for a protection violation; a SIGSEGV
    // sent with kill/tgkill has si_code <= 0.
    if code != crate::sys::uapi::SEGV_ACCERR as c_int {
        return false;
    }
    // SAFETY: as above; si_addr is valid for SIGSEGV.
    let addr = unsafe { (*info).si_addr() } as usize;
    crate::registry::with_region_at(addr, |r| crate::backend::soft_dirty::on_fault(r, addr))
        .unwrap_or(false)
}

/// Hands a fault that is not ours to the previous action.
fn forward(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    let Some(prev) = PREVIOUS.get() else { return };
    let h = prev.sa_sigaction;
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        // SAFETY: restores the action that was installed before ours.
        unsafe { libc::sigaction(sig, prev, std::ptr::null_mut()) };
        // SAFETY: as in `ours`.
        let sent = info.is_null() || unsafe { (*info).si_code } <= 0;
        if sent {
            // SAFETY: raise is async-signal-safe; the default action runs.
            unsafe { libc::raise(sig) };
        }
        // A fault: returning re-executes the instruction under the
        // restored default action.
        return;
    }
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: with SA_SIGINFO the stored value is a three-argument
        // handler installed by someone else, which expects these arguments.
        let f = unsafe {
            std::mem::transmute::<usize, extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void)>(h)
        };
        f(sig, info, ctx);
    } else {
        // SAFETY: without SA_SIGINFO the stored value is a one-argument handler.
        let f = unsafe { std::mem::transmute::<usize, extern "C" fn(c_int)>(h) };
        f(sig);
    }
}
