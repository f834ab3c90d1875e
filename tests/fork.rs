//! After fork(), the child misses no write made after the fork (its first
//! get may report extra pages) and the parent is unaffected. One test per
//! file: fork from a process whose other threads could hold library locks
//! is outside the contract.

mod common;

use common::*;

#[test]
fn child_tracks_writes_and_parent_is_unaffected() {
    require_backend!();
    let base = writewatch::alloc(16 * ps()).unwrap();
    poke(base + ps(), 1);
    assert_eq!(written(base, 16 * ps(), true), [1]);
    // SAFETY: the child only calls the library and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        poke(base + 3 * ps(), 1);
        let first = written(base, 16 * ps(), true);
        poke(base + 7 * ps(), 2);
        let second = written(base, 16 * ps(), true);
        let ok =
            first.contains(&3) && second.contains(&7) && written(base, 16 * ps(), false).is_empty();
        if !ok {
            eprintln!("child: first {first:?} second {second:?}");
        }
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    poke(base + 5 * ps(), 1);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed: {status:#x}"
    );
    assert_eq!(
        written(base, 16 * ps(), true),
        [5],
        "parent: exactly its own write"
    );
    // SAFETY: no references into the region remain.
    unsafe { writewatch::free(base) }.unwrap();
}
