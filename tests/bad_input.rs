//! Walks the table of docs/BAD-INPUT.md through the C ABI (`ww_*`): every
//! function with every class of bad argument. Each row has an id; the test
//! runs every row, then reads the document and requires that its rows and
//! the ones run here are the same set, with the same result. So the table
//! cannot drift from the library (or the library from the table).
//!
//! Rows about a process that has not chosen a backend yet, or that has a
//! bad `$WW_BACKEND`, run in child processes (`common::run_child`).
//!
//! Failed calls must also write no output and change no state: checked
//! for every failing get (`*count`, the array and `*granularity` keep their
//! sentinels) and, at the end, by the page written before the table ran.

mod common;

use std::collections::BTreeMap;
use std::ffi::{CStr, c_void};

use common::*;
use writewatch::capi::types::ww_range;
use writewatch::capi::*;

const SENTINEL: usize = 0xdead_beef;

/// A call's result as the table spells it.
fn rc(e: i32) -> String {
    match e {
        0 => "0".into(),
        1 => "1".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::ENOTSUP => "ENOTSUP".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EMFILE => "EMFILE".into(),
        e => format!("errno {e}"),
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `ww_alloc`: `NULL/<errno>` or `non-NULL` (the pointer is returned too).
fn alloc(size: usize) -> (String, usize) {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = 0 };
    let p = ww_alloc(size) as usize;
    if p == 0 {
        (format!("NULL/{}", rc(errno())), 0)
    } else {
        ("non-NULL".into(), p)
    }
}

fn free(p: usize) -> String {
    // SAFETY: only regions the table owns, or addresses that must be rejected.
    rc(unsafe { ww_free(p as *mut c_void) })
}

fn watch(p: usize, size: usize) -> String {
    // SAFETY: memory the table keeps mapped, or ranges that must be rejected.
    rc(unsafe { ww_watch(p as *mut c_void, size) })
}

/// `ww_get_write_watch` with `cap` entries (`None`: NULL array), `count`
/// set to `count` (`None`: NULL), `gran` false for a NULL granularity.
/// On failure, checks that no output was written.
fn get(
    id: &str,
    flags: u32,
    base: usize,
    size: usize,
    cap: Option<usize>,
    count: Option<usize>,
    gran: bool,
) -> String {
    let mut out = vec![SENTINEL; cap.unwrap_or(0)];
    let mut n = count.unwrap_or(0);
    let mut g: u32 = 0xdead;
    let out_p: *mut *mut c_void = if cap.is_some() {
        out.as_mut_ptr().cast()
    } else {
        std::ptr::null_mut()
    };
    let n_p: *mut usize = if count.is_some() {
        &mut n
    } else {
        std::ptr::null_mut()
    };
    let g_p: *mut u32 = if gran { &mut g } else { std::ptr::null_mut() };
    // SAFETY: non-NULL pointers are valid; `out` has `cap` entries.
    let e = unsafe { ww_get_write_watch(flags, base as *mut c_void, size, out_p, n_p, g_p) };
    if e != 0 {
        assert!(
            out.iter().all(|&v| v == SENTINEL) && n == count.unwrap_or(0) && g == 0xdead,
            "{id}: a failed ww_get_write_watch wrote its outputs"
        );
    }
    rc(e)
}

/// `ww_get_written_ranges`, like [`get`].
fn ranges(
    id: &str,
    flags: u32,
    base: usize,
    size: usize,
    cap: Option<usize>,
    count: Option<usize>,
) -> String {
    let blank = ww_range {
        start: SENTINEL as *mut c_void,
        size: SENTINEL,
    };
    let mut out = vec![blank; cap.unwrap_or(0)];
    let mut n = count.unwrap_or(0);
    let out_p = if cap.is_some() {
        out.as_mut_ptr()
    } else {
        std::ptr::null_mut()
    };
    let n_p: *mut usize = if count.is_some() {
        &mut n
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: non-NULL pointers are valid; `out` has `cap` entries.
    let e = unsafe { ww_get_written_ranges(flags, base as *mut c_void, size, out_p, n_p) };
    if e != 0 {
        assert!(
            out.iter()
                .all(|r| r.start as usize == SENTINEL && r.size == SENTINEL)
                && n == count.unwrap_or(0),
            "{id}: a failed ww_get_written_ranges wrote its outputs"
        );
    }
    rc(e)
}

fn reset(base: usize, size: usize) -> String {
    rc(ww_reset_write_watch(base as *mut c_void, size))
}

fn protect(base: usize, size: usize, prot: i32) -> String {
    // SAFETY: every protect row must be rejected before anything changes.
    rc(unsafe { ww_protect(base as *mut c_void, size, prot) })
}

fn name(b: u32) -> String {
    let p = ww_backend_name(b);
    if p.is_null() {
        "NULL".into()
    } else {
        // SAFETY: a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(p) };
        format!("\"{}\"", s.to_string_lossy())
    }
}

/// Rows run so far: id → result.
#[derive(Default)]
struct Rows(BTreeMap<String, String>);

impl Rows {
    fn row(&mut self, id: &str, result: String) {
        assert!(
            self.0.insert(id.to_string(), result).is_none(),
            "duplicate row id {id}"
        );
    }
}

/// The rows that run in this process (a backend is chosen by the first
/// allocation below).
fn in_process_rows(rows: &mut Rows) {
    let ps = ps();
    let (r, a) = alloc(8 * ps);
    assert_eq!(r, "non-NULL", "fixture allocation");
    poke(a + 2 * ps, 1); // must still be reported when the table is done
    let (_, b) = alloc(4 * ps);
    let m = Mmap::private(8 * ps);
    let w = m.base + 2 * ps; // pages 2..6 of `m` are watched
    assert_eq!(watch(w, 4 * ps), "0");
    let heap = vec![0u8; 4 * ps];
    let hp = heap.as_ptr() as usize;
    let on_stack = 0u64;
    let stack = std::hint::black_box(&on_stack) as *const u64 as usize;
    let (lo, hi) = (a.min(b), a.max(b));
    let cross = hi + 4 * ps - lo; // from the lower region to past the higher
    let ro = Mmap::private(2 * ps);
    // SAFETY: our own mapping, never written.
    let e = unsafe { libc::mprotect(ro.base as *mut c_void, ro.len, libc::PROT_READ) };
    assert_eq!(e, 0);
    let hole = Mmap::private(3 * ps);
    // SAFETY: punch a hole in our own mapping.
    let e = unsafe { libc::munmap((hole.base + ps) as *mut c_void, ps) };
    assert_eq!(e, 0);
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let fmap = {
        use std::os::fd::AsRawFd;
        // SAFETY: a private read-only file mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ps,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p as usize
    };
    let gone = Mmap::private(2 * ps);
    assert_eq!(watch(gone.base, 2 * ps), "0");
    assert_eq!(rc(ww_unwatch(gone.base as *mut c_void)), "0");
    // Last: no mapping made after it can reuse its addresses.
    let (_, freed) = alloc(2 * ps);
    assert_eq!(free(freed), "0");
    let active = ww_active_backend();
    let other = (1..=3).find(|k| *k != active).unwrap();
    let (r, x) = (libc::PROT_READ, libc::PROT_EXEC);
    let wr = libc::PROT_WRITE;

    // ww_init / ww_backend_name
    rows.row("init/unknown", rc(ww_init(4)));
    rows.row("init/unknown-max", rc(ww_init(u32::MAX)));
    rows.row("init/other-after-use", rc(ww_init(other)));
    rows.row("init/auto-after-use", rc(ww_init(0)));
    rows.row("name/unknown", name(4));
    rows.row("name/unknown-max", name(u32::MAX));
    rows.row("name/auto", name(0));

    // ww_alloc
    rows.row("alloc/zero", alloc(0).0);
    rows.row("alloc/rounding-wraps", alloc(usize::MAX).0);
    rows.row("alloc/too-big", alloc(1 << 50).0);

    // ww_free
    rows.row("free/null", free(0));
    rows.row("free/interior", free(a + ps));
    rows.row("free/unaligned", free(a + 1));
    rows.row("free/guard", free(a - ps));
    rows.row("free/double", free(freed));
    rows.row("free/watched", free(w));
    rows.row("free/malloc", free(hp));

    // ww_watch
    rows.row("watch/null", watch(0, ps));
    rows.row("watch/unaligned", watch(m.base + 1, ps));
    rows.row("watch/size-zero", watch(m.base, 0));
    rows.row("watch/wraps", watch(m.base, usize::MAX));
    rows.row("watch/overlaps-watched", watch(w + ps, ps));
    rows.row("watch/overlaps-alloc", watch(a, ps));
    rows.row("watch/read-only", watch(ro.base, ps));
    rows.row("watch/prot-none", watch(a - ps, ps));
    rows.row("watch/file", watch(fmap, ps));
    rows.row("watch/hole", watch(hole.base, 3 * ps));
    rows.row("watch/order-unaligned-overlap", watch(w + 1, ps));
    rows.row("watch/order-overlap-hole", watch(m.base, 16 * ps));

    // ww_unwatch
    rows.row("unwatch/null", rc(ww_unwatch(std::ptr::null_mut())));
    rows.row("unwatch/interior", rc(ww_unwatch((w + ps) as *mut c_void)));
    rows.row("unwatch/alloc", rc(ww_unwatch(a as *mut c_void)));
    rows.row(
        "unwatch/never-watched",
        rc(ww_unwatch(m.base as *mut c_void)),
    );
    rows.row("unwatch/double", rc(ww_unwatch(gone.base as *mut c_void)));

    // ww_get_write_watch: pointers, scalars, array, range, in that order.
    let g = |id: &str, f, base, size, cap, count, gran| get(id, f, base, size, cap, count, gran);
    let (c4, n4) = (Some(4), Some(4));
    rows.row(
        "get/count-null",
        g("get/count-null", 0, a, ps, c4, None, true),
    );
    rows.row(
        "get/granularity-null",
        g("get/granularity-null", 0, a, ps, c4, n4, false),
    );
    rows.row(
        "get/count-zero",
        g("get/count-zero", 0, a, ps, c4, Some(0), true),
    );
    rows.row(
        "get/array-null",
        g("get/array-null", 0, a, ps, None, n4, true),
    );
    rows.row(
        "get/array-null-count-zero",
        g("get/array-null-count-zero", 0, a, ps, None, Some(0), true),
    );
    rows.row(
        "get/flags-unknown",
        g("get/flags-unknown", 2, a, ps, c4, n4, true),
    );
    rows.row(
        "get/flags-deadbeef",
        g("get/flags-deadbeef", 0xdead_beef, a, ps, c4, n4, true),
    );
    rows.row("get/size-zero", g("get/size-zero", 0, a, 0, c4, n4, true));
    rows.row("get/base-null", g("get/base-null", 0, 0, ps, c4, n4, true));
    rows.row("get/wraps", g("get/wraps", 0, a, usize::MAX, c4, n4, true));
    rows.row(
        "get/rounding-wraps",
        g("get/rounding-wraps", 0, usize::MAX - 10, 5, c4, n4, true),
    );
    rows.row(
        "get/past-end",
        g("get/past-end", 0, a, 9 * ps, c4, n4, true),
    );
    rows.row(
        "get/one-byte-past",
        g("get/one-byte-past", 0, a + 7 * ps, ps + 1, c4, n4, true),
    );
    rows.row("get/guard", g("get/guard", 0, a - ps, ps, c4, n4, true));
    rows.row(
        "get/across-regions",
        g("get/across-regions", 0, lo, cross, c4, n4, true),
    );
    rows.row("get/freed", g("get/freed", 0, freed, ps, c4, n4, true));
    rows.row(
        "get/unwatched",
        g("get/unwatched", 0, gone.base, ps, c4, n4, true),
    );
    rows.row(
        "get/never-watched",
        g("get/never-watched", 0, m.base, ps, c4, n4, true),
    );
    rows.row("get/malloc", g("get/malloc", 0, hp, ps, c4, n4, true));
    rows.row("get/stack", g("get/stack", 0, stack, 8, c4, n4, true));
    rows.row(
        "get/order-count-null-size-zero",
        g("get/order-count-null-size-zero", 0, a, 0, c4, None, true),
    );
    rows.row(
        "get/order-array-null-bad-range",
        g("get/order-array-null-bad-range", 0, hp, ps, None, n4, true),
    );
    rows.row(
        "get/order-flags-array-null",
        g("get/order-flags-array-null", 2, a, ps, None, n4, true),
    );

    // ww_get_written_ranges
    let rr = |id: &str, f, base, size, cap, count| ranges(id, f, base, size, cap, count);
    rows.row(
        "ranges/count-null",
        rr("ranges/count-null", 0, a, ps, c4, None),
    );
    rows.row(
        "ranges/count-zero",
        rr("ranges/count-zero", 0, a, ps, c4, Some(0)),
    );
    rows.row(
        "ranges/array-null",
        rr("ranges/array-null", 0, a, ps, None, n4),
    );
    rows.row(
        "ranges/array-null-count-zero",
        rr("ranges/array-null-count-zero", 0, a, ps, None, Some(0)),
    );
    rows.row(
        "ranges/flags-unknown",
        rr("ranges/flags-unknown", 0x8000_0001, a, ps, c4, n4),
    );
    rows.row("ranges/size-zero", rr("ranges/size-zero", 0, a, 0, c4, n4));
    rows.row("ranges/base-null", rr("ranges/base-null", 0, 0, ps, c4, n4));
    rows.row("ranges/wraps", rr("ranges/wraps", 0, a, usize::MAX, c4, n4));
    rows.row(
        "ranges/past-end",
        rr("ranges/past-end", 0, a, 9 * ps, c4, n4),
    );
    rows.row(
        "ranges/across-regions",
        rr("ranges/across-regions", 0, lo, cross, c4, n4),
    );
    rows.row("ranges/freed", rr("ranges/freed", 0, freed, ps, c4, n4));
    rows.row("ranges/malloc", rr("ranges/malloc", 0, hp, ps, c4, n4));

    // ww_reset_write_watch
    rows.row("reset/size-zero", reset(a, 0));
    rows.row("reset/base-null", reset(0, ps));
    rows.row("reset/wraps", reset(a, usize::MAX));
    rows.row("reset/past-end", reset(a, 9 * ps));
    rows.row("reset/guard", reset(a - ps, ps));
    rows.row("reset/across-regions", reset(lo, cross));
    rows.row("reset/freed", reset(freed, ps));
    rows.row("reset/never-watched", reset(m.base, ps));
    rows.row("reset/malloc", reset(hp, ps));

    // ww_protect
    rows.row("protect/size-zero", protect(a, 0, r));
    rows.row("protect/write-only", protect(a, ps, wr));
    rows.row("protect/write-exec", protect(a, ps, wr | x));
    rows.row("protect/unknown-bit", protect(a, ps, 0x8));
    rows.row(
        "protect/growsdown",
        protect(a, ps, r | libc::PROT_GROWSDOWN),
    );
    rows.row("protect/negative", protect(a, ps, -1));
    rows.row("protect/base-null", protect(0, ps, r));
    rows.row("protect/wraps", protect(a, usize::MAX, r));
    rows.row("protect/past-end", protect(a, 9 * ps, r));
    rows.row("protect/guard", protect(a - ps, ps, r));
    rows.row("protect/never-watched", protect(m.base, ps, r));
    rows.row("protect/malloc", protect(hp, ps, r));

    // ww_handle_fault: never an error, 0 = "not ours".
    rows.row("fault/null", rc(ww_handle_fault(std::ptr::null_mut())));
    rows.row("fault/unwatched", rc(ww_handle_fault(stack as *mut c_void)));
    rows.row("fault/guard", rc(ww_handle_fault((a - ps) as *mut c_void)));

    // ww_prepare_kernel_write: unwatched parts are ignored.
    let pkw = |addr: usize, len: usize| rc(ww_prepare_kernel_write(addr as *mut c_void, len));
    rows.row("prepare/null-len-zero", pkw(0, 0));
    rows.row("prepare/null", pkw(0, 64));
    rows.row("prepare/unwatched", pkw(stack, 64));
    rows.row("prepare/wraps", pkw(usize::MAX - 1, 10));
    rows.row("prepare/rounding-wraps", pkw(usize::MAX - 10, 5));

    // ww_get_stats
    // SAFETY: NULL must be rejected without a write.
    rows.row(
        "stats/null",
        rc(unsafe { ww_get_stats(std::ptr::null_mut()) }),
    );

    // No failed call changed state: the page written before is still the
    // only one reported, and the watched range still works.
    assert_eq!(written(a, 8 * ps, true), [2], "state after the table");
    poke(w + ps, 1);
    assert_eq!(
        written(w, 4 * ps, true),
        [1],
        "the watched range still works"
    );
    assert_eq!(rc(ww_unwatch(w as *mut c_void)), "0");
    assert_eq!(free(a), "0");
    assert_eq!(free(b), "0");
    // SAFETY: our file mapping.
    unsafe { libc::munmap(fmap as *mut c_void, ps) };
    drop(heap);
}

// ---------------------------------------------------------------------------
// Rows that need a process of their own
// ---------------------------------------------------------------------------

/// Prints `row <id> <result>` for the parent to collect.
fn child_row(id: &str, result: String) {
    println!("row {id} {result}");
}

/// No backend chosen yet: calls on regions fail, and choose nothing.
fn fresh() {
    let ps = ps();
    let m = Mmap::private(4 * ps);
    let mut out = [0usize; 4];
    let (mut n, mut g) = (4usize, 0u32);
    child_row("fresh/free", free(m.base));
    child_row("fresh/unwatch", rc(ww_unwatch(m.base as *mut c_void)));
    // SAFETY: valid pointers; `out` has 4 entries.
    let e = unsafe {
        ww_get_write_watch(
            0,
            m.base as *mut c_void,
            ps,
            out.as_mut_ptr().cast(),
            &mut n,
            &mut g,
        )
    };
    child_row("fresh/get", rc(e));
    child_row("fresh/reset", reset(m.base, ps));
    child_row("fresh/protect", protect(m.base, ps, libc::PROT_READ));
    child_row(
        "fresh/prepare",
        rc(ww_prepare_kernel_write(m.base as *mut c_void, ps)),
    );
    child_row("fresh/fault", rc(ww_handle_fault(m.base as *mut c_void)));
    // Nothing was chosen: any available backend can still be picked.
    let avail = ww_available_backends();
    if let Some(k) = (1..=3u32).find(|k| avail & (1 << k) != 0) {
        child_row("fresh/init-still-free", rc(ww_init(k)));
    } else {
        child_row("fresh/init-still-free", "SKIP: no backend available".into());
    }
}

/// A backend this kernel/build lacks, asked for by name before first use.
fn unavailable() {
    let avail = ww_available_backends();
    match (1..=3u32).find(|k| avail & (1 << k) == 0) {
        Some(k) => child_row("init/unavailable", rc(ww_init(k))),
        None => child_row(
            "init/unavailable",
            "SKIP: every backend is available here (see exhaustion::userfaultfd_refused_by_seccomp)"
                .into(),
        ),
    }
}

/// `WW_BACKEND=bogus`: the first use fails; an explicit ww_init wins.
fn bad_env() {
    let m = Mmap::private(2 * ps());
    child_row("env/bad-alloc", alloc(ps()).0);
    child_row("env/bad-watch", watch(m.base, ps()));
    child_row("env/init-overrides", rc(ww_init(0)));
}

#[test]
fn child() {
    let Some(case) = child_case() else { return };
    match case.as_str() {
        "fresh" => fresh(),
        "unavailable" => unavailable(),
        "bad-env" => bad_env(),
        other => panic!("unknown child case {other}"),
    }
}

fn child_rows(rows: &mut Rows, case: &str, env: &[(&str, &str)]) {
    let out = run_child(case, env);
    for line in out.lines() {
        // libtest may print "test child ... " before the first line.
        let Some(i) = line.find("row ") else { continue };
        let mut parts = line[i + 4..].splitn(2, ' ');
        let (id, result) = (parts.next().unwrap(), parts.next().unwrap_or(""));
        rows.row(id, result.to_string());
    }
}

// ---------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------

/// The documents, compiled in (the test binaries also run in VMs without
/// the source tree).
const BAD_INPUT_MD: &str = include_str!("../docs/BAD-INPUT.md");
const SECURITY_MD: &str = include_str!("../docs/SECURITY.md");

/// Table rows of docs/BAD-INPUT.md: id → (result, "also backed by").
fn doc_rows() -> BTreeMap<String, (String, String)> {
    let text = BAD_INPUT_MD;
    let mut rows = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with('|')) {
        // `\|` is a pipe inside a cell (e.g. `PROT_WRITE\|PROT_EXEC`).
        let line = line.replace("\\|", "\u{1}");
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().replace('\u{1}', "|"))
            .collect();
        if cells.len() != 5 || !cells[3].starts_with('`') {
            continue; // header, separator, or another table
        }
        let unquote = |s: &str| s.trim_matches('`').to_string();
        let id = unquote(&cells[3]);
        let prev = rows.insert(id.clone(), (unquote(&cells[2]), cells[4].clone()));
        assert!(prev.is_none(), "docs/BAD-INPUT.md: row {id} twice");
    }
    rows
}

/// Every `file::function` a document names must be a test that exists
/// (`writewatch::...` is the Rust API, not a test).
fn check_references(text: &str, errors: &mut Vec<String>) {
    for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        let Some((file, func)) = word.split_once("::") else {
            continue;
        };
        // `writewatch::...` is the library's Rust API, not a test.
        if file.is_empty()
            || func.is_empty()
            || file == "writewatch"
            || file.contains(':')
            || func.contains(':')
        {
            continue;
        }
        let path = format!("{}/tests/{file}.rs", env!("CARGO_MANIFEST_DIR"));
        match std::fs::read_to_string(&path) {
            Ok(src) if src.contains(&format!("fn {func}(")) => {}
            Ok(_) => errors.push(format!("{file}::{func}: no such test in tests/{file}.rs")),
            Err(_) => errors.push(format!("{file}::{func}: no tests/{file}.rs")),
        }
    }
}

#[test]
fn every_row_of_the_table() {
    require_backend!();
    let mut rows = Rows::default();
    child_rows(&mut rows, "fresh", &[]);
    child_rows(&mut rows, "unavailable", &[]);
    child_rows(&mut rows, "bad-env", &[("WW_BACKEND", "bogus")]);
    in_process_rows(&mut rows);

    let doc = doc_rows();
    let mut errors = vec![];
    for (id, got) in &rows.0 {
        match doc.get(id) {
            None => errors.push(format!("{id}: run here ({got}) but not in the table")),
            Some((_, _)) if got.starts_with("SKIP") => println!("SKIP {id}: {got}"),
            Some((want, _)) if want != got => errors.push(format!(
                "{id}: the table says {want}, the library returns {got}"
            )),
            Some(_) => {}
        }
    }
    for id in doc.keys().filter(|id| !rows.0.contains_key(*id)) {
        errors.push(format!("{id}: in the table but no test runs it"));
    }
    // The documents name the tests behind each row: those must exist. That
    // needs the source tree, which the kernel-matrix VMs do not carry.
    if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests")).is_dir() {
        check_references(BAD_INPUT_MD, &mut errors);
        check_references(SECURITY_MD, &mut errors);
    } else {
        println!("SKIP every_row_of_the_table (test references): no source tree here");
    }
    assert!(
        errors.is_empty(),
        "docs/BAD-INPUT.md, docs/SECURITY.md:\n  {}",
        errors.join("\n  ")
    );
    println!(
        "bad_input: {} rows checked against docs/BAD-INPUT.md",
        rows.0.len()
    );
}
