//! Shared helpers for the integration tests.
//!
//! Every test binary runs with the backend named by `WW_BACKEND` (the
//! library reads it on first use; `make test` runs the suite once per
//! backend). A test begins with `require_backend!()`: if that backend is not
//! available here it prints `SKIP <test>: <reason>` and returns — unless
//! `WW_REQUIRE_BACKENDS` names the backend, in which case it fails.

#![allow(dead_code)]

use writewatch::{BackendKind, page_size};

/// The backend this process tests, or `None` (after printing SKIP) if it is
/// unavailable and not required.
pub fn backend(test: &str) -> Option<BackendKind> {
    let wanted = std::env::var("WW_BACKEND").unwrap_or_default();
    let kind = if wanted.is_empty() {
        writewatch::active_backend()
    } else {
        BackendKind::from_name(&wanted).unwrap_or_else(|| panic!("bad WW_BACKEND={wanted}"))
    };
    let kind = if kind == BackendKind::Auto {
        writewatch::active_backend()
    } else {
        kind
    };
    match writewatch::probe_backend(kind) {
        Ok(()) => Some(kind),
        Err(why) => {
            skip_unless_required(test, kind, &why);
            None
        }
    }
}

/// Prints `SKIP <test>: backend <kind> unavailable: <why>`, or fails the
/// test if `WW_REQUIRE_BACKENDS` names `kind` (a required backend never
/// skips).
pub fn skip_unless_required(test: &str, kind: BackendKind, why: &str) {
    let required = std::env::var("WW_REQUIRE_BACKENDS").unwrap_or_default();
    if required.split(',').any(|b| b.trim() == kind.name()) {
        panic!(
            "{test}: backend {} required but unavailable: {why}",
            kind.name()
        );
    }
    println!("SKIP {test}: backend {} unavailable: {why}", kind.name());
}

/// For a test of one backend: makes `kind` the process's backend and
/// returns true, or prints SKIP and returns false if it cannot be used
/// here (see [`skip_unless_required`]). With `own_run_only`, also skips
/// when `WW_BACKEND` names another backend: the suite runs once per
/// backend, and the test belongs to `kind`'s run.
pub fn init_or_skip(test: &str, kind: BackendKind, own_run_only: bool) -> bool {
    match std::env::var("WW_BACKEND") {
        Ok(b) if own_run_only && !b.is_empty() && b != kind.name() => {
            println!(
                "SKIP {test}: {}-specific, this run is for WW_BACKEND={b}",
                kind.name()
            );
            return false;
        }
        _ => {}
    }
    match writewatch::init(kind) {
        Ok(()) => true,
        Err(e) => {
            let why = match writewatch::probe_backend(kind) {
                Err(why) => why,
                Ok(()) => format!("init failed: {e}"),
            };
            skip_unless_required(test, kind, &why);
            false
        }
    }
}

/// Returns early from the test (printing SKIP) if its backend is unavailable.
#[macro_export]
macro_rules! require_backend {
    () => {{
        fn f() {}
        let name = std::any::type_name_of_val(&f).trim_end_matches("::f");
        match common::backend(name) {
            Some(k) => k,
            None => return,
        }
    }};
}

/// Page size.
pub fn ps() -> usize {
    page_size()
}

/// Writes one byte at `addr` (volatile, so the compiler keeps it).
pub fn poke(addr: usize, v: u8) {
    // SAFETY: tests only poke memory they allocated read-write.
    unsafe { std::ptr::write_volatile(addr as *mut u8, v) }
}

/// Reads one byte at `addr`.
pub fn peek(addr: usize) -> u8 {
    // SAFETY: tests only peek memory they allocated and can read.
    unsafe { std::ptr::read_volatile(addr as *const u8) }
}

/// Written page indices of `[base, base+len)` relative to `base`.
pub fn written(base: usize, len: usize, reset: bool) -> Vec<usize> {
    let mut out = vec![0usize; len / ps() + 1];
    let n = writewatch::get_write_watch(reset, base, len, &mut out).expect("get_write_watch");
    out[..n].iter().map(|a| (a - base) / ps()).collect()
}

/// A plain anonymous read-write mapping, unmapped on drop.
pub struct Mmap {
    pub base: usize,
    pub len: usize,
}

impl Mmap {
    pub fn new(len: usize, flags: i32) -> Mmap {
        // SAFETY: a fresh anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Mmap {
            base: p as usize,
            len,
        }
    }

    pub fn private(len: usize) -> Mmap {
        Mmap::new(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: our own mapping; nothing borrows it.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// Runs `case` in a fresh copy of this test binary (its test named
/// `child`, with `WW_CHILD=<case>` and `env` set), for what is per process:
/// resource limits, seccomp filters, the backend choice. A re-exec rather
/// than fork(): the test harness is threaded, and a child forked while
/// another test holds a library lock would deadlock. Panics, showing the
/// child's output, unless it passed; returns its stdout.
pub fn run_child(case: &str, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env("WW_CHILD", case)
        .env("RUST_BACKTRACE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child case {case} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// In a test binary's `child` test: the case this process was started for.
pub fn child_case() -> Option<String> {
    std::env::var("WW_CHILD").ok()
}

/// Runs `f` in a child process made by `spawn` (which returns the child's
/// pid in the parent and 0 in the child, like fork) and returns the child's
/// raw wait status. The child `_exit`s with `f`'s value, or 101 if `f`
/// panicked: a panic must not end the child's only thread normally, which
/// would exit the child with status 0. Only for children that run no code
/// whose locks another thread of the parent could have held at the fork.
pub fn in_child(spawn: impl FnOnce() -> libc::pid_t, f: impl FnOnce() -> i32) -> i32 {
    let pid = spawn();
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: leaves the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// `fork(2)`, for [`in_child`].
pub fn fork() -> libc::pid_t {
    // SAFETY: fork has no memory-safety preconditions; what the child may
    // run afterwards is `in_child`'s caller's concern.
    unsafe { libc::fork() }
}

/// True for the wait status of a child that exited with status 0.
pub fn exited_ok(status: i32) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// The fork scenario of `tests/fork*.rs`, with the child made by `spawn`
/// (see [`in_child`]): a child misses no write made after the fork (its
/// first get may report extra pages), and the parent is unaffected.
pub fn fork_scenario(spawn: impl FnOnce() -> libc::pid_t) {
    let base = writewatch::alloc(16 * ps()).unwrap();
    poke(base + ps(), 1);
    assert_eq!(written(base, 16 * ps(), true), [1]);
    let status = in_child(spawn, || {
        poke(base + 3 * ps(), 1);
        let first = written(base, 16 * ps(), true);
        poke(base + 7 * ps(), 2);
        let second = written(base, 16 * ps(), true);
        let ok =
            first.contains(&3) && second.contains(&7) && written(base, 16 * ps(), false).is_empty();
        if !ok {
            eprintln!("child: first {first:?} second {second:?}");
        }
        i32::from(!ok)
    });
    poke(base + 5 * ps(), 1);
    assert!(exited_ok(status), "child failed: {status:#x}");
    assert_eq!(
        written(base, 16 * ps(), true),
        [5],
        "parent: exactly its own write"
    );
    // SAFETY: no references into the region remain.
    unsafe { writewatch::free(base) }.unwrap();
}
