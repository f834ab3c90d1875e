//! The cases, each run in a fresh process (`ww-bench --case ...`). A case
//! prints one line per figure on stdout, tab separated:
//! `R group size pattern unit value`, `N group size pattern note` (a note,
//! e.g. a count mismatch) or `F group size pattern message` (a failure).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::raw::{self, Tracker, ps};

/// Which pages a step writes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pattern {
    /// This percentage of the pages, spread evenly with jitter.
    Scattered(f64),
    /// 10% of the pages, in runs of 64 contiguous pages.
    Runs,
    /// Every other page.
    Alternate,
    /// 0.1% of the pages, as 2 MiB chunks spread over the range (a heap).
    Clustered,
}

impl Pattern {
    /// From the command-line name: `0`, `0.1`, `1`, `10`, `100`, `runs`,
    /// `alternate`, `clustered`.
    pub fn parse(s: &str) -> Option<Pattern> {
        Some(match s {
            "runs" => Pattern::Runs,
            "alternate" => Pattern::Alternate,
            "clustered" => Pattern::Clustered,
            _ => Pattern::Scattered(s.parse().ok()?),
        })
    }

    /// The row label.
    pub fn label(self) -> String {
        match self {
            Pattern::Scattered(0.0) => "0%".into(),
            Pattern::Scattered(p) if p >= 100.0 => "100%".into(),
            Pattern::Scattered(p) => format!("{p}% scattered"),
            Pattern::Runs => "10% in 64-page runs".into(),
            Pattern::Alternate => "every other page".into(),
            Pattern::Clustered => "0.1% in 2 MiB chunks".into(),
        }
    }

    /// The page indices written, ascending and distinct.
    pub fn pages(self, total: usize) -> Vec<usize> {
        match self {
            Pattern::Scattered(p) if p >= 100.0 => (0..total).collect(),
            Pattern::Scattered(p) => {
                let k = (total as f64 * p / 100.0).round() as usize;
                if k == 0 {
                    return vec![];
                }
                let stride = total / k;
                (0..k).map(|i| i * stride + mix(i) % stride).collect()
            }
            Pattern::Runs => {
                let runs = (total / 10 / 64).max(1);
                let stride = total / runs;
                (0..runs)
                    .flat_map(|i| i * stride..i * stride + 64.min(stride))
                    .collect()
            }
            Pattern::Alternate => (0..total).step_by(2).collect(),
            Pattern::Clustered => {
                let chunk = (2 << 20) / ps();
                let chunks = (total / 1000).div_ceil(chunk).max(1);
                let stride = total / chunks / chunk * chunk;
                (0..chunks)
                    .flat_map(|i| i * stride..i * stride + chunk)
                    .collect()
            }
        }
    }
}

/// A fixed pseudo-random jitter (splitmix64 finaliser).
fn mix(i: usize) -> usize {
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as usize
}

/// Human size label: `64 MiB`, `1 GiB`, `1 GiB + 2 MiB`.
pub fn size_label(bytes: usize) -> String {
    const GIB: usize = 1 << 30;
    const MIB: usize = 1 << 20;
    if bytes >= GIB && bytes % GIB != 0 {
        format!(
            "{} + {}",
            size_label(bytes / GIB * GIB),
            size_label(bytes % GIB)
        )
    } else if bytes >= GIB {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// One result line.
pub fn emit(group: &str, size: &str, pattern: &str, unit: &str, value: f64) {
    println!("R\t{group}\t{size}\t{pattern}\t{unit}\t{value}");
}

/// One note line.
pub fn note(group: &str, size: &str, pattern: &str, text: &str) {
    println!("N\t{group}\t{size}\t{pattern}\t{text}");
}

/// One failure line.
pub fn fail(group: &str, size: &str, pattern: &str, text: &str) {
    println!("F\t{group}\t{size}\t{pattern}\t{text}");
}

/// Measure wall-clock time instead of the thread's CPU time.
pub static WALL: AtomicBool = AtomicBool::new(false);

/// The calling thread's CPU time (user + system), in nanoseconds.
fn thread_cpu_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec for the kernel to fill.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime");
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// Nanoseconds taken by `f`, and its result: the thread's CPU time (user
/// and system, so page faults and ioctls count; time the 2 shared cores
/// spent on other processes does not), or wall time with `--wall`.
fn timed<R>(f: impl FnOnce() -> R) -> (f64, R) {
    if WALL.load(Ordering::Relaxed) {
        let t = Instant::now();
        let r = f();
        (t.elapsed().as_nanos() as f64, r)
    } else {
        let t = thread_cpu_ns();
        let r = f();
        (thread_cpu_ns() - t, r)
    }
}

/// The median (upper median for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Writes one byte to each listed page (volatile, so every store happens).
fn write_pages(base: usize, pages: &[usize], v: u8) {
    let ps = ps();
    for &p in pages {
        // SAFETY: every listed page is inside a read-write region we own.
        unsafe { std::ptr::write_volatile((base + p * ps) as *mut u8, v) };
    }
}

/// Writes one byte to each of the first `n` pages.
fn write_all(base: usize, n: usize, v: u8) {
    let ps = ps();
    for p in 0..n {
        // SAFETY: as in `write_pages`.
        unsafe { std::ptr::write_volatile((base + p * ps) as *mut u8, v) };
    }
}

/// Notes a get that did not report what was written.
fn check(group: &str, size: &str, pattern: &str, got: usize, want: usize) {
    if got != want {
        note(
            group,
            size,
            pattern,
            &format!("reported {got} pages, {want} written"),
        );
    }
}

/// First and second write to populated, clean pages, per page.
pub fn write(t: &mut dyn Tracker, size: usize, reps: usize) {
    let (sz, pat) = (size_label(size), "populated, clean");
    let pages = size / ps();
    let base = t.alloc(size);
    write_all(base, pages, 1);
    let (mut first, mut second) = (vec![], vec![]);
    for rep in 0..reps {
        t.reset(base, size);
        let v = 2 * rep as u8 + 2;
        first.push(timed(|| write_all(base, pages, v)).0 / pages as f64);
        second.push(timed(|| write_all(base, pages, v + 1)).0 / pages as f64);
    }
    if t.tracks() {
        let mut out = vec![0; pages];
        let n = t.get(base, size, true, &mut out);
        check("first write", &sz, pat, n, pages);
    }
    t.free(base, size);
    emit("first write", &sz, pat, "ns/page", median(&first));
    emit("second write", &sz, pat, "ns/page", median(&second));
}

/// get+reset and get-only over a populated region, per pattern.
pub fn scan(t: &mut dyn Tracker, size: usize, patterns: &[Pattern], reps: usize) {
    let sz = size_label(size);
    let pages = size / ps();
    let base = t.alloc(size);
    write_all(base, pages, 1);
    t.reset(base, size);
    let mut out = vec![0usize; pages];
    for &p in patterns {
        let (label, idx) = (p.label(), p.pages(pages));
        let (mut gr, mut g) = (vec![], vec![]);
        // Cheap patterns (≤ 1% written) take tens of µs, where the noise of
        // a shared machine weighs most: repeat them more.
        let reps = if idx.len() * 100 <= pages {
            4 * reps
        } else {
            reps
        };
        for rep in 0..reps {
            write_pages(base, &idx, rep as u8);
            let (ns, n) = timed(|| t.get(base, size, true, &mut out));
            check("get+reset", &sz, &label, n, idx.len());
            gr.push(ns / 1e3);
            write_pages(base, &idx, rep as u8 + 1);
            let (ns, n) = timed(|| t.get(base, size, false, &mut out));
            check("get", &sz, &label, n, idx.len());
            g.push(ns / 1e3);
            t.reset(base, size);
        }
        emit("get+reset", &sz, &label, "µs", median(&gr));
        emit("get", &sz, &label, "µs", median(&g));
    }
    t.free(base, size);
}

/// A huge reservation with a little of it touched: alloc, gets, page tables.
pub fn sparse(t: &mut dyn Tracker, size: usize, p: Pattern, reps: usize) {
    let (sz, label) = (size_label(size), p.label());
    let idx = p.pages(size / ps());
    let pte0 = raw::vm_pte_kib();
    let (ns, base) = timed(|| t.alloc(size));
    emit("sparse: alloc", &sz, &label, "µs", ns / 1e3);
    let (ns, ()) = timed(|| write_pages(base, &idx, 1));
    emit("sparse: first touch", &sz, &label, "ms", ns / 1e6);
    emit(
        "sparse: page tables (VmPTE)",
        &sz,
        &label,
        "KiB",
        raw::vm_pte_kib().saturating_sub(pte0) as f64,
    );
    if t.tracks() {
        let mut out = vec![0usize; 2 * idx.len() + 16];
        let (mut g, mut gr, mut gc, mut g10) = (vec![], vec![], vec![], vec![]);
        let tenth: Vec<usize> = idx.iter().copied().step_by(10).collect();
        for rep in 0..reps {
            if rep > 0 {
                write_pages(base, &idx, rep as u8);
            }
            let (ns, n) = timed(|| t.get(base, size, false, &mut out));
            check("sparse: get", &sz, &label, n, idx.len());
            g.push(ns / 1e3);
            let (ns, n) = timed(|| t.get(base, size, true, &mut out));
            check("sparse: get+reset", &sz, &label, n, idx.len());
            gr.push(ns / 1e3);
            let (ns, n) = timed(|| t.get(base, size, false, &mut out));
            check("sparse: get, nothing written", &sz, &label, n, 0);
            gc.push(ns / 1e3);
            write_pages(base, &tenth, rep as u8);
            let (ns, n) = timed(|| t.get(base, size, true, &mut out));
            check(
                "sparse: get+reset, 10% of touched written",
                &sz,
                &label,
                n,
                tenth.len(),
            );
            g10.push(ns / 1e3);
        }
        emit("sparse: get", &sz, &label, "µs", median(&g));
        emit("sparse: get+reset", &sz, &label, "µs", median(&gr));
        emit(
            "sparse: get, nothing written",
            &sz,
            &label,
            "µs",
            median(&gc),
        );
        let what = "sparse: get+reset, 10% of touched written";
        emit(what, &sz, &label, "µs", median(&g10));
    }
    let (ns, ()) = timed(|| t.free(base, size));
    emit("sparse: free", &sz, &label, "µs", ns / 1e3);
}

/// Per-call cost of gets on a small region, `iters` calls each.
fn per_call(t: &mut dyn Tracker, base: usize, size: usize, group: &str, sz: &str, iters: usize) {
    let mut out = [0usize; 4];
    t.get(base, size, true, &mut out);
    for _ in 0..iters / 10 {
        t.get(base, size, false, &mut out);
    }
    // `iters` gets of the region in a row, reported per call.
    let mut row = |t: &mut dyn Tracker, pattern: &str, reset: bool| {
        let (ns, ()) = timed(|| {
            for _ in 0..iters {
                t.get(base, size, reset, &mut out);
            }
        });
        emit(group, sz, pattern, "µs/call", ns / 1e3 / iters as f64);
    };
    row(t, "get, nothing written", false);
    row(t, "get+reset, nothing written", true);
    write_pages(base, &[0], 1);
    row(t, "get, 1 page written", false);
    let n = t.get(base, size, false, &mut out);
    check(group, sz, "get, 1 page written", n, 1);
}

/// The cost of one call on a 1-page region (the library's per-call overhead).
pub fn percall(t: &mut dyn Tracker, iters: usize) {
    let base = t.alloc(ps());
    per_call(t, base, ps(), "per call", "1 page, 1 region", iters);
    t.free(base, ps());
}

/// `count` regions of `size` bytes: alloc and free rate, gets on one.
pub fn regions(t: &mut dyn Tracker, count: usize, size: usize, iters: usize) {
    let sz = format!("{count} × {}", size_label(size));
    let (ns, bases) = timed(|| (0..count).map(|_| t.alloc(size)).collect::<Vec<_>>());
    emit(
        "many regions: alloc",
        &sz,
        "",
        "µs/region",
        ns / 1e3 / count as f64,
    );
    if t.tracks() {
        per_call(t, bases[count / 2], size, "per call", &sz, iters);
    }
    let (ns, ()) = timed(|| {
        for &b in &bases {
            t.free(b, size);
        }
    });
    emit(
        "many regions: free",
        &sz,
        "",
        "µs/region",
        ns / 1e3 / count as f64,
    );
}

/// Scattered writes that would split the region into more mappings than
/// `vm.max_map_count` allows with one `mprotect` per page.
pub fn mapcount(t: &mut dyn Tracker, size: usize, reps: usize) {
    let (sz, p) = (size_label(size), Pattern::Alternate);
    let label = p.label();
    let pages = size / ps();
    let idx = p.pages(pages);
    let base = t.alloc(size);
    write_all(base, pages, 1);
    t.reset(base, size);
    let mut out = vec![0usize; pages];
    let (mut w, mut gr, mut maps) = (vec![], vec![], 0);
    raw::FAULTS.store(0, std::sync::atomic::Ordering::Relaxed);
    for rep in 0..reps {
        let (ns, ()) = timed(|| write_pages(base, &idx, rep as u8 + 2));
        w.push(ns / idx.len() as f64);
        maps = maps.max(map_count());
        let (ns, n) = timed(|| t.get(base, size, true, &mut out));
        gr.push(ns / 1e3);
        // More than written is the price of blocks unprotected at the
        // limit (a note); a written page missing is a failure.
        let mut seen = vec![false; pages];
        out[..n].iter().for_each(|a| seen[(a - base) / ps()] = true);
        let lost = idx.iter().filter(|&&i| !seen[i]).count();
        if lost == 0 && n > idx.len() {
            note(
                "map-count: get+reset",
                &sz,
                &label,
                &format!(
                    "reported {n} pages for {} written ({} extra, every written page included)",
                    idx.len(),
                    n - idx.len()
                ),
            );
        }
        if lost > 0 {
            let e = raw::HANDLER_ERRNO.load(std::sync::atomic::Ordering::Acquire);
            let why = if e != 0 {
                format!(
                    "; mprotect failed with {} after {} faults (vm.max_map_count {})",
                    std::io::Error::from_raw_os_error(e),
                    raw::FAULTS.load(std::sync::atomic::Ordering::Relaxed),
                    max_map_count()
                )
            } else {
                String::new()
            };
            fail(
                "map-count: get+reset",
                &sz,
                &label,
                &format!(
                    "reported {n} pages, {lost} of the {} written missing{why}",
                    idx.len()
                ),
            );
            break;
        }
    }
    emit("map-count: write", &sz, &label, "ns/page", median(&w));
    emit("map-count: get+reset", &sz, &label, "µs", median(&gr));
    emit("map-count: mappings", &sz, &label, "VMAs", maps as f64);
    t.free(base, size);
}

/// Lines of `/proc/self/maps`.
fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// `vm.max_map_count`.
pub fn max_map_count() -> String {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Soft-dirty: cost of resetting half of one region while `others`
/// other watched regions each hold a written page (their bits must be
/// harvested before the process-wide `clear_refs`). `raw` times a bare
/// `clear_refs` with the same mappings instead.
pub fn softdirty(t: Option<&mut dyn Tracker>, others: usize, reps: usize) {
    let size = 16 << 20;
    let (sz, label) = (
        format!("{others} other regions"),
        "half of 16 MiB, 10% written",
    );
    let group = "soft-dirty: partial reset";
    let mut plain = raw::Plain;
    let raw = t.is_none();
    if raw && let Err(why) = raw::soft_dirty_works() {
        fail(group, &sz, label, &why);
        return;
    }
    let t: &mut dyn Tracker = match t {
        Some(t) => t,
        None => &mut plain,
    };
    let small = 4 * ps();
    let rest: Vec<usize> = (0..others).map(|_| t.alloc(small)).collect();
    let base = t.alloc(size);
    let idx = Pattern::Scattered(10.0).pages(size / ps());
    let mut times = vec![];
    for rep in 0..reps {
        for &b in &rest {
            write_pages(b, &[1], rep as u8);
        }
        write_pages(base, &idx, rep as u8);
        let (ns, ()) = timed(|| {
            if raw {
                raw::clear_refs().expect("clear_refs");
            } else {
                t.reset(base, size / 2);
            }
        });
        times.push(ns / 1e3);
    }
    if !raw {
        let mut out = vec![0usize; size / ps()];
        let n = t.get(base, size, false, &mut out);
        let want = idx.iter().filter(|&&p| p >= size / ps() / 2).count();
        check(group, &sz, label, n, want);
    }
    emit(group, &sz, label, "µs", median(&times));
    t.free(base, size);
    for b in rest {
        t.free(b, small);
    }
}
