//! The fork scenario of `tests/fork.rs` with a child made by the raw
//! `clone` system call, as sandboxes and some runtimes do: glibc's fork
//! handlers (`pthread_atfork`) do not run, so the library must notice the
//! new process by itself. One test per file, as for `tests/fork.rs`.

mod common;

use common::*;

#[test]
fn raw_clone_child_tracks_writes_and_parent_is_unaffected() {
    require_backend!();
    fork_scenario(|| {
        // SAFETY: clone(SIGCHLD) with no new stack is fork without glibc:
        // the child runs on a copy of this stack and only calls the
        // library and _exit.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::SIGCHLD as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        pid as libc::pid_t
    });
}
