//! Regression tests for bugs found by the model-based tests
//! (`tests/model.rs`) and the resource-exhaustion tests: each one pins the
//! smallest sequence that showed the bug, on every backend.

mod common;

use common::*;

/// Region sizes past the written backend's dense limit (1 GiB), where it
/// tracks sparsely; ordinary big regions for the other backends.
fn big_pages() -> usize {
    (1usize << 30) / ps() + 16
}

/// Reads a few pages, writes one, and checks only the write is reported,
/// before and after a reset.
fn reads_are_not_writes(base: usize, pages: usize, what: &str) {
    let far = pages - 3;
    for p in [0, 5, far] {
        let _ = peek(base + p * ps());
    }
    poke(base + 7 * ps(), 1);
    assert_eq!(written(base, pages * ps(), true), [7], "{what}: first get");
    for p in [5, 9, far + 1] {
        let _ = peek(base + p * ps());
    }
    assert_eq!(
        written(base, pages * ps(), false),
        Vec::<usize>::new(),
        "{what}: reads after a reset"
    );
    poke(base + 9 * ps(), 1);
    assert_eq!(
        written(base, pages * ps(), true),
        [9],
        "{what}: then a write"
    );
}

/// Found by the model (seed 0x5757003a): in a sparse region a read of an
/// untouched page mapped the zero page without the uffd-wp bit, and the
/// page was reported as written.
#[test]
fn reads_are_not_writes_in_allocations() {
    require_backend!();
    for pages in [16, big_pages()] {
        let base = writewatch::alloc(pages * ps()).unwrap();
        reads_are_not_writes(base, pages, &format!("ww_alloc of {pages} pages"));
        // SAFETY: nothing references the region.
        unsafe { writewatch::free(base) }.unwrap();
    }
}

/// The same for watched memory; shared memory was reported on a read
/// even once the zero page was accounted for (a read maps a real page).
#[test]
fn reads_are_not_writes_in_watched_memory() {
    require_backend!();
    let noreserve = libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    for (pages, flags, what) in [
        (16, libc::MAP_PRIVATE | noreserve, "private"),
        (16, libc::MAP_SHARED | noreserve, "shared"),
        (big_pages(), libc::MAP_PRIVATE | noreserve, "big private"),
        (big_pages(), libc::MAP_SHARED | noreserve, "big shared"),
    ] {
        let m = Mmap::new(pages * ps(), flags);
        // SAFETY: `m` outlives the watch.
        unsafe { writewatch::watch(m.base, pages * ps()) }.unwrap();
        reads_are_not_writes(m.base, pages, what);
        writewatch::unwatch(m.base).unwrap();
    }
}
