//! The C contract's semantics through the Rust raw-address API (the C
//! tests in ffi/ check the same through the ABI). Numbers in comments refer
//! to shared/WIN32-SEMANTICS.md.

mod common;

use common::*;
use writewatch::{Error, WatchedAlloc, WrittenRange};

fn alloc(pages: usize) -> usize {
    writewatch::alloc(pages * ps()).expect("alloc")
}

fn free(base: usize) {
    // SAFETY: the tests hold no reference into the region.
    unsafe { writewatch::free(base) }.expect("free");
}

#[test]
fn fresh_region_reports_nothing() {
    require_backend!();
    let base = alloc(64);
    assert_eq!(written(base, 64 * ps(), false), Vec::<usize>::new()); // 5
    free(base);
}

#[test]
fn reports_written_pages_ascending_with_granularity() {
    require_backend!();
    let base = alloc(16);
    poke(base + ps() + 1, 1); // 6
    assert_eq!(written(base, 16 * ps(), false), [1]);
    poke(base + 4 * ps(), 1);
    poke(base + 2 * ps(), 1);
    assert_eq!(written(base, 16 * ps(), false), [1, 2, 4]); // 7
    assert_eq!(
        written(base, 16 * ps(), false),
        [1, 2, 4],
        "no reset: unchanged"
    ); // 10
    assert_eq!(written(base, 16 * ps(), true), [1, 2, 4]);
    assert_eq!(written(base, 16 * ps(), false), Vec::<usize>::new()); // 11
    free(base);
}

#[test]
fn straddling_write_marks_both_pages() {
    require_backend!();
    let base = alloc(8);
    // SAFETY: a 4-byte write inside our region, across pages 1 and 2.
    unsafe { std::ptr::write_unaligned((base + 2 * ps() - 2) as *mut u32, 0xdead_beef) };
    assert_eq!(written(base, 8 * ps(), false), [1, 2]); // 8
    free(base);
}

#[test]
fn capacity_with_reset_resets_only_the_returned_prefix() {
    require_backend!();
    let base = alloc(8);
    for p in [1, 2, 4] {
        poke(base + p * ps(), 1);
    }
    let mut out = [0usize; 1];
    assert_eq!(
        writewatch::get_write_watch(true, base, 8 * ps(), &mut out),
        Ok(1)
    ); // 15
    assert_eq!(out[0], base + ps());
    assert_eq!(written(base, 8 * ps(), true), [2, 4]);
    assert_eq!(written(base, 8 * ps(), false), Vec::<usize>::new());
    // 16: without reset, lowest first, state unchanged.
    for p in [3, 5, 6] {
        poke(base + p * ps(), 1);
    }
    let mut two = [0usize; 2];
    assert_eq!(
        writewatch::get_write_watch(false, base, 8 * ps(), &mut two),
        Ok(2)
    );
    assert_eq!(two, [base + 3 * ps(), base + 5 * ps()]);
    assert_eq!(written(base, 8 * ps(), false), [3, 5, 6]);
    free(base);
}

#[test]
fn sub_ranges_query_and_reset_only_their_pages() {
    require_backend!();
    let base = alloc(8);
    poke(base + 2 * ps(), 1);
    poke(base + 4 * ps(), 1);
    assert_eq!(
        written(base + 3 * ps(), 2 * ps(), false),
        [1],
        "13: only page 4, relative to base+3ps"
    );
    writewatch::reset_write_watch(base, 3 * ps()).unwrap(); // 14
    assert_eq!(written(base, 8 * ps(), false), [4]);
    // Rounding: base+ps+10, 1 byte is page 1.
    poke(base + ps() + 20, 1);
    let mut out = [0usize; 4];
    assert_eq!(
        writewatch::get_write_watch(false, base + ps() + 10, 1, &mut out),
        Ok(1)
    );
    assert_eq!(out[0], base + ps());
    free(base);
}

#[test]
fn long_range_alternating_pages() {
    require_backend!();
    let pages = 2048; // 17: more runs than one kernel scan buffer holds
    let base = alloc(pages);
    for i in (0..pages).step_by(2) {
        poke(base + i * ps(), 1);
    }
    // Pages made read-only after being written stay reported.
    // SAFETY: we do not touch the upper half while it is read-only.
    unsafe { writewatch::protect(base + pages / 2 * ps(), pages / 2 * ps(), libc::PROT_READ) }
        .unwrap();
    let expect: Vec<usize> = (0..pages).step_by(2).collect();
    assert_eq!(written(base, pages * ps(), false), expect);
    assert_eq!(written(base, pages * ps(), true), expect);
    assert_eq!(written(base, pages * ps(), false), Vec::<usize>::new());
    free(base);
}

#[test]
fn written_ranges_are_maximal_runs_clipped_to_the_range() {
    require_backend!();
    let base = alloc(32);
    for p in [1, 2, 3, 7, 10, 11] {
        poke(base + p * ps(), 1);
    }
    let mut out = [WrittenRange::default(); 8];
    let n = writewatch::get_written_ranges(false, base + 2 * ps(), 9 * ps(), &mut out).unwrap();
    let runs: Vec<_> = out[..n]
        .iter()
        .map(|r| ((r.start - base) / ps(), r.size / ps()))
        .collect();
    assert_eq!(runs, [(2, 2), (7, 1), (10, 1)], "clipped to pages 2..11");
    // Capacity 1 with reset: only the first run is returned and reset.
    let mut one = [WrittenRange::default(); 1];
    assert_eq!(
        writewatch::get_written_ranges(true, base, 32 * ps(), &mut one),
        Ok(1)
    );
    assert_eq!((one[0].start, one[0].size), (base + ps(), 3 * ps()));
    assert_eq!(written(base, 32 * ps(), false), [7, 10, 11]);
    free(base);
}

#[test]
fn protection_changes_keep_written_state() {
    require_backend!();
    let base = alloc(8);
    poke(base + 2 * ps(), 1);
    poke(base + 4 * ps(), 1);
    // SAFETY: the pages are not accessed while read-only.
    unsafe { writewatch::protect(base, 8 * ps(), libc::PROT_READ) }.unwrap();
    // SAFETY: as above.
    unsafe { writewatch::protect(base, 8 * ps(), libc::PROT_READ | libc::PROT_WRITE) }.unwrap();
    assert_eq!(written(base, 8 * ps(), false), [2, 4]); // 18
    poke(base + 5 * ps(), 1);
    // SAFETY: page 5 is not accessed while PROT_NONE.
    unsafe { writewatch::protect(base + 5 * ps(), ps(), libc::PROT_NONE) }.unwrap();
    assert_eq!(written(base, 8 * ps(), true), [2, 4, 5]); // 19
    // 20: protecting does not mark anything written.
    // SAFETY: as above.
    unsafe { writewatch::protect(base, 8 * ps(), libc::PROT_READ | libc::PROT_WRITE) }.unwrap();
    assert_eq!(written(base, 8 * ps(), false), Vec::<usize>::new());
    poke(base + 5 * ps(), 2);
    assert_eq!(
        written(base, 8 * ps(), false),
        [5],
        "writes after re-enabling are tracked"
    );
    free(base);
}

#[test]
fn protect_rejects_bad_arguments() {
    require_backend!();
    let base = alloc(4);
    // SAFETY: all of these fail before touching memory.
    unsafe {
        assert_eq!(
            writewatch::protect(base, 0, libc::PROT_READ),
            Err(Error::INVAL)
        );
        assert_eq!(
            writewatch::protect(base, ps(), libc::PROT_WRITE),
            Err(Error::INVAL)
        );
        assert_eq!(writewatch::protect(base, ps(), 0x100), Err(Error::INVAL));
        assert_eq!(
            writewatch::protect(base, 5 * ps(), libc::PROT_READ),
            Err(Error::INVAL)
        );
    }
    free(base);
}

#[test]
fn bad_ranges_are_einval_and_change_nothing() {
    require_backend!();
    let base = alloc(4);
    let size = 4 * ps();
    poke(base, 1);
    let mut out = [0xdead_beefusize; 4];
    let cases = [
        (0usize, ps()),                 // 27: NULL base
        (base, 0),                      // 34
        (base, 2 * size),               // 35: past the end
        (base + size - ps(), ps() + 1), // 35: one byte into the next page
        (base - ps(), ps()),            // the guard page below
        (base, usize::MAX),             // wraps
        (usize::MAX - 10, 20),          // wraps
    ];
    for (b, s) in cases {
        assert_eq!(
            writewatch::get_write_watch(true, b, s, &mut out),
            Err(Error::INVAL),
            "{b:#x}+{s:#x}"
        );
        assert_eq!(
            writewatch::reset_write_watch(b, s),
            Err(Error::INVAL),
            "{b:#x}+{s:#x}"
        );
        let mut r = [WrittenRange::default(); 2];
        assert_eq!(
            writewatch::get_written_ranges(true, b, s, &mut r),
            Err(Error::INVAL)
        );
    }
    assert_eq!(
        writewatch::get_write_watch(false, base, size, &mut []),
        Err(Error::INVAL)
    ); // 29
    assert_eq!(out, [0xdead_beef; 4], "36: failed calls write nothing");
    // Plain malloc memory (28).
    let v = vec![0u8; 3 * ps()];
    assert_eq!(
        writewatch::get_write_watch(false, v.as_ptr() as usize, ps(), &mut out),
        Err(Error::INVAL)
    );
    assert_eq!(written(base, size, false), [0], "watch state unchanged");
    free(base);
}

#[test]
fn range_across_two_regions_is_einval() {
    require_backend!();
    let a = alloc(4);
    let b = alloc(4);
    let (lo, hi) = (a.min(b), a.max(b));
    let mut out = [0usize; 8];
    assert_eq!(
        writewatch::get_write_watch(false, lo, hi + 4 * ps() - lo, &mut out),
        Err(Error::INVAL)
    );
    free(a);
    free(b);
}

#[test]
fn freed_and_foreign_bases() {
    require_backend!();
    let base = alloc(4);
    free(base);
    let mut out = [0usize; 4];
    assert_eq!(
        writewatch::get_write_watch(false, base, ps(), &mut out),
        Err(Error::INVAL)
    );
    // SAFETY: all of these are rejected before anything is unmapped.
    unsafe {
        assert_eq!(writewatch::free(base), Err(Error::INVAL), "double free");
        assert_eq!(writewatch::free(0), Err(Error::INVAL));
        let other = alloc(4);
        assert_eq!(
            writewatch::free(other + ps()),
            Err(Error::INVAL),
            "interior pointer"
        );
        free(other);
    }
    assert_eq!(writewatch::alloc(0), Err(Error::INVAL));
}

#[test]
fn alloc_is_zeroed_rw_and_guarded() {
    require_backend!();
    let base = writewatch::alloc(3 * ps() + 1).unwrap(); // rounded up to 4 pages
    assert!(writewatch::page::is_aligned(base));
    assert!((0..4 * ps()).step_by(512).all(|o| peek(base + o) == 0));
    poke(base + 4 * ps() - 1, 7);
    assert_eq!(written(base, 4 * ps(), false), [3]);
    let maps = writewatch::sys::mm::mappings_in(base - ps(), base + 5 * ps()).unwrap();
    let at = |a: usize| {
        maps.iter()
            .find(|m| m.start <= a && a < m.end)
            .unwrap()
            .perms
    };
    assert_eq!(&at(base - ps())[..3], b"---", "guard below");
    assert_eq!(&at(base + 4 * ps())[..3], b"---", "guard above");
    // Readable; writable from the program's view (page 3 was just written),
    // though the mprotect backend keeps armed pages read-only in the kernel.
    assert_eq!(at(base)[0], b'r');
    free(base);
}

#[test]
fn watch_existing_memory_keeps_contents_and_ignores_earlier_writes() {
    require_backend!();
    let m = Mmap::private(16 * ps());
    for p in 0..16 {
        poke(m.base + p * ps(), p as u8 + 1);
    }
    // SAFETY: `m` outlives the watch.
    unsafe { writewatch::watch(m.base, 16 * ps()) }.unwrap();
    assert_eq!(
        written(m.base, 16 * ps(), false),
        Vec::<usize>::new(),
        "earlier writes not reported"
    );
    assert!(
        (0..16).all(|p| peek(m.base + p * ps()) == p as u8 + 1),
        "contents kept"
    );
    poke(m.base + 9 * ps(), 0xff);
    assert_eq!(written(m.base, 16 * ps(), false), [9]);
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            writewatch::watch(m.base + 4 * ps(), ps()),
            Err(Error::BUSY),
            "overlap"
        );
        assert_eq!(
            writewatch::watch(m.base + 1, ps()),
            Err(Error::INVAL),
            "unaligned"
        );
        assert_eq!(writewatch::watch(m.base, 0), Err(Error::INVAL));
    }
    assert_eq!(
        writewatch::unwatch(m.base + ps()),
        Err(Error::INVAL),
        "not a watch base"
    );
    writewatch::unwatch(m.base).unwrap();
    poke(m.base + 3 * ps(), 1); // still writable
    assert_eq!(
        writewatch::unwatch(m.base),
        Err(Error::INVAL),
        "double unwatch"
    );
    let mut out = [0usize; 1];
    assert_eq!(
        writewatch::get_write_watch(false, m.base, ps(), &mut out),
        Err(Error::INVAL)
    );
}

#[test]
fn watch_rejects_file_mappings_and_holes() {
    require_backend!();
    let f = std::fs::File::open("/proc/self/exe").unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a private read-only file mapping we unmap below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ps(),
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    assert_eq!(
        // SAFETY: rejected before anything changes.
        unsafe { writewatch::watch(p as usize, ps()) },
        Err(Error::INVAL)
    );
    // SAFETY: our mapping.
    unsafe { libc::munmap(p, ps()) };
    let m = Mmap::private(3 * ps());
    // SAFETY: punch a hole in our own mapping.
    unsafe { libc::munmap((m.base + ps()) as *mut libc::c_void, ps()) };
    assert_eq!(
        // SAFETY: rejected before anything changes.
        unsafe { writewatch::watch(m.base, 3 * ps()) },
        Err(Error::INVAL)
    );
}

#[test]
fn watch_shared_anonymous_memory() {
    require_backend!();
    let m = Mmap::new(8 * ps(), libc::MAP_SHARED | libc::MAP_ANONYMOUS);
    // SAFETY: `m` outlives the watch.
    unsafe { writewatch::watch(m.base, 8 * ps()) }.unwrap();
    poke(m.base + 6 * ps(), 1);
    assert_eq!(written(m.base, 8 * ps(), true), [6]);
    assert_eq!(written(m.base, 8 * ps(), false), Vec::<usize>::new());
    writewatch::unwatch(m.base).unwrap();
}

#[test]
fn safe_rust_api() {
    require_backend!();
    let mut mem = WatchedAlloc::new(10 * ps()).unwrap();
    assert_eq!(mem.len(), 10 * ps());
    mem.as_mut_slice()[3 * ps()] = 1;
    mem.as_mut_slice()[4 * ps() + 9] = 1;
    mem.as_mut_slice()[8 * ps()] = 1;
    assert_eq!(mem.written_pages(.., false).unwrap(), [3, 4, 8]);
    assert_eq!(
        mem.written_ranges(.., false).unwrap(),
        [3 * ps()..5 * ps(), 8 * ps()..9 * ps()]
    );
    assert_eq!(mem.written_pages(4 * ps().., true).unwrap(), [4, 8]);
    assert_eq!(mem.written_pages(.., false).unwrap(), [3]);
    mem.reset(..).unwrap();
    assert!(mem.written_pages(.., false).unwrap().is_empty());
    assert_eq!(mem.written_pages(0..0, false), Err(Error::INVAL));
    assert_eq!(mem.written_pages(..11 * ps(), false), Err(Error::INVAL));
    mem.protect(.., writewatch::Protection::Read).unwrap();
    mem.protect(.., writewatch::Protection::ReadWrite).unwrap();
    // (The regions counter is process-wide and other tests allocate in
    // parallel, so it is checked in tests/model.rs, which runs alone.)
    drop(mem);
}

#[test]
fn stats_count_scans_resets_and_pages() {
    require_backend!();
    let base = alloc(8);
    let s0 = writewatch::stats();
    assert!(s0.regions >= 1 && s0.watched_bytes >= 8 * ps() as u64);
    poke(base, 1);
    poke(base + 3 * ps(), 1);
    assert_eq!(written(base, 8 * ps(), true), [0, 3]);
    writewatch::reset_write_watch(base, ps()).unwrap();
    let s1 = writewatch::stats();
    // Other tests run concurrently in this process, so check lower bounds.
    assert!(s1.scans > s0.scans);
    assert!(s1.resets >= s0.resets + 2);
    assert!(s1.pages_reported >= s0.pages_reported + 2);
    free(base);
}

#[test]
fn backend_selection() {
    let kind = require_backend!();
    let _keep = WatchedAlloc::new(ps()).unwrap();
    assert_eq!(writewatch::active_backend(), kind);
    assert_eq!(
        writewatch::init(kind),
        Ok(()),
        "same backend after first use: 0"
    );
    assert_eq!(writewatch::init(writewatch::BackendKind::Auto), Ok(()));
    for other in writewatch::BackendKind::CONCRETE
        .into_iter()
        .filter(|k| *k != kind)
    {
        assert_eq!(writewatch::init(other), Err(Error::BUSY), "{other:?}");
    }
    assert_ne!(writewatch::available_backends() & (1 << kind as u32), 0);
}

#[test]
fn prepare_kernel_write_then_read_syscall() {
    require_backend!();
    let base = alloc(16);
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let msg = b"hello, kernel write";
    assert_eq!(
        // SAFETY: writing our buffer to our pipe.
        unsafe { libc::write(fds[1], msg.as_ptr().cast(), msg.len()) },
        msg.len() as isize
    );
    let dst = base + 5 * ps() - 4; // straddles pages 4 and 5
    writewatch::prepare_kernel_write(dst, msg.len()).unwrap();
    // SAFETY: `dst` has room for the message inside our region.
    let n = unsafe { libc::read(fds[0], dst as *mut libc::c_void, msg.len()) };
    assert_eq!(
        n,
        msg.len() as isize,
        "read(2) into watched memory: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(
        // SAFETY: just filled by read(2).
        unsafe { std::slice::from_raw_parts(dst as *const u8, msg.len()) },
        msg
    );
    assert_eq!(written(base, 16 * ps(), true), [4, 5]);
    // SAFETY: closing our pipe.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    free(base);
}

#[test]
fn prepare_kernel_write_ignores_unwatched_memory() {
    require_backend!();
    let v = [0u8; 64];
    assert_eq!(
        writewatch::prepare_kernel_write(v.as_ptr() as usize, v.len()),
        Ok(())
    );
    assert_eq!(writewatch::prepare_kernel_write(0, 0), Ok(()));
    assert_eq!(
        writewatch::prepare_kernel_write(usize::MAX - 1, 10),
        Err(Error::INVAL)
    );
}

#[test]
fn prepare_kernel_write_marks_the_whole_range() {
    require_backend!();
    let base = alloc(16);
    writewatch::prepare_kernel_write(base + 8 * ps() + 100, 4 * ps()).unwrap();
    assert_eq!(
        written(base, 16 * ps(), true),
        [8, 9, 10, 11, 12],
        "23: reported once prepared"
    );
    assert_eq!(written(base, 16 * ps(), false), Vec::<usize>::new());
    free(base);
}

#[test]
fn large_sparse_region() {
    require_backend!();
    // Larger than the written backend's dense limit (1 GiB): exercises the
    // sparse strategy there; an ordinary big region elsewhere.
    let pages = (2usize << 30) / ps();
    let base = alloc(pages);
    assert_eq!(written(base, pages * ps(), false), Vec::<usize>::new());
    let touched = [0, 1, 511, 512, 100_000, pages - 1];
    for p in touched {
        poke(base + p * ps(), 1);
    }
    assert_eq!(written(base, pages * ps(), false), touched);
    let mut two = [0usize; 2];
    assert_eq!(
        writewatch::get_write_watch(true, base, pages * ps(), &mut two),
        Ok(2)
    );
    assert_eq!(written(base, pages * ps(), false), touched[2..]);
    writewatch::reset_write_watch(base + 512 * ps(), ps()).unwrap();
    assert_eq!(
        written(base, pages * ps(), false),
        [511, 100_000, pages - 1]
    );
    writewatch::prepare_kernel_write(base + 7 * ps(), 2 * ps()).unwrap();
    assert_eq!(
        written(base, pages * ps(), true),
        [7, 8, 511, 100_000, pages - 1]
    );
    poke(base + 1, 3); // a page that was reported and reset before
    assert_eq!(written(base, pages * ps(), true), [0]);
    free(base);
}
