//! A model of the C contract (`include/writewatch.h`, shared/WIN32-SEMANTICS.md)
//! and an interpreter that runs the same sequence of operations against the
//! model and against the library's C ABI (`writewatch::capi::ww_*`),
//! comparing after every step.
//!
//! Shared by the property test `tests/model.rs` (ops from a seeded xorshift
//! PRNG) and the libFuzzer target `fuzz/fuzz_targets/api.rs` (ops decoded
//! from the fuzzer's bytes): both include this file with `#[path]`. It uses
//! only `writewatch` and `libc`, so it builds in either crate.
//!
//! ## The model
//!
//! Memory the model owns is a list of *arenas*: `ww_alloc` regions, plain
//! anonymous mappings (private, shared, memfd, THP-backed) each between two
//! PROT_NONE guard pages, and one page-aligned stretch of a `malloc`ed
//! buffer. Each arena page has a protection and, while it lies in a watched
//! region, a state:
//!
//! - `Clean`: not written since the last reset (or since watching began);
//! - `Written`: written by a store, a straddling store, `read(2)` after
//!   `ww_prepare_kernel_write`, or marked by `ww_prepare_kernel_write`;
//! - `Maybe`: either is allowed (pages that `ww_prepare_kernel_write` met
//!   while they were not read-write: the contract marks them, but a kernel
//!   write there would fail anyway, so backends differ).
//!
//! ## What must agree
//!
//! - Every call's return value / errno, exactly, including the order in
//!   which arguments are checked (docs/BAD-INPUT.md).
//! - Failed calls write no output (`*count`, the array, `*granularity`)
//!   and change no state; when nothing is reported the array is untouched.
//! - Reported pages: ascending, page aligned, inside the rounded range.
//!   Every `Written` page the call could have reported must be there (a
//!   *miss* always fails). With a full array, the returned entries are the
//!   lowest ones (nothing skipped below the last). Runs are maximal.
//! - Extra pages (reported but `Clean`) fail, except on the soft-dirty
//!   backend, which may over-report: there they are counted and printed.
//! - With `WW_FLAG_RESET` exactly the reported pages become `Clean`.
//! - `ww_get_stats`: `regions` and `watched_bytes` equal the model's;
//!   `scans`, `resets` and `pages_reported` move by exactly what the
//!   successful calls imply.

#![allow(dead_code)]

use std::ffi::{CStr, c_void};
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use writewatch::BackendKind;
use writewatch::capi::types::{WW_FLAG_RESET, ww_range, ww_stats};
use writewatch::capi::*;

/// Fills output arrays so that untouched entries can be recognised.
const SENTINEL: usize = 0xdead_beef;
/// At most this many arenas (besides the heap one) live at once.
const MAX_ARENAS: usize = 10;
/// Read-only file, read-write private file, PROT_NONE reservation.
const FOREIGN_PAGES: usize = 4;
/// Pipe capacity we rely on for `read(2)` ops (the default is 64 KiB).
const MAX_KERNEL_WRITE: usize = 60_000;

fn ps() -> usize {
    writewatch::page_size()
}

fn align_down(a: usize) -> usize {
    a & !(ps() - 1)
}

fn align_up(a: usize) -> Option<usize> {
    Some(a.checked_add(ps() - 1)? & !(ps() - 1))
}

/// The pages `[addr, addr+len)` touches, or `None` if that wraps.
fn covering(addr: usize, len: usize) -> Option<(usize, usize)> {
    Some((align_down(addr), align_up(addr.checked_add(len)?)?))
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_errno(e: i32) {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

fn ename(e: i32) -> String {
    if e == 0 {
        "0".into()
    } else {
        let name = match e {
            libc::EINVAL => "EINVAL",
            libc::EFAULT => "EFAULT",
            libc::EBUSY => "EBUSY",
            libc::ENOMEM => "ENOMEM",
            libc::ENOTSUP => "ENOTSUP",
            libc::EIO => "EIO",
            _ => "errno",
        };
        format!("{name}({e})")
    }
}

// ---------------------------------------------------------------------------
// Randomness: a seeded PRNG for the property test, fuzz bytes for libFuzzer
// ---------------------------------------------------------------------------

/// Where op fields come from. `None` ends the sequence (fuzz input used up).
pub trait Source {
    fn byte(&mut self) -> Option<u8>;

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.byte()?,
            self.byte()?,
            self.byte()?,
            self.byte()?,
        ]))
    }
}

/// xorshift64* (Vigna): small, fast, deterministic for a given seed.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // Never zero (a fixed point); mix so that nearby seeds diverge.
        XorShift((seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Source for XorShift {
    fn byte(&mut self) -> Option<u8> {
        Some((self.next_u64() >> 56) as u8)
    }
}

/// Fuzz input bytes, consumed front to back.
pub struct Bytes<'a>(pub &'a [u8]);

impl Source for Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

/// An address range chosen relative to the model's state when the op runs,
/// so a sequence replays the same way although addresses differ per run.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    /// Which kind of range (see [`Model::resolve`]), 0..20.
    pub mode: u8,
    pub a: u8,
    pub b: u8,
    pub page: u32,
    pub pages: u16,
    pub off: u16,
    pub tail: u16,
}

/// An address for `ww_free`/`ww_unwatch`.
#[derive(Clone, Copy, Debug)]
pub struct Pick {
    pub mode: u8,
    pub a: u8,
    pub off: u16,
}

#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// `ww_alloc` of a size drawn from `pages` (`short` bytes less).
    Alloc {
        pages: u32,
        short: u16,
    },
    /// `ww_alloc` of 0 or of sizes that cannot be mapped.
    AllocBad {
        which: u8,
    },
    Free {
        at: Pick,
    },
    /// A new arena: anonymous mapping between guard pages (`kind`: private,
    /// shared, memfd, THP), `prewrite` pages written before any watch.
    Map {
        pages: u32,
        kind: u8,
        prewrite: u8,
    },
    /// Unwatch an arena's regions, then unmap it.
    Unmap {
        a: u8,
    },
    Watch {
        at: Span,
    },
    Unwatch {
        at: Pick,
    },
    /// One byte.
    Write {
        a: u8,
        page: u32,
        off: u16,
    },
    /// Every `stride`-th page from `page`, `count` pages.
    Pattern {
        a: u8,
        page: u32,
        stride: u8,
        count: u16,
    },
    /// A 4-byte store across the boundary of `page` and `page + 1`.
    Straddle {
        a: u8,
        page: u32,
    },
    /// A load: must never count as a write.
    Read {
        a: u8,
        page: u32,
    },
    /// `ww_prepare_kernel_write`, then `read(2)` into the range if `read`.
    KernelWrite {
        at: Span,
        read: bool,
    },
    /// `ww_get_write_watch` (`runs` false) or `ww_get_written_ranges`,
    /// `bad` selects a bad pointer/flag/capacity (0..10 none).
    Get {
        at: Span,
        reset: bool,
        runs: bool,
        cap: u16,
        bad: u8,
    },
    Reset {
        at: Span,
    },
    Protect {
        at: Span,
        prot: u8,
    },
    HandleFault {
        a: u8,
        page: u32,
    },
    Init {
        raw: u8,
    },
    Misc {
        which: u8,
    },
}

fn span(s: &mut dyn Source, watch: bool) -> Option<Span> {
    let m = s.byte()?;
    let mode = if watch {
        if m < 170 { 10 + m % 4 } else { (m - 170) % 20 }
    } else if m < 180 {
        m % 8
    } else {
        8 + (m - 180) % 12
    };
    Some(Span {
        mode,
        a: s.byte()?,
        b: s.byte()?,
        page: s.u32()?,
        pages: s.u16()?,
        off: s.u16()?,
        tail: s.u16()?,
    })
}

fn pick(s: &mut dyn Source) -> Option<Pick> {
    Some(Pick {
        mode: s.byte()? % 8,
        a: s.byte()?,
        off: s.u16()?,
    })
}

/// Decodes one op; `None` when the source is used up.
pub fn gen_op(s: &mut dyn Source) -> Option<Op> {
    let k = s.byte()?;
    Some(match k {
        0..=11 => Op::Alloc {
            pages: s.u32()?,
            short: s.u16()?,
        },
        12..=13 => Op::AllocBad { which: s.byte()? },
        14..=21 => Op::Free { at: pick(s)? },
        22..=33 => Op::Map {
            pages: s.u32()?,
            kind: s.byte()?,
            prewrite: s.byte()?,
        },
        34..=37 => Op::Unmap { a: s.byte()? },
        38..=53 => Op::Watch { at: span(s, true)? },
        54..=61 => Op::Unwatch { at: pick(s)? },
        62..=103 => Op::Write {
            a: s.byte()?,
            page: s.u32()?,
            off: s.u16()?,
        },
        104..=111 => Op::Pattern {
            a: s.byte()?,
            page: s.u32()?,
            stride: s.byte()?,
            count: s.u16()?,
        },
        112..=119 => Op::Straddle {
            a: s.byte()?,
            page: s.u32()?,
        },
        120..=127 => Op::Read {
            a: s.byte()?,
            page: s.u32()?,
        },
        128..=137 => Op::KernelWrite {
            at: span(s, false)?,
            read: s.byte()? < 200,
        },
        138..=203 => Op::Get {
            at: span(s, false)?,
            reset: s.byte()? < 128,
            runs: s.byte()? < 80,
            cap: s.u16()?,
            bad: s.byte()?,
        },
        204..=217 => Op::Reset {
            at: span(s, false)?,
        },
        218..=233 => Op::Protect {
            at: span(s, false)?,
            prot: s.byte()?,
        },
        234..=239 => Op::HandleFault {
            a: s.byte()?,
            page: s.u32()?,
        },
        240..=245 => Op::Init { raw: s.byte()? },
        _ => Op::Misc { which: s.byte()? },
    })
}

/// Up to `max` ops (fewer if the source runs dry).
pub fn generate(s: &mut dyn Source, max: usize) -> Vec<Op> {
    std::iter::from_fn(|| gen_op(s)).take(max).collect()
}

// ---------------------------------------------------------------------------
// Model state
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Clean,
    Written,
    Maybe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Alloc,
    Private,
    Shared,
    Memfd,
    Thp,
    Heap,
}

impl Kind {
    fn watchable(self) -> bool {
        self != Kind::Alloc
    }
}

struct Arena {
    kind: Kind,
    /// First usable page (guards, if any, are just outside).
    base: usize,
    pages: usize,
    /// What to munmap when the model owns the mapping (0: not ours).
    map: usize,
    map_len: usize,
    prot: Vec<i32>,
    st: Vec<St>,
    _fd: Option<OwnedFd>,
}

impl Arena {
    fn end(&self) -> usize {
        self.base + self.pages * ps()
    }

    fn guards(&self) -> bool {
        self.kind != Kind::Heap
    }

    fn contains(&self, addr: usize) -> bool {
        self.base <= addr && addr < self.end()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    start: usize,
    end: usize,
    alloc: bool,
}

/// What a case did, for the summary line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub ops: u64,
    pub gets: u64,
    pub errors_checked: u64,
    pub pages_reported: u64,
    /// Pages reported that the model says are clean (soft-dirty only).
    pub extras: u64,
    /// Ops that had nothing to act on (no arena, page not writable, ...).
    pub skipped: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.ops += o.ops;
        self.gets += o.gets;
        self.errors_checked += o.errors_checked;
        self.pages_reported += o.pages_reported;
        self.extras += o.extras;
        self.skipped += o.skipped;
    }
}

/// A disagreement between the model and the library.
#[derive(Debug)]
pub struct Failure {
    pub op_index: usize,
    pub message: String,
}

impl Failure {
    /// The failure and the ops that led to it, one per line.
    pub fn report(&self, ops: &[Op]) -> String {
        let mut s = format!("op #{}: {}\nops:\n", self.op_index, self.message);
        for (i, op) in ops.iter().enumerate().take(self.op_index + 1) {
            s += &format!("  #{i:<4} {op:?}\n");
        }
        s
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op #{}: {}", self.op_index, self.message)
    }
}

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// The expected effect of one op on the counters.
#[derive(Default)]
struct Delta {
    scans: u64,
    resets: u64,
    pages: u64,
}

/// Ranges whose watch ended (free, unwatch), in this process, across
/// models: the fault handler of mprotect/soft-dirty may still claim a fault
/// there while the page is writable (an in-flight fault racing the
/// unwatch is retried, not fatal), and those tombstones are process-wide.
static ENDED: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

fn ended_push(start: usize, end: usize) {
    ENDED.lock().unwrap().push((start, end));
}

pub struct Model {
    backend: BackendKind,
    /// Extra pages are tolerated (counted) rather than failed.
    lenient: bool,
    arenas: Vec<Arena>,
    regions: Vec<Region>,
    /// Bases of freed allocations and unwatched ranges (never reused as
    /// watch targets: something else may be mapped there now).
    dead: Vec<usize>,
    heap: Vec<u8>,
    foreign: Vec<(usize, usize)>,
    _file: Option<OwnedFd>,
    pipe: [i32; 2],
    base_stats: ww_stats,
    last_stats: ww_stats,
    /// Bytes the model stored (anything else in an arena reads as 0):
    /// watching, protecting, resetting and scanning must never change them.
    bytes: std::collections::BTreeMap<usize, u8>,
    pub tally: Tally,
}

fn stats() -> ww_stats {
    let mut s = ww_stats::default();
    // SAFETY: `s` is a writable ww_stats.
    let rc = unsafe { ww_get_stats(&mut s) };
    assert_eq!(rc, 0, "ww_get_stats");
    s
}

fn mmap(len: usize, prot: i32, flags: i32, fd: i32) -> Option<usize> {
    // SAFETY: a fresh mapping at an address the kernel picks.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    (p != libc::MAP_FAILED).then_some(p as usize)
}

fn munmap(addr: usize, len: usize) {
    // SAFETY: only called on mappings the model made and no longer uses.
    unsafe { libc::munmap(addr as *mut c_void, len) };
}

fn mprotect(addr: usize, len: usize, prot: i32) {
    // SAFETY: only called on the model's own memory.
    unsafe { libc::mprotect(addr as *mut c_void, len, prot) };
}

impl Model {
    /// A model over a fresh library state. Commits the backend first (an
    /// alloc and a free), so `ww_init` calls can be checked.
    pub fn new() -> Result<Model, String> {
        let p = ww_alloc(ps());
        if p.is_null() {
            return Err(format!(
                "ww_alloc failed: {} (backend unavailable?)",
                ename(errno())
            ));
        }
        // SAFETY: our region, nothing references it.
        let rc = unsafe { ww_free(p) };
        if rc != 0 {
            return Err(format!("ww_free of the commit allocation: {}", ename(rc)));
        }
        let backend = writewatch::active_backend();
        let mut pipe = [0; 2];
        // SAFETY: `pipe` has room for two descriptors.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe2: {}", ename(errno())));
        }
        let mut heap = vec![0u8; 40 * ps()];
        let start = align_up(heap.as_mut_ptr() as usize).unwrap();
        let end = align_down(heap.as_ptr() as usize + heap.len());
        let hp = (end - start) / ps();
        let heap_arena = Arena {
            kind: Kind::Heap,
            base: start,
            pages: hp,
            map: 0,
            map_len: 0,
            prot: vec![libc::PROT_READ | libc::PROT_WRITE; hp],
            st: vec![St::Clean; hp],
            _fd: None,
        };
        let mut m = Model {
            backend,
            lenient: backend == BackendKind::SoftDirty,
            arenas: vec![heap_arena],
            regions: vec![],
            dead: vec![],
            heap,
            foreign: vec![],
            _file: None,
            pipe,
            base_stats: stats(),
            last_stats: stats(),
            bytes: Default::default(),
            tally: Tally::default(),
        };
        m.make_foreign()?;
        Ok(m)
    }

    /// Memory no contract function may accept: a file mapped read-only, the
    /// same file mapped read-write private, and a PROT_NONE reservation.
    fn make_foreign(&mut self) -> Check {
        let len = FOREIGN_PAGES * ps();
        let dir = std::env::temp_dir();
        let path = dir.join(format!("ww-model-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| format!("temp file {}: {e}", path.display()))?;
        let _ = std::fs::remove_file(&path);
        file.set_len(len as u64).map_err(|e| e.to_string())?;
        let fd = OwnedFd::from(file);
        let ro = mmap(len, libc::PROT_READ, libc::MAP_SHARED, fd.as_raw_fd()).ok_or("mmap ro")?;
        let rw = mmap(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            fd.as_raw_fd(),
        )
        .ok_or("mmap rw")?;
        let none = mmap(
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        )
        .ok_or("mmap none")?;
        self.foreign = vec![(ro, len), (rw, len), (none, len)];
        self._file = Some(fd);
        Ok(())
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    // -- lookups ------------------------------------------------------------

    fn region_of(&self, base: usize, size: usize) -> Option<Region> {
        let (s, e) = covering(base, size)?;
        self.regions
            .iter()
            .copied()
            .find(|r| r.start <= s && e <= r.end)
    }

    fn arena_at(&self, addr: usize) -> Option<usize> {
        self.arenas.iter().position(|a| a.contains(addr))
    }

    /// Arena index and page index of a usable page.
    fn page(&self, addr: usize) -> Option<(usize, usize)> {
        let i = self.arena_at(addr)?;
        Some((i, (addr - self.arenas[i].base) / ps()))
    }

    fn in_region(&self, addr: usize) -> bool {
        self.regions.iter().any(|r| r.start <= addr && addr < r.end)
    }

    fn st(&self, addr: usize) -> St {
        match self.page(addr) {
            Some((a, p)) => self.arenas[a].st[p],
            None => St::Clean,
        }
    }

    fn set_st(&mut self, addr: usize, st: St) {
        if let Some((a, p)) = self.page(addr) {
            self.arenas[a].st[p] = st;
        }
    }

    fn prot(&self, addr: usize) -> Option<i32> {
        self.page(addr).map(|(a, p)| self.arenas[a].prot[p])
    }

    fn writable(&self, addr: usize) -> bool {
        self.prot(addr)
            .is_some_and(|p| p & libc::PROT_WRITE != 0 && p & libc::PROT_READ != 0)
    }

    fn readable(&self, addr: usize) -> bool {
        self.prot(addr).is_some_and(|p| p & libc::PROT_READ != 0)
    }

    /// A store to `addr` happened: marks the page if it is watched.
    fn wrote(&mut self, addr: usize) {
        if self.in_region(addr) {
            self.set_st(addr, St::Written);
        }
    }

    fn arena_pick(&self, a: u8) -> Option<usize> {
        (!self.arenas.is_empty()).then(|| a as usize % self.arenas.len())
    }

    /// Prefers arenas that `ww_watch` could accept.
    fn watchable_pick(&self, a: u8) -> Option<usize> {
        let w: Vec<usize> = (0..self.arenas.len())
            .filter(|&i| self.arenas[i].kind.watchable())
            .collect();
        if w.is_empty() {
            self.arena_pick(a)
        } else {
            Some(w[a as usize % w.len()])
        }
    }

    /// `[base, base+size)` inside `[start, start + n pages)` per `s`.
    fn within(&self, s: &Span, start: usize, n: usize) -> (usize, usize) {
        let ps = ps();
        if s.off & 0x4000 != 0 {
            return (start, n * ps); // the whole thing
        }
        let first = s.page as usize % n;
        let np = 1 + s.pages as usize % (n - first);
        let o = if s.off & 0x8000 != 0 {
            s.off as usize % ps
        } else {
            0
        };
        let t = if s.tail & 0x8000 != 0 {
            s.tail as usize % ps
        } else {
            0
        };
        let size = (np * ps).saturating_sub(o + t).max(1);
        (start + first * ps + o, size)
    }

    fn special(&self, s: &Span, for_watch: bool) -> (usize, usize) {
        let ps = ps();
        let heap = self.heap.as_ptr() as usize | 1;
        let dead = if for_watch || self.dead.is_empty() {
            usize::MAX - 3 * ps
        } else {
            self.dead[s.b as usize % self.dead.len()]
        };
        let addrs = [
            0,
            1,
            ps,
            2 * ps + 5,
            usize::MAX,
            usize::MAX - ps + 1,
            align_down(usize::MAX),
            heap,
            dead,
            1 << 47,
        ];
        let base = addrs[s.a as usize % addrs.len()];
        let sizes = [
            0,
            1,
            ps,
            2 * ps + 3,
            usize::MAX,
            usize::MAX - base,
            (usize::MAX - base).wrapping_add(1),
            (s.tail as usize) << 12,
        ];
        (base, sizes[s.b as usize / 16 % sizes.len()])
    }

    /// The address range a span names right now.
    fn resolve(&self, s: &Span, for_watch: bool) -> (usize, usize) {
        let ps = ps();
        let nr = self.regions.len();
        let mut mode = s.mode;
        if nr == 0 && (mode <= 9 || (15..=18).contains(&mode)) {
            mode = 10;
        }
        if (10..=14).contains(&mode) && self.arenas.is_empty() {
            mode = 16;
        }
        match mode {
            0..=7 => {
                let r = self.regions[s.a as usize % nr];
                self.within(s, r.start, (r.end - r.start) / ps)
            }
            8 => {
                // From inside the region to one byte past its end.
                let r = self.regions[s.a as usize % nr];
                let n = (r.end - r.start) / ps;
                let base = r.start + (s.page as usize % n) * ps + s.off as usize % ps;
                (base, r.end - base + 1)
            }
            9 => {
                // Starting in the page before the region.
                let r = self.regions[s.a as usize % nr];
                let n = (r.end - r.start) / ps;
                (
                    r.start - ps + s.off as usize % ps,
                    (1 + s.pages as usize % n) * ps,
                )
            }
            10..=13 => {
                let i = if for_watch {
                    self.watchable_pick(s.a)
                } else {
                    self.arena_pick(s.a)
                };
                let a = &self.arenas[i.unwrap()];
                let (base, size) = self.within(s, a.base, a.pages);
                if for_watch && s.off & 0x2000 == 0 {
                    (align_down(base), size) // mostly aligned
                } else {
                    (base, size)
                }
            }
            14 => {
                // Pages of an arena and its guards.
                let a = &self.arenas[self.arena_pick(s.a).unwrap()];
                if !a.guards() {
                    return self.within(s, a.base, a.pages);
                }
                self.within(s, a.base - ps, a.pages + 2)
            }
            15 => {
                // From one region to another (possibly the same one).
                let r1 = self.regions[s.a as usize % nr];
                let r2 = self.regions[s.b as usize % nr];
                let (lo, hi) = if r1.start <= r2.start {
                    (r1, r2)
                } else {
                    (r2, r1)
                };
                let base = lo.start + s.off as usize % ps;
                (base, hi.end - base)
            }
            16 => self.special(s, for_watch),
            17 => {
                let r = self.regions[s.a as usize % nr];
                let (base, _) = self.within(s, r.start, (r.end - r.start) / ps);
                (base, 0)
            }
            18 => {
                let r = self.regions[s.a as usize % nr];
                let (base, _) = self.within(s, r.start, (r.end - r.start) / ps);
                (base, usize::MAX - s.tail as usize)
            }
            _ => {
                let (start, len) = self.foreign[s.a as usize % self.foreign.len()];
                self.within(s, start, len / ps)
            }
        }
    }

    fn resolve_pick(&self, p: &Pick) -> usize {
        let nr = self.regions.len();
        match p.mode {
            0..=3 if nr > 0 => self.regions[p.a as usize % nr].start,
            4 if nr > 0 => {
                let r = self.regions[p.a as usize % nr];
                r.start + 1 + p.off as usize % (r.end - r.start - 1)
            }
            5 if !self.dead.is_empty() => self.dead[p.a as usize % self.dead.len()],
            7 if !self.arenas.is_empty() => self.arenas[p.a as usize % self.arenas.len()].base,
            _ => [0, usize::MAX, ps(), self.heap.as_ptr() as usize][p.a as usize % 4],
        }
    }

    // -- the interpreter ----------------------------------------------------

    /// Runs one op on both sides and compares.
    pub fn step(&mut self, op: &Op) -> Check {
        self.tally.ops += 1;
        let mut delta = Delta::default();
        match *op {
            Op::Alloc { pages, short } => self.alloc(pages, short)?,
            Op::AllocBad { which } => self.alloc_bad(which)?,
            Op::Free { at } => self.free(&at)?,
            Op::Map {
                pages,
                kind,
                prewrite,
            } => self.map(pages, kind, prewrite)?,
            Op::Unmap { a } => self.unmap(a)?,
            Op::Watch { at } => self.watch(&at)?,
            Op::Unwatch { at } => self.unwatch(&at)?,
            Op::Write { a, page, off } => self.write(a, page, off),
            Op::Pattern {
                a,
                page,
                stride,
                count,
            } => self.pattern(a, page, stride, count),
            Op::Straddle { a, page } => self.straddle(a, page),
            Op::Read { a, page } => self.read(a, page)?,
            Op::KernelWrite { at, read } => self.kernel_write(&at, read)?,
            Op::Get {
                at,
                reset,
                runs,
                cap,
                bad,
            } => self.get(&at, reset, runs, cap, bad, &mut delta)?,
            Op::Reset { at } => self.reset(&at, &mut delta)?,
            Op::Protect { at, prot } => self.protect(&at, prot)?,
            Op::HandleFault { a, page } => self.handle_fault(a, page)?,
            Op::Init { raw } => self.init(raw)?,
            Op::Misc { which } => self.misc(which)?,
        }
        self.check_stats(&delta)
    }

    fn check_stats(&mut self, d: &Delta) -> Check {
        let s = stats();
        let (b, l) = (self.base_stats, self.last_stats);
        let regions = b.regions + self.regions.len() as u64;
        let bytes = b.watched_bytes
            + self
                .regions
                .iter()
                .map(|r| (r.end - r.start) as u64)
                .sum::<u64>();
        ensure!(
            s.regions == regions && s.watched_bytes == bytes,
            "stats: regions {} watched_bytes {}, model {regions} {bytes}",
            s.regions,
            s.watched_bytes
        );
        ensure!(
            s.scans - l.scans == d.scans
                && s.resets - l.resets == d.resets
                && s.pages_reported - l.pages_reported == d.pages,
            "stats moved by scans {} resets {} pages {}, expected {} {} {}",
            s.scans - l.scans,
            s.resets - l.resets,
            s.pages_reported - l.pages_reported,
            d.scans,
            d.resets,
            d.pages
        );
        self.last_stats = s;
        Ok(())
    }

    fn alloc(&mut self, pages: u32, short: u16) -> Check {
        let ps = ps();
        let sel = pages % 64;
        let n = match sel {
            0..=39 => 1 + pages as usize % 16,
            40..=55 => 1 + pages as usize % 96,
            56..=61 => 256 + pages as usize % 512,
            // Just over the written backend's dense limit (1 GiB): sparse.
            62 if !self.has_big() => (1 << 30) / ps + 1 + pages as usize % 64,
            _ => 1,
        };
        if self.arenas.len() > MAX_ARENAS {
            self.tally.skipped += 1;
            return Ok(());
        }
        let size = (n * ps - short as usize % ps).max(1);
        set_errno(0);
        let p = ww_alloc(size) as usize;
        ensure!(p != 0, "ww_alloc({size:#x}) failed: {}", ename(errno()));
        ensure!(p % ps == 0, "ww_alloc returned unaligned {p:#x}");
        ensure!(
            self.arena_at(p).is_none() && !self.in_region(p),
            "ww_alloc returned {p:#x}, inside memory the model owns"
        );
        self.arenas.push(Arena {
            kind: Kind::Alloc,
            base: p,
            pages: n,
            map: 0,
            map_len: 0,
            prot: vec![libc::PROT_READ | libc::PROT_WRITE; n],
            st: vec![St::Clean; n],
            _fd: None,
        });
        self.regions.push(Region {
            start: p,
            end: p + n * ps,
            alloc: true,
        });
        self.dead.retain(|&d| d != p);
        Ok(())
    }

    fn has_big(&self) -> bool {
        self.arenas.iter().any(|a| a.pages > (1 << 30) / ps())
    }

    fn alloc_bad(&mut self, which: u8) -> Check {
        let ps = ps();
        let sizes = [0, usize::MAX, usize::MAX - ps + 2, usize::MAX / 2, 1 << 50];
        let size = sizes[which as usize % sizes.len()];
        let want = if size == 0 {
            libc::EINVAL
        } else {
            libc::ENOMEM
        };
        set_errno(0);
        let p = ww_alloc(size);
        let e = errno();
        ensure!(
            p.is_null() && e == want,
            "ww_alloc({size:#x}) = {p:?} errno {}, expected NULL {}",
            ename(e),
            ename(want)
        );
        self.tally.errors_checked += 1;
        Ok(())
    }

    fn free(&mut self, at: &Pick) -> Check {
        let addr = self.resolve_pick(at);
        let ri = self.regions.iter().position(|r| r.alloc && r.start == addr);
        // SAFETY: only model-owned regions can be freed (anything else must
        // be rejected), and nothing references them afterwards.
        let rc = unsafe { ww_free(addr as *mut c_void) };
        match ri {
            Some(i) => {
                ensure!(rc == 0, "ww_free({addr:#x}) = {}, expected 0", ename(rc));
                let r = self.regions.remove(i);
                ended_push(r.start, r.end);
                let a = self.arena_at(addr).unwrap();
                let gone = self.arenas.remove(a);
                self.forget(gone.base, gone.end());
                self.dead.push(addr);
            }
            None => {
                ensure!(
                    rc == libc::EINVAL,
                    "ww_free({addr:#x}) = {}, expected EINVAL",
                    ename(rc)
                );
                self.tally.errors_checked += 1;
            }
        }
        Ok(())
    }

    fn map(&mut self, pages: u32, kind: u8, prewrite: u8) -> Check {
        if self.arenas.len() > MAX_ARENAS {
            self.tally.skipped += 1;
            return Ok(());
        }
        let ps = ps();
        let kind = match kind % 16 {
            0..=7 => Kind::Private,
            8..=11 => Kind::Shared,
            12..=14 => Kind::Memfd,
            _ => Kind::Thp,
        };
        let n = match (kind, pages % 64) {
            // Two huge pages' worth, so one aligned 2 MiB block is inside.
            (Kind::Thp, _) => 1024 + pages as usize % 64,
            (_, 0..=47) => 1 + pages as usize % 24,
            (_, 48..=60) => 1 + pages as usize % 600,
            (Kind::Private | Kind::Shared, 61) if !self.has_big() => {
                (1 << 30) / ps + 1 + pages as usize % 64
            }
            _ => 2,
        };
        let len = (n + 2) * ps;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let mut fd = None;
        let map = match kind {
            Kind::Private | Kind::Thp => mmap(
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
            ),
            Kind::Shared => mmap(
                len,
                libc::PROT_NONE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
            ),
            _ => {
                // SAFETY: a NUL-terminated name; memfd_create returns a new fd or -1.
                let raw = unsafe { libc::memfd_create(c"ww-model".as_ptr(), libc::MFD_CLOEXEC) };
                ensure!(raw >= 0, "memfd_create: {}", ename(errno()));
                // SAFETY: the descriptor was just returned to us.
                let f = unsafe { OwnedFd::from_raw_fd(raw) };
                // SAFETY: our own descriptor.
                let rc = unsafe { libc::ftruncate(f.as_raw_fd(), len as libc::off_t) };
                ensure!(rc == 0, "ftruncate: {}", ename(errno()));
                let m = mmap(len, libc::PROT_NONE, libc::MAP_SHARED, f.as_raw_fd());
                fd = Some(f);
                m
            }
        };
        let map = map.ok_or_else(|| format!("mmap {len:#x}: {}", ename(errno())))?;
        let base = map + ps;
        mprotect(base, n * ps, rw);
        if kind == Kind::Thp {
            // SAFETY: advice on our own fresh mapping; it does not discard data.
            unsafe { libc::madvise(base as *mut c_void, n * ps, libc::MADV_HUGEPAGE) };
        }
        // Writes before any watch must never be reported.
        let pre = if kind == Kind::Thp {
            n
        } else {
            (prewrite as usize % 8).min(n)
        };
        for i in 0..pre {
            let p = if kind == Kind::Thp { i } else { (i * 7) % n };
            // SAFETY: a page of our fresh read-write mapping.
            unsafe { std::ptr::write_volatile((base + p * ps) as *mut u8, 0x5a) };
            self.bytes.insert(base + p * ps, 0x5a);
        }
        self.arenas.push(Arena {
            kind,
            base,
            pages: n,
            map,
            map_len: len,
            prot: vec![rw; n],
            st: vec![St::Clean; n],
            _fd: fd,
        });
        Ok(())
    }

    fn unmap(&mut self, a: u8) -> Check {
        let mine: Vec<usize> = (0..self.arenas.len())
            .filter(|&i| self.arenas[i].map != 0)
            .collect();
        if mine.is_empty() {
            self.tally.skipped += 1;
            return Ok(());
        }
        let i = mine[a as usize % mine.len()];
        let (lo, hi) = (self.arenas[i].base, self.arenas[i].end());
        let inside: Vec<Region> = self
            .regions
            .iter()
            .copied()
            .filter(|r| lo <= r.start && r.end <= hi)
            .collect();
        for r in inside {
            let rc = ww_unwatch(r.start as *mut c_void);
            ensure!(
                rc == 0,
                "ww_unwatch({:#x}) before unmap = {}",
                r.start,
                ename(rc)
            );
            self.regions.retain(|x| *x != r);
            self.dead.push(r.start);
            ended_push(r.start, r.end);
        }
        let arena = self.arenas.remove(i);
        self.forget(arena.base, arena.end());
        munmap(arena.map, arena.map_len);
        Ok(())
    }

    fn watch(&mut self, at: &Span) -> Check {
        let ps = ps();
        let (base, size) = self.resolve(at, true);
        let want = self.expect_watch(base, size);
        // SAFETY: the model keeps every arena mapped until it unwatches it;
        // any other range must be rejected.
        let rc = unsafe { ww_watch(base as *mut c_void, size) };
        ensure!(
            rc == want,
            "ww_watch({base:#x}, {size:#x}) = {}, expected {}",
            ename(rc),
            ename(want)
        );
        if rc != 0 {
            self.tally.errors_checked += 1;
            return Ok(());
        }
        let (s, e) = covering(base, size).unwrap();
        for p in (s..e).step_by(ps) {
            self.set_st(p, St::Clean);
        }
        self.regions.push(Region {
            start: s,
            end: e,
            alloc: false,
        });
        Ok(())
    }

    fn expect_watch(&self, base: usize, size: usize) -> i32 {
        if size == 0 || base == 0 || base % ps() != 0 {
            return libc::EINVAL;
        }
        let Some((s, e)) = covering(base, size) else {
            return libc::EINVAL;
        };
        if self.regions.iter().any(|r| r.start < e && s < r.end) {
            return libc::EBUSY;
        }
        let ok = (s..e).step_by(ps()).all(|p| {
            self.arena_at(p)
                .is_some_and(|i| self.arenas[i].kind.watchable() && self.writable(p))
        });
        if ok { 0 } else { libc::EINVAL }
    }

    fn unwatch(&mut self, at: &Pick) -> Check {
        let addr = self.resolve_pick(at);
        let ri = self
            .regions
            .iter()
            .position(|r| !r.alloc && r.start == addr);
        let rc = ww_unwatch(addr as *mut c_void);
        match ri {
            Some(i) => {
                ensure!(rc == 0, "ww_unwatch({addr:#x}) = {}, expected 0", ename(rc));
                let r = self.regions.remove(i);
                self.dead.push(addr);
                ended_push(r.start, r.end);
                self.unwatched(r);
            }
            None => {
                ensure!(
                    rc == libc::EINVAL,
                    "ww_unwatch({addr:#x}) = {}, expected EINVAL",
                    ename(rc)
                );
                self.tally.errors_checked += 1;
            }
        }
        Ok(())
    }

    /// After an unwatch the model restores read-write access itself, so
    /// the pages' protection is known whatever the backend left behind.
    fn unwatched(&mut self, r: Region) {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        if (r.start..r.end)
            .step_by(ps())
            .any(|p| self.prot(p) != Some(rw))
        {
            mprotect(r.start, r.end - r.start, rw);
            for p in (r.start..r.end).step_by(ps()) {
                if let Some((a, i)) = self.page(p) {
                    self.arenas[a].prot[i] = rw;
                }
            }
        }
    }

    /// Address of page `page` (mod size) of arena `a`.
    fn target(&self, a: u8, page: u32) -> Option<(usize, usize)> {
        let i = self.arena_pick(a)?;
        let ar = &self.arenas[i];
        let addr = ar.base + (page as usize % ar.pages) * ps();
        Some((i, addr))
    }

    fn write(&mut self, a: u8, page: u32, off: u16) {
        match self.target(a, page) {
            Some((_, addr)) if self.writable(addr) => {
                let at = addr + off as usize % ps();
                // SAFETY: a read-write page of a model arena.
                unsafe { std::ptr::write_volatile(at as *mut u8, off as u8) };
                self.bytes.insert(at, off as u8);
                self.wrote(addr);
            }
            _ => self.tally.skipped += 1,
        }
    }

    fn pattern(&mut self, a: u8, page: u32, stride: u8, count: u16) {
        let Some(i) = self.arena_pick(a) else {
            self.tally.skipped += 1;
            return;
        };
        let (base, n) = (self.arenas[i].base, self.arenas[i].pages);
        let stride = 1 + stride as usize % 4;
        let mut p = page as usize % n;
        for _ in 0..1 + count as usize % 600 {
            if p >= n {
                break;
            }
            let addr = base + p * ps();
            if self.writable(addr) {
                // SAFETY: a read-write page of a model arena.
                unsafe { std::ptr::write_volatile(addr as *mut u8, p as u8) };
                self.bytes.insert(addr, p as u8);
                self.wrote(addr);
            }
            p += stride;
        }
    }

    fn straddle(&mut self, a: u8, page: u32) {
        let ps = ps();
        match self.target(a, page) {
            Some((i, addr))
                if addr + ps < self.arenas[i].end()
                    && self.writable(addr)
                    && self.writable(addr + ps) =>
            {
                let at = addr + ps - 2;
                // SAFETY: four bytes across two read-write pages of one arena.
                unsafe { std::ptr::write_unaligned(at as *mut u32, 0xa5a5_a5a5) };
                for i in 0..4 {
                    self.bytes.insert(at + i, 0xa5);
                }
                std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
                self.wrote(addr);
                self.wrote(addr + ps);
            }
            _ => self.tally.skipped += 1,
        }
    }

    /// A load, checked against what the model stored there.
    fn read(&mut self, a: u8, page: u32) -> Check {
        match self.target(a, page) {
            Some((_, addr)) if self.readable(addr) => {
                // Mostly a byte the model wrote, else anywhere in the page.
                let at = match self.bytes.range(addr..addr + ps()).nth(page as usize >> 24) {
                    Some((&at, _)) => at,
                    None => addr + (page as usize >> 12) % ps(),
                };
                // SAFETY: a readable page of a model arena.
                let got = unsafe { std::ptr::read_volatile(at as *const u8) };
                let want = self.bytes.get(&at).copied().unwrap_or(0);
                ensure!(
                    got == want,
                    "memory changed: {} holds {got:#x}, the last store put {want:#x}",
                    self.describe(&[at])
                );
            }
            _ => self.tally.skipped += 1,
        }
        Ok(())
    }

    /// Forgets the stored bytes of `[lo, hi)` (memory unmapped).
    fn forget(&mut self, lo: usize, hi: usize) {
        let keys: Vec<usize> = self.bytes.range(lo..hi).map(|(&k, _)| k).collect();
        for k in keys {
            self.bytes.remove(&k);
        }
    }

    fn kernel_write(&mut self, at: &Span, read: bool) -> Check {
        let ps = ps();
        let (addr, mut len) = self.resolve(at, false);
        if len > 1 << 20 && covering(addr, len).is_some() {
            // Marking populates every page: keep the cost of a case small.
            len = 1 << 20;
        }
        let rc = ww_prepare_kernel_write(addr as *mut c_void, len);
        let cover = covering(addr, len);
        let want = if len != 0 && cover.is_none() {
            libc::EINVAL
        } else {
            0
        };
        ensure!(
            rc == want,
            "ww_prepare_kernel_write({addr:#x}, {len:#x}) = {}, expected {}",
            ename(rc),
            ename(want)
        );
        if rc != 0 {
            self.tally.errors_checked += 1;
            return Ok(());
        }
        let Some((s, e)) = cover.filter(|_| len != 0) else {
            return Ok(());
        };
        // Every watched page of the range reads as written from now on
        // (pages that are not read-write: either way).
        for r in self.regions.clone() {
            for p in (s.max(r.start)..e.min(r.end)).step_by(ps) {
                let st = if self.writable(p) {
                    St::Written
                } else {
                    St::Maybe
                };
                if self.st(p) != St::Written {
                    self.set_st(p, st);
                }
            }
        }
        let one_arena = self.arena_at(s).is_some_and(|i| e <= self.arenas[i].end());
        if !read
            || len > MAX_KERNEL_WRITE
            || !one_arena
            || !(s..e).step_by(ps).all(|p| self.writable(p))
        {
            return Ok(());
        }
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        let mut done = 0;
        while done < len {
            // SAFETY: our pipe; `data` is readable for its length.
            let n = unsafe {
                libc::write(
                    self.pipe[1],
                    data[done..].as_ptr().cast(),
                    (len - done).min(16 * 1024),
                )
            };
            ensure!(n > 0, "write(pipe): {}", ename(errno()));
            // SAFETY: `[addr+done, addr+len)` is read-write memory of one
            // arena (checked above); the kernel writes at most `n` bytes.
            let r = unsafe { libc::read(self.pipe[0], (addr + done) as *mut c_void, n as usize) };
            ensure!(
                r == n,
                "read(2) into {:#x} after ww_prepare_kernel_write: {r} ({})",
                addr + done,
                ename(errno())
            );
            done += n as usize;
        }
        for (i, b) in data.iter().enumerate() {
            self.bytes.insert(addr + i, *b);
        }
        for p in (s..e).step_by(ps) {
            self.wrote(p);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn get(
        &mut self,
        at: &Span,
        reset: bool,
        runs: bool,
        cap: u16,
        bad: u8,
        d: &mut Delta,
    ) -> Check {
        let ps = ps();
        let (base, size) = self.resolve(at, false);
        let cap = match cap % 16 {
            0..=3 => 1,
            4..=9 => 1 + cap as usize % 8,
            10..=14 => 1 + cap as usize % 700,
            _ => 1 + cap as usize,
        };
        let mut flags = if reset { WW_FLAG_RESET } else { 0 };
        let bad = bad % 32;
        let (mut null_count, mut null_gran, mut null_out, mut cap) = (false, false, false, cap);
        match bad {
            20 | 21 => null_count = true,
            22 if !runs => null_gran = true,
            23 | 24 => null_out = true,
            25 | 26 => cap = 0,
            27 => {
                null_out = true;
                cap = 0;
            }
            28 | 29 => flags |= 1 << (1 + at.tail % 31),
            30 => flags = u32::MAX,
            _ => {}
        }
        // The contract's order: pointers it must write through, then the
        // scalars, then the array, then the range.
        let want = if null_count || null_gran {
            libc::EFAULT
        } else if cap == 0 || size == 0 || flags & !WW_FLAG_RESET != 0 {
            libc::EINVAL
        } else if null_out {
            libc::EFAULT
        } else if self.region_of(base, size).is_none() {
            libc::EINVAL
        } else {
            0
        };

        let mut out = vec![SENTINEL; cap];
        let mut rout = vec![
            ww_range {
                start: SENTINEL as *mut c_void,
                size: SENTINEL,
            };
            cap
        ];
        let mut count: usize = cap;
        let mut gran: u32 = 0xdead;
        let count_p: *mut usize = if null_count {
            std::ptr::null_mut()
        } else {
            &mut count
        };
        let rc = if runs {
            let out_p = if null_out {
                std::ptr::null_mut()
            } else {
                rout.as_mut_ptr()
            };
            // SAFETY: non-NULL pointers are valid; `rout` has `cap` entries.
            unsafe { ww_get_written_ranges(flags, base as *mut c_void, size, out_p, count_p) }
        } else {
            let out_p: *mut *mut c_void = if null_out {
                std::ptr::null_mut()
            } else {
                out.as_mut_ptr().cast()
            };
            let gran_p: *mut u32 = if null_gran {
                std::ptr::null_mut()
            } else {
                &mut gran
            };
            // SAFETY: non-NULL pointers are valid; `out` has `cap` entries.
            unsafe { ww_get_write_watch(flags, base as *mut c_void, size, out_p, count_p, gran_p) }
        };
        let call = format!(
            "{}(flags {flags:#x}, {base:#x}, {size:#x}, cap {cap}{}{}{})",
            if runs {
                "ww_get_written_ranges"
            } else {
                "ww_get_write_watch"
            },
            if null_count { ", count NULL" } else { "" },
            if null_gran { ", granularity NULL" } else { "" },
            if null_out { ", array NULL" } else { "" },
        );
        ensure!(
            rc == want,
            "{call} = {}, expected {}",
            ename(rc),
            ename(want)
        );
        let untouched = out.iter().all(|&v| v == SENTINEL)
            && rout
                .iter()
                .all(|r| r.start as usize == SENTINEL && r.size == SENTINEL);
        if rc != 0 {
            ensure!(
                (null_count || count == cap) && gran == 0xdead && untouched,
                "{call} failed with {} but wrote its outputs (count {count})",
                ename(rc)
            );
            self.tally.errors_checked += 1;
            return Ok(());
        }
        self.tally.gets += 1;
        if !runs {
            ensure!(
                gran as usize == ps,
                "{call}: granularity {gran}, expected {ps}"
            );
        }
        let n = count;
        ensure!(n <= cap, "{call}: count {n} > capacity {cap}");
        if n == 0 {
            ensure!(
                untouched,
                "{call}: nothing reported but the array was written"
            );
        }
        let (s, e) = covering(base, size).unwrap();
        // The reported pages, checked for shape on the way.
        let mut pages: Vec<usize> = vec![];
        let mut last_end = None;
        if runs {
            for (k, r) in rout[..n].iter().enumerate() {
                let (rs, rl) = (r.start as usize, r.size);
                ensure!(
                    rs % ps == 0 && rl > 0 && rl % ps == 0 && s <= rs && rs + rl <= e,
                    "{call}: run #{k} {rs:#x}+{rl:#x} is not whole pages inside {s:#x}..{e:#x}"
                );
                if let Some(le) = last_end {
                    ensure!(
                        rs > le,
                        "{call}: run #{k} at {rs:#x} not after the previous end {le:#x} (adjacent runs must merge)"
                    );
                }
                last_end = Some(rs + rl);
                pages.extend((rs..rs + rl).step_by(ps));
            }
        } else {
            for (k, &a) in out[..n].iter().enumerate() {
                ensure!(
                    a % ps == 0 && s <= a && a < e,
                    "{call}: address #{k} {a:#x} is not a page start inside {s:#x}..{e:#x}"
                );
                if let Some(&prev) = pages.last() {
                    ensure!(a > prev, "{call}: {a:#x} after {prev:#x}: not ascending");
                }
                pages.push(a);
            }
        }
        // With a full array the call may stop early: only pages below the
        // last reported one (runs: below the last run's end) must be there.
        let full = n == cap.min((e - s) / ps);
        let limit = match (full, pages.last()) {
            (true, Some(&last)) => {
                if runs {
                    last_end.unwrap()
                } else {
                    last + ps
                }
            }
            _ => e,
        };
        let reported: std::collections::BTreeSet<usize> = pages.iter().copied().collect();
        let missed: Vec<usize> = (s..limit)
            .step_by(ps)
            .filter(|p| self.st(*p) == St::Written && !reported.contains(p))
            .collect();
        ensure!(
            missed.is_empty(),
            "{call}: MISSED written pages {} (reported {})",
            self.describe(&missed),
            self.describe(&pages)
        );
        if runs && full {
            if let Some(le) = last_end.filter(|&le| le < e) {
                ensure!(
                    self.st(le) != St::Written,
                    "{call}: last run ends at {le:#x} but that page is written too (runs must be maximal)"
                );
            }
        }
        let extras: Vec<usize> = pages
            .iter()
            .copied()
            .filter(|p| self.st(*p) == St::Clean)
            .collect();
        if !extras.is_empty() {
            ensure!(
                self.lenient,
                "{call}: reported pages never written: {} (all reported: {})",
                self.describe(&extras),
                self.describe(&pages)
            );
            self.tally.extras += extras.len() as u64;
        }
        if reset {
            for &p in &pages {
                self.set_st(p, St::Clean);
            }
        }
        self.tally.pages_reported += pages.len() as u64;
        d.scans = 1;
        d.resets = reset as u64;
        d.pages = pages.len() as u64;
        Ok(())
    }

    /// Pages as "arena#i+page" for messages.
    fn describe(&self, pages: &[usize]) -> String {
        let v: Vec<String> = pages
            .iter()
            .take(24)
            .map(|&p| match self.page(p) {
                Some((a, i)) => format!("{:?}#{a}+{i}", self.arenas[a].kind),
                None => format!("{p:#x}"),
            })
            .collect();
        let more = pages.len().saturating_sub(24);
        if more > 0 {
            format!("[{} ... and {more} more]", v.join(", "))
        } else {
            format!("[{}]", v.join(", "))
        }
    }

    fn reset(&mut self, at: &Span, d: &mut Delta) -> Check {
        let ps = ps();
        let (base, size) = self.resolve(at, false);
        let region = if size == 0 {
            None
        } else {
            self.region_of(base, size)
        };
        let want = if region.is_some() { 0 } else { libc::EINVAL };
        let rc = ww_reset_write_watch(base as *mut c_void, size);
        ensure!(
            rc == want,
            "ww_reset_write_watch({base:#x}, {size:#x}) = {}, expected {}",
            ename(rc),
            ename(want)
        );
        if rc != 0 {
            self.tally.errors_checked += 1;
            return Ok(());
        }
        let (s, e) = covering(base, size).unwrap();
        for p in (s..e).step_by(ps) {
            self.set_st(p, St::Clean);
        }
        d.resets = 1;
        Ok(())
    }

    fn protect(&mut self, at: &Span, prot: u8) -> Check {
        let ps = ps();
        let (base, size) = self.resolve(at, false);
        let (r, w, x) = (libc::PROT_READ, libc::PROT_WRITE, libc::PROT_EXEC);
        let table = [
            r | w,
            r | w,
            r,
            r,
            libc::PROT_NONE,
            r | x,
            r | w | x,
            x,
            w,           // write without read: EINVAL
            w | x,       // likewise
            0x8,         // unknown bit
            0x0100_0000, // PROT_GROWSDOWN: not ours to pass
            -1,
        ];
        let prot = table[prot as usize % table.len()];
        let valid = prot & !(r | w | x) == 0 && (prot & w == 0 || prot & r != 0);
        let want = if valid && size != 0 && self.region_of(base, size).is_some() {
            0
        } else {
            libc::EINVAL
        };
        // SAFETY: the model never touches pages its protection forbids.
        let rc = unsafe { ww_protect(base as *mut c_void, size, prot) };
        ensure!(
            rc == want,
            "ww_protect({base:#x}, {size:#x}, {prot:#x}) = {}, expected {}",
            ename(rc),
            ename(want)
        );
        if rc != 0 {
            self.tally.errors_checked += 1;
            return Ok(());
        }
        let (s, e) = covering(base, size).unwrap();
        for p in (s..e).step_by(ps) {
            if let Some((a, i)) = self.page(p) {
                self.arenas[a].prot[i] = prot;
            }
        }
        Ok(())
    }

    fn handle_fault(&mut self, a: u8, page: u32) -> Check {
        let addr = match self.target(a, page) {
            Some((_, addr)) => addr + (page as usize >> 20) % ps(),
            None => 0,
        };
        let rc = ww_handle_fault(addr as *mut c_void);
        let handler_backend =
            matches!(self.backend, BackendKind::Mprotect | BackendKind::SoftDirty);
        let recently_ended = ENDED
            .lock()
            .unwrap()
            .iter()
            .any(|&(s, e)| s <= addr && addr < e);
        let may = self.writable(addr)
            && (self.in_region(addr)
                || (handler_backend && recently_ended && !self.in_region(addr)));
        ensure!(
            rc == 0 || (rc == 1 && may),
            "ww_handle_fault({addr:#x}) = {rc}, but the page is {}",
            if self.in_region(addr) {
                "not read-write"
            } else {
                "not watched"
            }
        );
        // 1 means "resolved, retry the write": the mprotect backend marks
        // the page written now; soft-dirty (outside a gap) leaves it to the
        // retried write's kernel bit, which this call does not make. So the
        // page may or may not be reported from here on.
        if rc == 1 && self.in_region(addr) && self.st(align_down(addr)) != St::Written {
            self.set_st(align_down(addr), St::Maybe);
        }
        Ok(())
    }

    fn init(&mut self, raw: u8) -> Check {
        let values = [0u32, 1, 2, 3, 4, 5, 0x7fff_ffff, u32::MAX];
        let v = values[raw as usize % values.len()];
        let active = self.backend as u32;
        let want = if v > 3 {
            libc::EINVAL
        } else if v == 0 || v == active {
            0
        } else {
            libc::EBUSY
        };
        let rc = ww_init(v);
        ensure!(
            rc == want,
            "ww_init({v}) after first use = {}, expected {}",
            ename(rc),
            ename(want)
        );
        ensure!(
            ww_active_backend() == active,
            "ww_init({v}) changed the active backend"
        );
        Ok(())
    }

    fn misc(&mut self, which: u8) -> Check {
        match which % 4 {
            0 => {
                let v = which as u32 / 4 % 6;
                let p = ww_backend_name(v);
                let want = BackendKind::from_raw(v).map(|k| k.name());
                // SAFETY: non-NULL results are static NUL-terminated strings.
                let got = (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) });
                ensure!(
                    got.map(|c| c.to_str().unwrap()) == want,
                    "ww_backend_name({v}) = {got:?}, expected {want:?}"
                );
            }
            1 => {
                let bits = ww_available_backends();
                ensure!(
                    bits & (1 << self.backend as u32) != 0 && bits & 1 == 0 && bits >> 4 == 0,
                    "ww_available_backends() = {bits:#x} with {:?} active",
                    self.backend
                );
            }
            2 => {
                // SAFETY: NULL must be rejected without a write.
                let rc = unsafe { ww_get_stats(std::ptr::null_mut()) };
                ensure!(
                    rc == libc::EFAULT,
                    "ww_get_stats(NULL) = {}, expected EFAULT",
                    ename(rc)
                );
                self.tally.errors_checked += 1;
            }
            _ => {
                // SAFETY: a static NUL-terminated string.
                let v = unsafe { CStr::from_ptr(ww_version()) };
                ensure!(
                    v.to_bytes() == env!("CARGO_PKG_VERSION").as_bytes()
                        || v.to_str().is_ok_and(|s| s.split('.').count() == 3),
                    "ww_version() = {v:?}"
                );
            }
        }
        Ok(())
    }

    /// Final comparison over every region, then teardown; the library must
    /// be back where it started.
    pub fn finish(mut self) -> Result<Tally, String> {
        for r in self.regions.clone() {
            let (np, ps) = ((r.end - r.start) / ps(), ps());
            let mut out = vec![SENTINEL; np];
            let mut count = np;
            let mut gran = 0;
            // SAFETY: valid pointers; `out` has `np` entries.
            let rc = unsafe {
                ww_get_write_watch(
                    0,
                    r.start as *mut c_void,
                    r.end - r.start,
                    out.as_mut_ptr().cast(),
                    &mut count,
                    &mut gran,
                )
            };
            ensure!(rc == 0, "final get on {:#x}: {}", r.start, ename(rc));
            let got: std::collections::BTreeSet<usize> = out[..count].iter().copied().collect();
            let missed: Vec<usize> = (r.start..r.end)
                .step_by(ps)
                .filter(|p| self.st(*p) == St::Written && !got.contains(p))
                .collect();
            ensure!(
                missed.is_empty(),
                "final get: MISSED written pages {}",
                self.describe(&missed)
            );
        }
        // Every byte stored is still there (watching, resets, protection
        // changes and scans never touch contents).
        let mut changed = vec![];
        for (&at, &want) in &self.bytes {
            if self.readable(at) {
                // SAFETY: a readable byte of a model arena.
                let got = unsafe { std::ptr::read_volatile(at as *const u8) };
                if got != want {
                    changed.push(at);
                }
            }
        }
        ensure!(
            changed.is_empty(),
            "at the end, memory changed at {} bytes, e.g. {}",
            changed.len(),
            self.describe(&changed)
        );
        self.teardown()?;
        let s = stats();
        ensure!(
            s.regions == self.base_stats.regions
                && s.watched_bytes == self.base_stats.watched_bytes,
            "after teardown: {} regions / {} bytes watched, expected {} / {}",
            s.regions,
            s.watched_bytes,
            self.base_stats.regions,
            self.base_stats.watched_bytes
        );
        Ok(self.tally)
    }

    fn teardown(&mut self) -> Check {
        let mut first_err = Ok(());
        for r in std::mem::take(&mut self.regions) {
            ended_push(r.start, r.end);
            let rc = if r.alloc {
                // SAFETY: the model's allocation; nothing references it.
                unsafe { ww_free(r.start as *mut c_void) }
            } else {
                ww_unwatch(r.start as *mut c_void)
            };
            if rc != 0 && first_err.is_ok() {
                first_err = Err(format!("teardown of {:#x}: {}", r.start, ename(rc)));
            }
        }
        for a in std::mem::take(&mut self.arenas) {
            if a.map != 0 {
                munmap(a.map, a.map_len);
            } else if a.kind == Kind::Heap {
                // The allocator may write into its own chunk on free.
                mprotect(a.base, a.pages * ps(), libc::PROT_READ | libc::PROT_WRITE);
            }
        }
        for (addr, len) in std::mem::take(&mut self.foreign) {
            munmap(addr, len);
        }
        first_err
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        let _ = self.teardown();
        for fd in self.pipe {
            // SAFETY: our own pipe descriptors.
            unsafe { libc::close(fd) };
        }
    }
}

/// Runs `ops` against a fresh model. `Ok` with the tally, or the first
/// disagreement.
pub fn run(ops: &[Op]) -> Result<Tally, Failure> {
    let mut m = Model::new().map_err(|message| Failure {
        op_index: 0,
        message,
    })?;
    for (i, op) in ops.iter().enumerate() {
        m.step(op).map_err(|message| Failure {
            op_index: i,
            message,
        })?;
    }
    m.finish().map_err(|message| Failure {
        op_index: ops.len().saturating_sub(1),
        message: format!("at the end: {message}"),
    })
}

/// Drops ops while the run still fails (chunks first, then single ops,
/// until nothing more can go), for a shorter report. Bounded by `budget`
/// runs; `None` if the sequence no longer fails.
pub fn shrink(ops: &[Op], budget: usize) -> Option<(Vec<Op>, Failure)> {
    let mut best = ops.to_vec();
    let mut fail = run(&best).err()?;
    best.truncate(fail.op_index + 1);
    let mut runs = 0;
    let mut chunk = best.len().div_ceil(2);
    while chunk >= 1 && runs < budget {
        let mut progress = false;
        let mut i = 0;
        while i < best.len() && runs < budget {
            let mut cand = best.clone();
            cand.drain(i..(i + chunk).min(best.len()));
            runs += 1;
            match run(&cand) {
                Err(f) => {
                    cand.truncate(f.op_index + 1);
                    best = cand;
                    fail = f;
                    progress = true;
                }
                Ok(_) => i += chunk,
            }
        }
        if !progress {
            chunk /= 2;
        }
    }
    Some((best, fail))
}
