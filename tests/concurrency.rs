//! No lost write under concurrency: writer threads (private pages, shared
//! hot pages with atomic adds, and kernel writes via read(2) after
//! ww_prepare_kernel_write) against a reader doing get-with-reset in both
//! forms plus reset of already-reported pages.
//!
//! Oracle: after the reader sees a page reported (with reset), it records
//! the page's content. A write after that moment changes the content and
//! must be reported by a later call. At the end, every page whose content
//! differs from what was recorded must be in the final report. Extra
//! reports are counted and printed, never failed.
//!
//! `WW_TORTURE_MS` sets the run length (default 1500 ms); use minutes for
//! soak runs.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use writewatch::{BackendKind, WrittenRange};

const PAGES: usize = 256;

fn run_for() -> Duration {
    let ms = std::env::var("WW_TORTURE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    Duration::from_millis(ms)
}

fn word(base: usize, page: usize) -> &'static AtomicU64 {
    // SAFETY: page-aligned, inside a live region for the whole test; all
    // accesses to these words are atomic.
    unsafe { &*((base + page * ps()) as *const AtomicU64) }
}

#[test]
fn no_lost_write_under_get_with_reset() {
    let kind = require_backend!();
    let base = writewatch::alloc(PAGES * ps()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = 3;
    let start = Arc::new(Barrier::new(writers + 2));
    let mut handles = vec![];
    // Writers 0..2 own pages p with p % 4 == w (handshake oracle: a page
    // is written once, marked pending, and not written again until the
    // reader has seen it reported, so a report lost to a reset stays
    // visible until the end). Pages with p % 4 == 3 are hot: everybody
    // adds to them atomically (content oracle).
    let pending: Arc<Vec<AtomicBool>> =
        Arc::new((0..PAGES).map(|_| AtomicBool::new(false)).collect());
    for w in 0..writers {
        let (stop, start, pending) = (stop.clone(), start.clone(), pending.clone());
        handles.push(std::thread::spawn(move || {
            start.wait();
            let mut seq = 1u64;
            let mut rng = w as u64 * 7919 + 1;
            while !stop.load(Ordering::Relaxed) {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let slot = (rng >> 33) as usize % (PAGES / 4 - 2);
                let own = slot * 4 + w;
                if !pending[own].load(Ordering::SeqCst) {
                    pending[own].store(true, Ordering::SeqCst);
                    word(base, own).store(seq, Ordering::SeqCst);
                }
                word(base, slot * 4 + 3).fetch_add(1, Ordering::Relaxed);
                seq += 1;
            }
        }));
    }
    // A kernel writer: read(2) from a pipe into the last 8 pages, which no
    // writer thread uses (content oracle).
    let kernel_pages = 8;
    let kbase = base + (PAGES - kernel_pages) * ps();
    let (kstop, kstart) = (stop.clone(), start.clone());
    let kernel_writer = std::thread::spawn(move || {
        let mut fds = [0; 2];
        // SAFETY: room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        kstart.wait();
        let mut seq = 1u64;
        let mut retries = 0u64;
        while !kstop.load(Ordering::Relaxed) {
            let page = (seq as usize) % kernel_pages;
            let dst = kbase + page * ps() + 64; // not the atomic word
            let bytes = seq.to_ne_bytes();
            // SAFETY: our pipe; our buffer.
            assert_eq!(unsafe { libc::write(fds[1], bytes.as_ptr().cast(), 8) }, 8);
            loop {
                writewatch::prepare_kernel_write(dst, 8).unwrap();
                // SAFETY: `dst` has 8 bytes inside the region.
                let n = unsafe { libc::read(fds[0], dst as *mut libc::c_void, 8) };
                if n == 8 {
                    break;
                }
                let err = std::io::Error::last_os_error();
                // On the mprotect and soft-dirty backends a reset racing
                // between prepare and the syscall re-protects the page: the
                // read fails with EFAULT without consuming the data, and the
                // documented remedy is to prepare again and retry.
                assert!(
                    n == -1
                        && err.raw_os_error() == Some(libc::EFAULT)
                        && kind != BackendKind::Written,
                    "read(2) into watched memory: {n} {err}"
                );
                retries += 1;
            }
            seq += 1;
        }
        // SAFETY: closing our pipe.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        (seq - 1, retries)
    });
    // Content snapshot of a page: the atomic word plus the kernel-written bytes.
    let content = |p: usize| -> (u64, u64) {
        // SAFETY: the kernel-written word at +64 may be written concurrently
        // by read(2); a torn read only makes the oracle more conservative.
        let k = unsafe { std::ptr::read_volatile((base + p * ps() + 64) as *const u64) };
        (word(base, p).load(Ordering::Relaxed), k)
    };
    let mut seen: Vec<(u64, u64)> = (0..PAGES).map(content).collect();
    let mut out = vec![0usize; PAGES];
    let mut ranges = vec![WrittenRange::default(); PAGES];
    let (mut calls, mut reported) = (0u64, 0u64);
    start.wait();
    let t0 = Instant::now();
    while t0.elapsed() < run_for() {
        calls += 1;
        // Alternate: full capacity, small capacity (prefix reset), runs.
        let pages: Vec<usize> = match calls % 3 {
            0 => {
                let n = writewatch::get_write_watch(true, base, PAGES * ps(), &mut out).unwrap();
                out[..n].iter().map(|a| (a - base) / ps()).collect()
            }
            1 => {
                let n =
                    writewatch::get_write_watch(true, base, PAGES * ps(), &mut out[..5]).unwrap();
                out[..n].iter().map(|a| (a - base) / ps()).collect()
            }
            _ => {
                let n = writewatch::get_written_ranges(true, base, PAGES * ps(), &mut ranges[..7])
                    .unwrap();
                ranges[..n]
                    .iter()
                    .flat_map(|r| (r.start..r.start + r.size).step_by(ps()))
                    .map(|a| (a - base) / ps())
                    .collect()
            }
        };
        reported += pages.len() as u64;
        for p in pages {
            seen[p] = content(p);
            pending[p].store(false, Ordering::SeqCst);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let (kernel_reads, kernel_retries) = kernel_writer.join().unwrap();
    let last = written(base, PAGES * ps(), false);
    let changed: Vec<usize> = (0..PAGES)
        .filter(|&p| content(p) != seen[p] || pending[p].load(Ordering::SeqCst))
        .collect();
    let lost: Vec<usize> = changed
        .iter()
        .copied()
        .filter(|p| !last.contains(p))
        .collect();
    let extra = last.iter().filter(|p| !changed.contains(p)).count();
    println!(
        "concurrency[{}]: {calls} get+reset calls, {reported} pages reported, final report {} pages, \
         {} changed since last seen, {extra} extra, {} lost; {kernel_reads} read(2) into watched \
         memory, {kernel_retries} retried after EFAULT",
        writewatch::active_backend().name(),
        last.len(),
        changed.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost writes on pages {lost:?}");
    // SAFETY: all threads are joined.
    unsafe { writewatch::free(base) }.unwrap();
}

#[test]
fn no_lost_write_with_other_regions_churning() {
    require_backend!();
    let pages = 64;
    let base = writewatch::alloc(pages * ps()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let other = writewatch::alloc(8 * ps()).unwrap();
                poke(other + 2 * ps(), 1);
                // SAFETY: pages 0..4 are not touched while read-only.
                unsafe { writewatch::protect(other, 4 * ps(), libc::PROT_READ) }.unwrap();
                writewatch::reset_write_watch(other, 8 * ps()).unwrap();
                // SAFETY: nothing references `other` any more.
                unsafe { writewatch::free(other) }.unwrap();
                n += 1;
            }
            n
        })
    };
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seq = 1;
            while !stop.load(Ordering::Relaxed) {
                word(base, seq as usize % pages).store(seq, Ordering::Relaxed);
                seq += 1;
            }
        })
    };
    let mut seen: Vec<u64> = (0..pages)
        .map(|p| word(base, p).load(Ordering::Relaxed))
        .collect();
    let t0 = Instant::now();
    while t0.elapsed() < run_for() / 2 {
        for p in written(base, pages * ps(), true) {
            seen[p] = word(base, p).load(Ordering::Relaxed);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let churned = churn.join().unwrap();
    writer.join().unwrap();
    let last = written(base, pages * ps(), false);
    let lost: Vec<usize> = (0..pages)
        .filter(|&p| word(base, p).load(Ordering::Relaxed) != seen[p] && !last.contains(&p))
        .collect();
    println!(
        "churn[{}]: {churned} alloc/protect/reset/free cycles beside",
        writewatch::active_backend().name()
    );
    assert!(lost.is_empty(), "lost writes on pages {lost:?}");
    // SAFETY: all threads are joined.
    unsafe { writewatch::free(base) }.unwrap();
}
