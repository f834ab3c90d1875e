//! SIGSEGV chaining with a host that has its own handler, and genuine
//! crashes. `harness = false`: `main` re-runs this binary once per case
//! (`--case NAME`) in a child process and checks how the child ended,
//! since handlers are per process and a crash must really kill.
//!
//! Every case forces the mprotect backend (`init(Mprotect)`) before the
//! library's first use; if that fails the case prints `SKIP <case>: ...`
//! and exits 77 (a failure when `WW_REQUIRE_BACKENDS` names mprotect).
//!
//! Cases:
//! - host handler installed *before* the library (SA_SIGINFO and plain):
//!   our faults are resolved without the host seeing them; the host still
//!   gets its own (a write to its read-only page, and a write to a watched
//!   page the caller made read-only with `ww_protect`).
//! - host handler installed *after* the library, calling
//!   `ww_handle_fault(si_addr)` first.
//! - genuine crashes die of SIGSEGV: a write to a read-only unwatched page,
//!   a NULL dereference, a write to a guard page, with Rust's handler, a
//!   host's, SIG_DFL or SIG_IGN before ours; a `raise(SIGSEGV)` with
//!   SIG_DFL before ours; and a stack overflow still reaches Rust's
//!   handler (on the alternate stack) and aborts with its message.
//! - one resolved fault fits in well under 8 KiB of alternate stack
//!   (measured with a high-water mark).

mod common;

use common::{init_or_skip, peek, poke, ps};

use std::ffi::c_void;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};

use writewatch::{BackendKind, WatchedAlloc, page_size};

const SKIP: i32 = 77;

/// How a case must end.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Exit status 0.
    Pass,
    /// Killed by this signal.
    Signal(i32),
    /// Killed by this signal, with this text on stderr.
    SignalWith(i32, &'static str),
}

const CASES: &[(&str, Expect)] = &[
    ("host_before_siginfo_gets_only_its_own_faults", Expect::Pass),
    (
        "host_before_plain_handler_gets_only_its_own_faults",
        Expect::Pass,
    ),
    ("host_after_calls_ww_handle_fault_first", Expect::Pass),
    (
        "crash_write_to_readonly_unwatched_page",
        Expect::Signal(libc::SIGSEGV),
    ),
    ("crash_null_dereference", Expect::Signal(libc::SIGSEGV)),
    ("crash_write_to_guard_page", Expect::Signal(libc::SIGSEGV)),
    (
        "crash_write_to_caller_readonly_watched_page",
        Expect::Signal(libc::SIGSEGV),
    ),
    (
        "crash_through_host_installed_before",
        Expect::Signal(libc::SIGSEGV),
    ),
    (
        "crash_through_host_installed_after",
        Expect::Signal(libc::SIGSEGV),
    ),
    (
        "crash_with_default_action_before_ours",
        Expect::Signal(libc::SIGSEGV),
    ),
    (
        "crash_with_ignored_action_before_ours",
        Expect::Signal(libc::SIGSEGV),
    ),
    (
        "crash_raise_with_default_action_before_ours",
        Expect::Signal(libc::SIGSEGV),
    ),
    (
        "stack_overflow_still_reaches_rust_handler",
        Expect::SignalWith(libc::SIGABRT, "has overflowed its stack"),
    ),
    (
        "raise_with_ignored_action_before_ours_is_ignored",
        Expect::Pass,
    ),
    ("handler_fits_a_small_alternate_stack", Expect::Pass),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        run_case(&args[i + 1]);
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in CASES {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    let cases: Vec<_> = CASES
        .iter()
        .filter(|(n, _)| filter.as_deref().is_none_or(|f| n.contains(f)))
        .collect();
    println!("\nrunning {} tests (one child process each)", cases.len());
    let mut failed = vec![];
    let (mut passed, mut skipped) = (0, 0);
    for (name, expect) in cases {
        let out = Command::new(&args[0])
            .args(["--case", name])
            .output()
            .expect("spawn");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        let (code, signal) = (out.status.code(), out.status.signal());
        if code == Some(SKIP) {
            let line = stdout
                .lines()
                .find(|l| l.starts_with("SKIP"))
                .unwrap_or("SKIP (no reason)");
            let required = std::env::var("WW_REQUIRE_BACKENDS").unwrap_or_default();
            if required.split(',').any(|b| b.trim() == "mprotect") {
                println!("test {name} ... FAILED (required backend skipped: {line})");
                failed.push(*name);
            } else {
                println!("test {name} ... {line}");
                skipped += 1;
            }
            continue;
        }
        let ok = match expect {
            Expect::Pass => code == Some(0),
            Expect::Signal(s) => signal == Some(*s),
            Expect::SignalWith(s, text) => signal == Some(*s) && stderr.contains(text),
        };
        if ok {
            passed += 1;
            println!("test {name} ... ok ({})", describe(code, signal));
        } else {
            println!(
                "test {name} ... FAILED: expected {expect:?}, got {}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}---",
                describe(code, signal)
            );
            failed.push(*name);
        }
    }
    // libtest's summary format, so runners can count (skips count as ignored).
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {} failed; {skipped} ignored; 0 measured; 0 filtered out\n",
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failed cases: {failed:?}");
        ExitCode::FAILURE
    }
}

fn describe(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

// ---------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------

fn require_mprotect(case: &str) {
    // Fails instead if WW_REQUIRE_BACKENDS names mprotect.
    if !init_or_skip(case, BackendKind::Mprotect, true) {
        std::process::exit(SKIP);
    }
}

/// An anonymous mapping (never unmapped: the child exits).
fn map(pages: usize, prot: i32) -> usize {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: a fresh anonymous mapping aliases nothing.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), pages * ps(), prot, flags, -1, 0) };
    assert_ne!(p, libc::MAP_FAILED);
    p as usize
}

/// Written pages of a region, as indices.
fn written(m: &WatchedAlloc) -> Vec<usize> {
    m.written_pages(.., false).unwrap()
}

/// What the host handler has seen.
static HOST_PAGE: AtomicUsize = AtomicUsize::new(0);
static HOST_FAULTS: AtomicUsize = AtomicUsize::new(0);
/// A watched page the caller made read-only: the host fixes it up itself.
static HOST_WATCHED_RO: AtomicUsize = AtomicUsize::new(0);
static HOST_WATCHED_RO_FAULTS: AtomicUsize = AtomicUsize::new(0);
/// Faults the host passed to ww_handle_fault and that were ours.
static HOST_SAW_OURS: AtomicUsize = AtomicUsize::new(0);
/// The action the host replaced (host installed after the library).
static HOST_PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

fn page_of(addr: usize) -> usize {
    addr & !(ps() - 1)
}

/// The host's own business: make its page (or the watched read-only
/// page) writable. True if it was one of them.
fn host_fix_up(addr: usize) -> bool {
    let page = page_of(addr);
    let counter = if page == HOST_PAGE.load(SeqCst) {
        &HOST_FAULTS
    } else if page == HOST_WATCHED_RO.load(SeqCst) {
        &HOST_WATCHED_RO_FAULTS
    } else {
        return false;
    };
    counter.fetch_add(1, SeqCst);
    // SAFETY: the host's own page (or one it is entitled to open).
    unsafe {
        libc::mprotect(
            page as *mut c_void,
            ps(),
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    true
}

/// Gives up like a host without a plan: default action, fault repeats.
fn host_give_up(sig: i32) {
    // SAFETY: a zeroed sigaction is SIG_DFL.
    let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid action for SIGSEGV.
    unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
}

/// A host handler installed before the library.
extern "C" fn host_before(sig: i32, info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    // SAFETY: kernel-provided siginfo for SIGSEGV.
    let addr = unsafe { (*info).si_addr() } as usize;
    if !host_fix_up(addr) {
        host_give_up(sig);
    }
}

/// A plain (non-SA_SIGINFO) host handler: it cannot know the address, so
/// it opens its one page and counts.
extern "C" fn host_before_plain(sig: i32) {
    let page = HOST_PAGE.load(SeqCst);
    if HOST_FAULTS.fetch_add(1, SeqCst) > 10 {
        host_give_up(sig); // not its fault after all
        return;
    }
    // SAFETY: the host's own page.
    unsafe {
        libc::mprotect(
            page as *mut c_void,
            ps(),
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
}

/// A host handler installed after the library: asks the library first,
/// then handles its own faults, then chains to the action it replaced.
extern "C" fn host_after(sig: i32, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: kernel-provided siginfo for SIGSEGV.
    let addr = unsafe { (*info).si_addr() };
    if writewatch::capi::ww_handle_fault(addr) == 1 {
        HOST_SAW_OURS.fetch_add(1, SeqCst);
        return;
    }
    if host_fix_up(addr as usize) {
        return;
    }
    // SAFETY: set before this handler was installed, never freed.
    let prev = unsafe { &*HOST_PREVIOUS.load(SeqCst) };
    // SAFETY: the previous action is the library's SA_SIGINFO handler.
    let f = unsafe {
        std::mem::transmute::<usize, extern "C" fn(i32, *mut libc::siginfo_t, *mut c_void)>(
            prev.sa_sigaction,
        )
    };
    f(sig, info, ctx);
}

/// Installs `handler` for SIGSEGV; returns the action it replaced.
fn install(handler: usize, siginfo: bool) -> libc::sigaction {
    // SAFETY: zeroed sigaction is valid; filled below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = if siginfo { libc::SA_SIGINFO } else { 0 };
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; SIGSEGV may be caught.
    assert_eq!(unsafe { libc::sigaction(libc::SIGSEGV, &act, &mut old) }, 0);
    old
}

fn set_default(action: libc::sighandler_t) {
    // SAFETY: zeroed sigaction is valid.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = action;
    // SAFETY: valid pointer; SIG_DFL/SIG_IGN for SIGSEGV.
    let rc = unsafe { libc::sigaction(libc::SIGSEGV, &act, std::ptr::null_mut()) };
    assert_eq!(rc, 0);
}

/// A watched region with one write made, so the handler is installed and
/// in use.
fn library_in_use(case: &str) -> WatchedAlloc {
    require_mprotect(case);
    let mut m = WatchedAlloc::new(8 * ps()).unwrap();
    m.as_mut_slice()[ps()] = 1;
    assert_eq!(written(&m), [1]);
    m
}

fn run_case(case: &str) {
    let ps = ps();
    match case {
        "host_before_siginfo_gets_only_its_own_faults"
        | "host_before_plain_handler_gets_only_its_own_faults" => {
            let plain = case.contains("plain");
            let host_page = map(1, libc::PROT_READ);
            HOST_PAGE.store(host_page, SeqCst);
            if plain {
                install(host_before_plain as extern "C" fn(i32) as usize, false);
            } else {
                install(host_before as extern "C" fn(_, _, _) as usize, true);
            }
            require_mprotect(case);
            let mut m = WatchedAlloc::new(8 * ps).unwrap();
            let base = m.as_ptr() as usize;
            for p in [2, 5, 6] {
                m.as_mut_slice()[p * ps] = 1;
            }
            assert_eq!(written(&m), [2, 5, 6], "our faults resolved by us");
            assert_eq!(HOST_FAULTS.load(SeqCst), 0, "the host saw none of ours");
            poke(host_page, 9);
            assert_eq!(HOST_FAULTS.load(SeqCst), 1, "the host got its own fault");
            assert_eq!(peek(host_page), 9);
            if !plain {
                // A watched page the caller made read-only: the write fault
                // is the host's, not ours.
                m.protect(3 * ps..4 * ps, writewatch::Protection::Read)
                    .unwrap();
                HOST_WATCHED_RO.store(base + 3 * ps, SeqCst);
                poke(base + 3 * ps, 1);
                assert_eq!(
                    HOST_WATCHED_RO_FAULTS.load(SeqCst),
                    1,
                    "read-only watched page: host's fault"
                );
            }
            m.as_mut_slice()[7 * ps] = 1;
            assert_eq!(written(&m), [2, 5, 6, 7]);
            println!(
                "ok: host saw {} fault(s), library {}",
                HOST_FAULTS.load(SeqCst),
                writewatch::stats().faults_handled
            );
        }
        "host_after_calls_ww_handle_fault_first" => {
            let mut m = library_in_use(case);
            let host_page = map(1, libc::PROT_READ);
            HOST_PAGE.store(host_page, SeqCst);
            let prev = install(host_after as extern "C" fn(_, _, _) as usize, true);
            HOST_PREVIOUS.store(Box::leak(Box::new(prev)), SeqCst);
            let before = HOST_SAW_OURS.load(SeqCst);
            for p in [3, 4] {
                m.as_mut_slice()[p * ps] = 1;
            }
            assert_eq!(
                HOST_SAW_OURS.load(SeqCst),
                before + 2,
                "resolved through ww_handle_fault"
            );
            assert_eq!(written(&m), [1, 3, 4]);
            poke(host_page, 5);
            assert_eq!(HOST_FAULTS.load(SeqCst), 1);
            assert_eq!(m.written_pages(.., true).unwrap(), [1, 3, 4]);
            m.as_mut_slice()[3 * ps] = 2;
            assert_eq!(written(&m), [3], "re-armed and caught again");
            println!("ok");
        }
        "crash_write_to_readonly_unwatched_page" => {
            let _m = library_in_use(case);
            let ro = map(1, libc::PROT_READ);
            poke(ro, 1);
        }
        "crash_null_dereference" => {
            let _m = library_in_use(case);
            let null = std::hint::black_box(0usize);
            println!("{}", peek(null));
        }
        "crash_write_to_guard_page" => {
            let m = library_in_use(case);
            poke(m.as_ptr() as usize - 1, 1);
        }
        "crash_write_to_caller_readonly_watched_page" => {
            let mut m = library_in_use(case);
            m.protect(2 * ps..3 * ps, writewatch::Protection::Read)
                .unwrap();
            poke(m.as_ptr() as usize + 2 * ps, 1);
        }
        "crash_through_host_installed_before" => {
            HOST_PAGE.store(map(1, libc::PROT_READ), SeqCst);
            install(host_before as extern "C" fn(_, _, _) as usize, true);
            let _m = library_in_use(case);
            poke(map(1, libc::PROT_READ), 1); // not the host's page either
        }
        "crash_through_host_installed_after" => {
            let _m = library_in_use(case);
            HOST_PAGE.store(map(1, libc::PROT_READ), SeqCst);
            let prev = install(host_after as extern "C" fn(_, _, _) as usize, true);
            HOST_PREVIOUS.store(Box::leak(Box::new(prev)), SeqCst);
            poke(map(1, libc::PROT_READ), 1);
        }
        "crash_with_default_action_before_ours" => {
            set_default(libc::SIG_DFL);
            let _m = library_in_use(case);
            poke(map(1, libc::PROT_READ), 1);
        }
        "crash_with_ignored_action_before_ours" => {
            set_default(libc::SIG_IGN);
            let _m = library_in_use(case);
            poke(map(1, libc::PROT_READ), 1);
        }
        "crash_raise_with_default_action_before_ours" => {
            set_default(libc::SIG_DFL);
            let _m = library_in_use(case);
            // SAFETY: sends ourselves SIGSEGV (si_code SI_TKILL: not a fault).
            unsafe { libc::raise(libc::SIGSEGV) };
        }
        "raise_with_ignored_action_before_ours_is_ignored" => {
            set_default(libc::SIG_IGN);
            let mut m = library_in_use(case);
            // SAFETY: sends ourselves SIGSEGV (not a fault): ignored.
            unsafe { libc::raise(libc::SIGSEGV) };
            // Still installed: watched writes keep working.
            m.as_mut_slice()[5 * ps] = 1;
            assert_eq!(written(&m), [1, 5]);
            println!("ok");
        }
        "stack_overflow_still_reaches_rust_handler" => {
            let _m = library_in_use(case);
            let t = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(|| recurse(0))
                .unwrap();
            let _ = t.join();
        }
        "handler_fits_a_small_alternate_stack" => {
            // Hosts often give threads a SIGSTKSZ (8 KiB) or smaller
            // alternate stack. Measure our high-water mark on one.
            let m = library_in_use(case);
            let base = m.as_ptr() as usize;
            let used = std::thread::spawn(move || {
                const SIZE: usize = 16 * 1024;
                let mut stack = vec![0xa5u8; SIZE];
                let ss = libc::stack_t {
                    ss_sp: stack.as_mut_ptr().cast(),
                    ss_flags: 0,
                    ss_size: SIZE,
                };
                // SAFETY: stack_t is plain data; all-zero is valid.
                let mut old: libc::stack_t = unsafe { std::mem::zeroed() };
                // SAFETY: `stack` outlives its use as this thread's alternate
                // stack (restored below before it is freed).
                assert_eq!(unsafe { libc::sigaltstack(&ss, &mut old) }, 0);
                poke(base + 6 * page_size(), 1); // one fault, handled on `stack`
                // SAFETY: restores the thread's previous alternate stack.
                assert_eq!(unsafe { libc::sigaltstack(&old, std::ptr::null_mut()) }, 0);
                SIZE - stack.iter().position(|&b| b != 0xa5).unwrap_or(SIZE)
            })
            .join()
            .unwrap();
            assert_eq!(m.written_pages(.., true).unwrap(), [1, 6]);
            println!(
                "alternate stack used by one resolved fault (kernel frame included): {used} bytes"
            );
            assert!(
                used < 8192,
                "the handler needs {used} bytes of alternate stack"
            );
        }
        other => panic!("unknown case {other}"),
    }
}

#[allow(unconditional_recursion)] // on purpose: overflows the stack
fn recurse(depth: u64) -> u64 {
    let buf = std::hint::black_box([depth; 64]);
    buf[3] + recurse(std::hint::black_box(depth + 1))
}
