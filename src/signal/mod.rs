//! SIGSEGV handling for the backends that catch writes by write-protecting
//! pages (mprotect; the soft-dirty backend uses the same handler).
//!
//! - [`handler`]: everything that runs in signal context (READ ITS HEADER
//!   BEFORE CHANGING IT): the handler, forwarding to the previous action,
//!   the lock-free region snapshot, the per-region spin flag, and the
//!   mprotect backend's fault resolution.
//! - [`install`](install()): installs the handler once, lazily, when a
//!   backend that needs it is first used. It is never uninstalled: the
//!   shared library is linked `-z nodelete`, so `dlclose` cannot unmap it.
//!
//! Hosts that own SIGSEGV and install their handler after ours call
//! `ww_handle_fault(si_addr)` first ([`handle_fault`]).

pub(crate) mod handler;
mod install;

pub use install::install;

use crate::backend::BackendKind;

/// Records which backend's `on_fault` the handler calls (set when the
/// backend is committed, before any region exists).
pub(crate) fn set_active_kind(kind: BackendKind) {
    handler::set_active_kind(kind);
}

/// `ww_handle_fault`: true if the fault at `addr` was a write-watch fault
/// and is resolved. Async-signal-safe, never panics.
pub(crate) fn handle_fault(addr: usize) -> bool {
    handler::handle_fault_from_host(addr)
}
