//! Installs our SIGSEGV handler, once, and records the action it replaced
//! so that faults which are not ours can be handed on (sigaction(2)).
//! Normal context only.

use parking_lot::Mutex;

use super::handler;
use crate::error::{Error, Result};

/// True once our handler is installed in this process (a forked child
/// inherits both the handler and this flag).
static INSTALLED: Mutex<bool> = Mutex::new(false);

/// Installs our SIGSEGV handler if it is not installed yet. Idempotent
/// and thread-safe; used by every backend that write-protects pages.
///
/// Flags, one by one:
/// - `SA_SIGINFO`: we need `si_code` (kernel-generated `SEGV_ACCERR`),
///   `si_addr` and the context (the write bit of the fault).
/// - `SA_ONSTACK`: run on the thread's alternate stack when it has one. A
///   fault that is not ours may be a stack overflow (Rust's runtime and
///   many hosts detect those in their SIGSEGV handler); with the normal
///   stack exhausted, our handler could not even run to forward it.
/// - `sa_mask` full: while the handler runs, no other signal can
///   interrupt it. It holds a region's spin flag, and a host handler that
///   wrote to watched memory on the same thread would otherwise spin on
///   that flag forever. (Forwarding sets the mask the previous handler
///   asked for before calling it.)
/// - no `SA_NODEFER`: SIGSEGV stays blocked (it is in the full mask
///   anyway), so a fault inside our own handler, which would be a bug,
///   kills the process with the default action instead of recursing.
/// - no `SA_RESTART`: irrelevant for a synchronous fault.
/// - no `SA_RESETHAND`: we stay installed; the handler itself restores
///   the previous SIG_DFL/SIG_IGN action only when a fault that is not
///   ours is about to kill the process.
pub fn install() -> Result<()> {
    let mut installed = INSTALLED.lock();
    if *installed {
        return Ok(());
    }
    let ours = handler::on_sigsegv as extern "C" fn(_, _, _) as usize;
    let current = query()?;
    if current.sa_sigaction == ours {
        *installed = true; // a forked child of an unusual parent; nothing to do
        return Ok(());
    }
    // Publish the previous action before ours can run.
    handler::set_previous(Box::leak(Box::new(current)));

    // SAFETY: all-zero is a valid sigaction (SIG_DFL, no flags, empty mask).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = ours;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: `act.sa_mask` is a valid sigset_t we own.
    unsafe { libc::sigfillset(&mut act.sa_mask) };
    // SAFETY: as above.
    let mut replaced: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid; SIGSEGV may be caught.
    if unsafe { libc::sigaction(libc::SIGSEGV, &act, &mut replaced) } != 0 {
        return Err(Error::last_os_error());
    }
    if replaced.sa_sigaction != current.sa_sigaction || replaced.sa_flags != current.sa_flags {
        // Another thread installed a handler between our query and ours.
        handler::set_previous(Box::leak(Box::new(replaced)));
    }
    *installed = true;
    Ok(())
}

fn query() -> Result<libc::sigaction> {
    // SAFETY: all-zero is a valid sigaction.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads the current one into `current`.
    if unsafe { libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut current) } != 0 {
        return Err(Error::last_os_error());
    }
    Ok(current)
}
