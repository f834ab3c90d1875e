//! What the benchmark measures: the library, through its C ABI, and the
//! raw kernel mechanisms it is compared with, each behind [`Tracker`].
//!
//! The baselines are the least a program doing the job by hand would write:
//! - `raw-uffd`: userfaultfd `WP_ASYNC` + `PAGEMAP_SCAN`, armed up front,
//!   fast-path masks (what the written backend does for dense regions);
//! - `raw-uffd-sparse`: the same without arming up front, slow-path masks
//!   (`PRESENT|SWAPPED`), what the written backend does above `DENSE_LIMIT`;
//! - `raw-pagemap`: armed like `raw-uffd`, but read by `pread` of
//!   `/proc/self/pagemap` (uffd-wp bit 57) and reset by `UFFDIO_WRITEPROTECT`
//!   per written run — the way before `PAGEMAP_SCAN` existed;
//! - `raw-mprotect`: Wine's approach, `mprotect(PROT_READ)` plus a SIGSEGV
//!   handler that makes the page writable and sets its bit;
//! - `plain`: no tracking at all (the floor for writes and page tables);
//! - `raw-uffd-aa`: `raw-uffd` measured again as if it were another
//!   implementation; its ratio to `raw-uffd` shows the noise of the run.
//!
//! Every get produces the page address list, like `GetWriteWatch`.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use writewatch::BackendKind;
use writewatch::capi;
use writewatch::sys::pagemap::{EMPTY_REGION, Scan, read_entries};
use writewatch::sys::uapi::{
    PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_WRITTEN, PM_PRESENT, PM_SCAN_CHECK_WPASYNC,
    PM_SCAN_WP_MATCHING, PM_SWAP, PM_UFFD_WP, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED,
    page_region,
};
use writewatch::sys::uffd::Uffd;

/// The page size.
pub fn ps() -> usize {
    writewatch::page_size()
}

/// One way of tracking writes to a region.
pub trait Tracker {
    /// `size` bytes of zeroed read-write memory, tracked, nothing written.
    fn alloc(&mut self, size: usize) -> usize;
    /// Written page addresses into `out`, ascending; with `reset`, the
    /// returned pages read unwritten afterwards. Returns how many.
    fn get(&mut self, base: usize, size: usize, reset: bool, out: &mut [usize]) -> usize;
    /// Marks every page unwritten.
    fn reset(&mut self, base: usize, size: usize);
    /// Releases the region.
    fn free(&mut self, base: usize, size: usize);
    /// False for `plain`, whose gets always report nothing.
    fn tracks(&self) -> bool {
        true
    }
}

/// The tracker called `name` (a backend name or a baseline), if it exists.
pub fn tracker(name: &str) -> Option<Box<dyn Tracker>> {
    if let Some(kind) = BackendKind::from_name(name) {
        return Some(Box::new(Lib::new(kind)));
    }
    Some(match name {
        // The same baseline again, as its own column: the spread between
        // the two is the run's noise floor (an A/A comparison).
        "raw-uffd" | "raw-uffd-aa" => Box::new(RawUffd::new(false)),
        "raw-uffd-sparse" => Box::new(RawUffd::new(true)),
        "raw-pagemap" => Box::new(RawPagemap::new()),
        "raw-mprotect" => Box::new(RawMprotect::default()),
        "plain" => Box::new(Plain),
        _ => return None,
    })
}

/// Anonymous private read-write memory without huge pages (the library
/// also sets `MADV_NOHUGEPAGE` on watched memory).
pub fn map_rw(size: usize) -> usize {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh anonymous mapping at an address the kernel picks.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), size, prot, flags, -1, 0) };
    assert_ne!(p, libc::MAP_FAILED, "mmap {size}: {}", errno_text());
    writewatch::sys::mm::advise(p as usize, size, libc::MADV_NOHUGEPAGE).expect("madvise");
    p as usize
}

/// Unmaps memory from [`map_rw`].
pub fn unmap(base: usize, size: usize) {
    // SAFETY: the benchmark owns the mapping and keeps no reference to it.
    let r = unsafe { libc::munmap(base as *mut c_void, size) };
    assert_eq!(r, 0, "munmap: {}", errno_text());
}

fn errno_text() -> String {
    std::io::Error::last_os_error().to_string()
}

// ---------------------------------------------------------------------------
// The library, through the C ABI
// ---------------------------------------------------------------------------

/// libwritewatch with one backend, called through its C functions.
pub struct Lib;

impl Lib {
    fn new(kind: BackendKind) -> Lib {
        let r = capi::ww_init(kind as u32);
        assert_eq!(r, 0, "ww_init({}): errno {r}", kind.name());
        Lib
    }
}

impl Tracker for Lib {
    fn alloc(&mut self, size: usize) -> usize {
        let p = capi::ww_alloc(size);
        assert!(!p.is_null(), "ww_alloc({size}): {}", errno_text());
        p as usize
    }

    fn get(&mut self, base: usize, size: usize, reset: bool, out: &mut [usize]) -> usize {
        let mut count = out.len();
        let mut granularity = 0u32;
        let flags = if reset { capi::types::WW_FLAG_RESET } else { 0 };
        // SAFETY: `out` has `count` writable entries of pointer size; the
        // other pointers are live locals.
        let r = unsafe {
            capi::ww_get_write_watch(
                flags,
                base as *mut c_void,
                size,
                out.as_mut_ptr().cast(),
                &mut count,
                &mut granularity,
            )
        };
        assert_eq!(r, 0, "ww_get_write_watch: errno {r}");
        count
    }

    fn reset(&mut self, base: usize, size: usize) {
        let r = capi::ww_reset_write_watch(base as *mut c_void, size);
        assert_eq!(r, 0, "ww_reset_write_watch: errno {r}");
    }

    fn free(&mut self, base: usize, _size: usize) {
        // SAFETY: the benchmark drops every use of the region before freeing.
        let r = unsafe { capi::ww_free(base as *mut c_void) };
        assert_eq!(r, 0, "ww_free: errno {r}");
    }
}

// ---------------------------------------------------------------------------
// Raw userfaultfd WP_ASYNC + PAGEMAP_SCAN
// ---------------------------------------------------------------------------

/// The process's userfaultfd with async write-protect.
pub fn uffd() -> &'static Uffd {
    static UFFD: OnceLock<Uffd> = OnceLock::new();
    UFFD.get_or_init(|| {
        let u = Uffd::open().expect("userfaultfd");
        let want = (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED) as u64;
        let got = u.api(want).expect("UFFDIO_API");
        assert_eq!(got & want, want, "WP_ASYNC|WP_UNPOPULATED not granted");
        u
    })
}

/// Raw `PAGEMAP_SCAN`: `sparse` = registered without arming up front and
/// scanned with the slow-path masks.
pub struct RawUffd {
    sparse: bool,
    buf: Vec<page_region>,
}

impl RawUffd {
    fn new(sparse: bool) -> RawUffd {
        RawUffd {
            sparse,
            // 512 runs per ioctl: the kernel's bounce buffer. With more, a
            // call whose walk fills the buffer once and then finishes
            // returns the stale `walk_end` of the first fill (seen on
            // 6.18), and resuming there reports pages twice.
            buf: vec![
                EMPTY_REGION;
                std::env::var("WW_RAW_VEC")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(512)
            ],
        }
    }

    fn scan(&self, base: usize, size: usize, reset: bool) -> Scan {
        let mut flags = PM_SCAN_CHECK_WPASYNC;
        if reset {
            flags |= PM_SCAN_WP_MATCHING;
        }
        Scan {
            start: base as u64,
            end: (base + size) as u64,
            flags: flags as u64,
            max_pages: 0,
            category_mask: PAGE_IS_WRITTEN as u64,
            category_anyof_mask: if self.sparse {
                (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) as u64
            } else {
                0
            },
            return_mask: PAGE_IS_WRITTEN as u64,
        }
    }
}

impl Tracker for RawUffd {
    fn alloc(&mut self, size: usize) -> usize {
        let base = map_rw(size);
        uffd().register_wp(base, size).expect("UFFDIO_REGISTER");
        if !self.sparse {
            uffd()
                .writeprotect(base, size, true)
                .expect("UFFDIO_WRITEPROTECT");
        }
        base
    }

    fn get(&mut self, base: usize, size: usize, reset: bool, out: &mut [usize]) -> usize {
        let ps = ps();
        let mut scan = self.scan(base, size, reset);
        let mut n = 0;
        // No more runs than can exist: the kernel allocates its bounce
        // buffer by `vec_len`.
        let most = (size / ps).div_ceil(2).min(self.buf.len());
        while scan.start < scan.end && n < out.len() {
            scan.max_pages = (out.len() - n) as u64;
            let len = most.min(out.len() - n);
            let k = scan.run(&mut self.buf[..len]).expect("PAGEMAP_SCAN");
            for r in &self.buf[..k] {
                let mut a = r.start as usize;
                while a < r.end as usize {
                    out[n] = a;
                    n += 1;
                    a += ps;
                }
            }
        }
        n
    }

    fn reset(&mut self, base: usize, size: usize) {
        if self.sparse {
            let mut scan = self.scan(base, size, true);
            while scan.start < scan.end {
                scan.run(&mut self.buf).expect("PAGEMAP_SCAN");
            }
        } else {
            uffd()
                .writeprotect(base, size, true)
                .expect("UFFDIO_WRITEPROTECT");
        }
    }

    fn free(&mut self, base: usize, size: usize) {
        uffd().unregister(base, size).expect("UFFDIO_UNREGISTER");
        unmap(base, size);
    }
}

// ---------------------------------------------------------------------------
// Raw /proc/self/pagemap read
// ---------------------------------------------------------------------------

/// Armed like `raw-uffd`; read by `pread` of `/proc/self/pagemap`.
pub struct RawPagemap {
    entries: Vec<u64>,
}

impl RawPagemap {
    fn new() -> RawPagemap {
        RawPagemap {
            entries: vec![0; 8192],
        }
    }
}

impl Tracker for RawPagemap {
    fn alloc(&mut self, size: usize) -> usize {
        RawUffd::new(false).alloc(size)
    }

    fn get(&mut self, base: usize, size: usize, reset: bool, out: &mut [usize]) -> usize {
        let ps = ps();
        let pages = size / ps;
        let mut n = 0;
        let mut run: Option<usize> = None; // start of the current written run
        let rearm = |from: usize, to: usize| {
            if reset {
                uffd()
                    .writeprotect(from, to - from, true)
                    .expect("UFFDIO_WRITEPROTECT");
            }
        };
        let mut done = 0;
        while done < pages && n < out.len() {
            let chunk = (pages - done).min(self.entries.len());
            let at = base + done * ps;
            read_entries(at, ps, &mut self.entries[..chunk]).expect("pagemap read");
            for (i, e) in self.entries[..chunk].iter().enumerate() {
                let addr = at + i * ps;
                let written = e & (PM_PRESENT | PM_SWAP) != 0 && e & PM_UFFD_WP == 0;
                if written && n < out.len() {
                    out[n] = addr;
                    n += 1;
                    run.get_or_insert(addr);
                } else if let Some(s) = run.take() {
                    rearm(s, addr);
                }
            }
            done += chunk;
        }
        if let Some(s) = run {
            rearm(s, out[n - 1] + ps);
        }
        n
    }

    fn reset(&mut self, base: usize, size: usize) {
        uffd()
            .writeprotect(base, size, true)
            .expect("UFFDIO_WRITEPROTECT");
    }

    fn free(&mut self, base: usize, size: usize) {
        RawUffd::new(false).free(base, size)
    }
}

// ---------------------------------------------------------------------------
// Raw mprotect + SIGSEGV (Wine's approach)
// ---------------------------------------------------------------------------

/// One tracked region as the handler sees it.
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    bits: AtomicPtr<AtomicU64>,
}

const SLOTS: usize = 16384;
static TABLE: [Slot; SLOTS] = [const {
    Slot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        bits: AtomicPtr::new(std::ptr::null_mut()),
    }
}; SLOTS];
/// Slots in use (a prefix of `TABLE`; freed slots are zeroed, not reused).
static USED: AtomicUsize = AtomicUsize::new(0);
/// First `mprotect` errno seen by the handler (0: none).
pub static HANDLER_ERRNO: AtomicI32 = AtomicI32::new(0);
/// Faults handled before the first failure.
pub static FAULTS: AtomicUsize = AtomicUsize::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// The handler: a fault in a tracked region sets the page's bit and makes
/// the page writable; if `mprotect` fails (`ENOMEM` at `vm.max_map_count`)
/// it records the errno and unprotects the whole region, giving up
/// tracking (the alternative is faulting forever). Anything else: restore
/// the default action and return, so the fault repeats and kills.
extern "C" fn on_segv(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let ps = PAGE.load(Ordering::Relaxed);
    for slot in &TABLE[..USED.load(Ordering::Acquire)] {
        let (start, end) = (
            slot.start.load(Ordering::Acquire),
            slot.end.load(Ordering::Acquire),
        );
        if addr < start || addr >= end {
            continue;
        }
        let page = (addr - start) / ps;
        let bits = slot.bits.load(Ordering::Acquire);
        // SAFETY: `bits` has one bit per page of the slot's region and lives
        // until the slot is cleared (never during a fault on it).
        unsafe { &*bits.add(page / 64) }.fetch_or(1 << (page % 64), Ordering::AcqRel);
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: the page belongs to a region the benchmark tracks.
        let r = unsafe { libc::mprotect((start + page * ps) as *mut c_void, ps, rw) };
        if r != 0 {
            // SAFETY: reading errno right after the failed call.
            let e = unsafe { *libc::__errno_location() };
            let _ = HANDLER_ERRNO.compare_exchange(0, e, Ordering::AcqRel, Ordering::Acquire);
            // SAFETY: as above, for the whole region.
            unsafe { libc::mprotect(start as *mut c_void, end - start, rw) };
        } else if HANDLER_ERRNO.load(Ordering::Acquire) == 0 {
            FAULTS.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    // SAFETY: restoring the default action is async-signal-safe.
    unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
}

fn install_handler() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        PAGE.store(ps(), Ordering::Relaxed);
        // SAFETY: an all-zero sigaction is a valid starting point.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_segv as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `sa` is initialised and the handler is async-signal-safe.
        let r = unsafe { libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()) };
        assert_eq!(r, 0, "sigaction");
    });
}

/// Wine's approach: `mprotect` + SIGSEGV, one bit per page.
#[derive(Default)]
pub struct RawMprotect {
    /// Region base → its slot in `TABLE` (the caller's handle, in effect).
    slots: HashMap<usize, usize>,
}

impl RawMprotect {
    fn slot(&self, base: usize) -> &'static Slot {
        &TABLE[self.slots[&base]]
    }

    fn bits(&self, base: usize, size: usize) -> &'static [AtomicU64] {
        let p = self.slot(base).bits.load(Ordering::Acquire);
        // SAFETY: the slot's bitmap holds one bit per page of the region and
        // lives until `free`.
        unsafe { std::slice::from_raw_parts(p, (size / ps()).div_ceil(64)) }
    }

    fn protect(from: usize, to: usize, prot: i32) {
        // SAFETY: the range is inside a region the benchmark tracks.
        let r = unsafe { libc::mprotect(from as *mut c_void, to - from, prot) };
        assert_eq!(r, 0, "mprotect: {}", errno_text());
    }
}

impl Tracker for RawMprotect {
    fn alloc(&mut self, size: usize) -> usize {
        install_handler();
        let base = map_rw(size);
        let words: Box<[AtomicU64]> = (0..(size / ps()).div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        let i = USED.load(Ordering::Acquire);
        assert!(i < SLOTS, "too many raw-mprotect regions");
        let slot = &TABLE[i];
        slot.bits
            .store(Box::into_raw(words).cast(), Ordering::Release);
        slot.end.store(base + size, Ordering::Release);
        slot.start.store(base, Ordering::Release);
        USED.store(i + 1, Ordering::Release);
        self.slots.insert(base, i);
        Self::protect(base, base + size, libc::PROT_READ);
        base
    }

    fn get(&mut self, base: usize, size: usize, reset: bool, out: &mut [usize]) -> usize {
        let ps = ps();
        let bits = self.bits(base, size);
        let mut n = 0;
        let (mut lo, mut hi) = (usize::MAX, 0);
        for (w, word) in bits.iter().enumerate() {
            let mut v = word.load(Ordering::Acquire);
            if v == 0 {
                continue;
            }
            lo = lo.min(w);
            hi = w + 1;
            while v != 0 && n < out.len() {
                let b = v.trailing_zeros() as usize;
                out[n] = base + (w * 64 + b) * ps;
                n += 1;
                v &= v - 1;
            }
            if n == out.len() {
                break;
            }
        }
        if reset && hi > 0 {
            // Wine re-protects the whole span with one mprotect (runs of
            // equal protection are coalesced), then clears the bits.
            let from = base + lo * 64 * ps;
            let to = (base + hi * 64 * ps).min(base + size);
            Self::protect(from, to, libc::PROT_READ);
            for word in &bits[lo..hi] {
                word.store(0, Ordering::Release);
            }
        }
        n
    }

    fn reset(&mut self, base: usize, size: usize) {
        Self::protect(base, base + size, libc::PROT_READ);
        for word in self.bits(base, size) {
            word.store(0, Ordering::Release);
        }
    }

    fn free(&mut self, base: usize, size: usize) {
        let slot = self.slot(base);
        self.slots.remove(&base);
        let words = (size / ps()).div_ceil(64);
        slot.start.store(0, Ordering::Release);
        slot.end.store(0, Ordering::Release);
        let p = slot.bits.swap(std::ptr::null_mut(), Ordering::AcqRel);
        unmap(base, size);
        // SAFETY: `p` came from `Box::into_raw` of a slice of `words` entries
        // in `alloc`, and the handler can no longer reach it.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, words)) });
    }
}

// ---------------------------------------------------------------------------
// No tracking
// ---------------------------------------------------------------------------

/// Plain memory: nothing is tracked, every get reports nothing.
pub struct Plain;

impl Tracker for Plain {
    fn alloc(&mut self, size: usize) -> usize {
        map_rw(size)
    }

    fn get(&mut self, _base: usize, _size: usize, _reset: bool, _out: &mut [usize]) -> usize {
        0
    }

    fn reset(&mut self, _base: usize, _size: usize) {}

    fn free(&mut self, base: usize, size: usize) {
        unmap(base, size)
    }

    fn tracks(&self) -> bool {
        false
    }
}

/// Kernel page-table memory of this process (`VmPTE`), in KiB.
pub fn vm_pte_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPTE:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Soft-dirty works here: a written page reads soft-dirty, and after
/// `clear_refs` it does not (a kernel without `CONFIG_MEM_SOFT_DIRTY`
/// accepts the write and never sets the bit).
pub fn soft_dirty_works() -> Result<(), String> {
    let ps = ps();
    let base = map_rw(ps);
    let bit = || {
        let mut e = [0u64];
        read_entries(base, ps, &mut e).map(|()| e[0] & writewatch::sys::uapi::PM_SOFT_DIRTY != 0)
    };
    let result = (|| {
        // SAFETY: our own fresh read-write page.
        unsafe { std::ptr::write_volatile(base as *mut u8, 1) };
        clear_refs().map_err(|e| format!("clear_refs: {e}"))?;
        let cleared = bit().map_err(|e| e.to_string())?;
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile(base as *mut u8, 2) };
        let set = bit().map_err(|e| e.to_string())?;
        if cleared || !set {
            Err(format!(
                "soft-dirty bit after clear: {cleared}, after write: {set} (kernel without CONFIG_MEM_SOFT_DIRTY?)"
            ))
        } else {
            Ok(())
        }
    })();
    unmap(base, ps);
    result
}

/// Clears the soft-dirty bits of the whole process (`clear_refs` "4").
pub fn clear_refs() -> std::io::Result<()> {
    std::fs::write("/proc/self/clear_refs", "4")
}
