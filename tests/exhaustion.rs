//! Resource exhaustion and refused kernel features. Each case runs in a
//! fresh process (`common::run_child`): limits and seccomp filters are per
//! process, and so is the backend choice.
//!
//! The policy these tests pin (docs/BAD-INPUT.md, "Resource exhaustion"):
//!
//! - Backends are probed once and the answer is kept. A shortage when the
//!   first probe would run (no free descriptor: EMFILE/ENFILE; no address
//!   space: ENOMEM) is not an answer about the kernel: the call fails with
//!   that errno, nothing is remembered, and the next call tries again. It
//!   never turns into ENOTSUP or a fallback to another backend.
//! - A feature the process may never use (userfaultfd refused by seccomp)
//!   makes its backend unavailable, with the reason; AUTO picks the next.
//! - Once running, a shortage fails only the calls that need the resource,
//!   with its errno, and loses no state: every write is still reported.

mod common;

use std::ffi::c_void;

use common::*;
use writewatch::capi::types::ww_stats;
use writewatch::capi::*;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `ww_alloc`, with errno on failure.
fn alloc(size: usize) -> Result<usize, i32> {
    // SAFETY: errno is thread-local.
    unsafe { *libc::__errno_location() = 0 };
    let p = ww_alloc(size);
    if p.is_null() {
        Err(errno())
    } else {
        Ok(p as usize)
    }
}

fn free(p: usize) {
    // SAFETY: nothing references the region.
    assert_eq!(unsafe { ww_free(p as *mut c_void) }, 0, "ww_free");
}

/// `ww_get_write_watch` over `[base, base+pages)`, page indices.
fn get(base: usize, pages: usize, reset: bool) -> Result<Vec<usize>, i32> {
    let mut out = vec![0usize; pages];
    let (mut count, mut gran) = (pages, 0u32);
    // SAFETY: valid pointers; `out` has `pages` entries.
    let rc = unsafe {
        ww_get_write_watch(
            reset as u32,
            base as *mut c_void,
            pages * ps(),
            out.as_mut_ptr().cast(),
            &mut count,
            &mut gran,
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    Ok(out[..count].iter().map(|a| (a - base) / ps()).collect())
}

fn backend_name() -> String {
    // SAFETY: a static string for every valid backend.
    unsafe { std::ffi::CStr::from_ptr(ww_backend_name(ww_active_backend())) }
        .to_string_lossy()
        .into_owned()
}

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to fill.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut r) }, 0);
    let old = r.rlim_cur;
    r.rlim_cur = soft.min(r.rlim_max);
    // SAFETY: lowering (or restoring) our own soft limit.
    assert_eq!(unsafe { libc::setrlimit(resource, &r) }, 0, "setrlimit");
    old
}

/// Uses up every descriptor below a low limit; returns them (and the old
/// limit) for [`give_back_fds`].
fn starve_fds() -> (Vec<i32>, u64) {
    let old = set_limit(libc::RLIMIT_NOFILE, 64);
    let mut fds = vec![];
    loop {
        // SAFETY: eventfd takes no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            assert!(matches!(errno(), libc::EMFILE | libc::ENFILE), "eventfd");
            break;
        }
        fds.push(fd);
    }
    (fds, old)
}

fn give_back_fds((fds, old): (Vec<i32>, u64)) {
    for fd in fds {
        // SAFETY: our own descriptors.
        unsafe { libc::close(fd) };
    }
    set_limit(libc::RLIMIT_NOFILE, old);
}

/// Bytes of address space in use (`VmSize`).
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize");
    kb * 1024
}

/// Makes the allocator keep 24 MiB of free heap, so that the test's own
/// allocations keep working under a tight RLIMIT_AS (Rust aborts when an
/// allocation fails).
fn keep_heap() {
    // SAFETY: mallopt only tunes glibc's allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let mut v: Vec<u8> = Vec::with_capacity(24 << 20);
    v.resize(24 << 20, 1);
    drop(std::hint::black_box(v));
}

fn report(line: String) {
    println!("exhaustion: {line}");
}

// ---------------------------------------------------------------------------
// Child cases
// ---------------------------------------------------------------------------

/// Out of descriptors before the first use: EMFILE (or success for a
/// backend that needs none), never ENOTSUP; nothing remembered.
fn nofile_first_use() {
    let starved = starve_fds();
    let r = alloc(4 * ps());
    give_back_fds(starved);
    match r {
        Ok(p) => {
            report(format!("out of descriptors: {} needs none", backend_name()));
            free(p);
        }
        Err(e) => {
            assert!(
                matches!(e, libc::EMFILE | libc::ENFILE),
                "ww_alloc out of descriptors: errno {e}, expected EMFILE"
            );
            report(format!(
                "out of descriptors: ww_alloc -> errno {e} (EMFILE)"
            ));
        }
    }
    let p = alloc(4 * ps()).expect("ww_alloc once descriptors are back");
    let want = std::env::var("WW_EXPECT").unwrap();
    assert_eq!(
        backend_name(),
        want,
        "the backend an unconstrained run picks"
    );
    poke(p + ps(), 1);
    assert_eq!(get(p, 4, true), Ok(vec![1]));
    free(p);
}

/// Out of descriptors while running: calls that need one fail with
/// EMFILE, the rest work, and no write is lost.
fn nofile_after_use() {
    let a = alloc(16 * ps()).unwrap();
    let m = Mmap::private(8 * ps());
    poke(a + ps(), 1);
    let starved = starve_fds();
    let ok_or_emfile = |rc: i32, what: &str| {
        assert!(
            matches!(rc, 0 | libc::EMFILE | libc::ENFILE),
            "{what} out of descriptors: {rc}"
        );
        rc == 0
    };
    // Page 1 is pending until a successful get-with-reset reports it.
    let mut pending = vec![1];
    match get(a, 16, true) {
        Ok(pages) => {
            assert!(pages.contains(&1), "get with reset: {pages:?}");
            pending.clear();
        }
        Err(e) => {
            ok_or_emfile(e, "get with reset");
        }
    }
    poke(a + 2 * ps(), 1);
    pending.push(2);
    // SAFETY: `m` outlives the watch.
    let watched = ok_or_emfile(
        unsafe { ww_watch(m.base as *mut c_void, m.len) },
        "ww_watch",
    );
    let mut leftover = None;
    match alloc(4 * ps()) {
        Ok(p) => {
            // SAFETY: nothing references the region.
            if !ok_or_emfile(unsafe { ww_free(p as *mut c_void) }, "ww_free") {
                leftover = Some(p);
            }
        }
        Err(e) => {
            ok_or_emfile(e, "ww_alloc");
        }
    }
    ok_or_emfile(
        ww_reset_write_watch((a + 8 * ps()) as *mut c_void, ps()),
        "ww_reset_write_watch",
    );
    give_back_fds(starved);
    if let Some(p) = leftover {
        free(p);
    }
    let got = get(a, 16, false).expect("get once descriptors are back");
    for p in &pending {
        assert!(got.contains(p), "write to page {p} lost: reported {got:?}");
    }
    if !watched {
        // SAFETY: `m` outlives the watch.
        assert_eq!(unsafe { ww_watch(m.base as *mut c_void, m.len) }, 0);
    }
    poke(m.base + 3 * ps(), 1);
    assert_eq!(get(m.base, 8, true), Ok(vec![3]));
    assert_eq!(ww_unwatch(m.base as *mut c_void), 0);
    free(a);
    report(format!(
        "out of descriptors while running on {}: watch {}",
        backend_name(),
        if watched {
            "worked"
        } else {
            "failed with EMFILE"
        }
    ));
}

/// No address space left before the first use: ENOMEM, nothing remembered.
fn nomem_first_use() {
    keep_heap();
    let old = set_limit(libc::RLIMIT_AS, vm_size());
    let r = alloc(ps());
    set_limit(libc::RLIMIT_AS, old);
    assert_eq!(
        r.map(drop),
        Err(libc::ENOMEM),
        "ww_alloc with no address space left"
    );
    let p = alloc(4 * ps()).expect("ww_alloc once address space is back");
    let want = std::env::var("WW_EXPECT").unwrap();
    assert_eq!(
        backend_name(),
        want,
        "the backend an unconstrained run picks"
    );
    poke(p, 1);
    assert_eq!(get(p, 4, true), Ok(vec![0]));
    free(p);
}

/// ENOMEM from mmap while running: ww_alloc returns NULL/ENOMEM, smaller
/// allocations still work, and the registry stays consistent.
fn nomem_alloc() {
    let a = alloc(8 * ps()).unwrap();
    poke(a + 5 * ps(), 1);
    let mut s0 = ww_stats::default();
    // SAFETY: a valid ww_stats.
    assert_eq!(unsafe { ww_get_stats(&mut s0) }, 0);
    keep_heap();
    let old = set_limit(libc::RLIMIT_AS, vm_size() + (16 << 20));
    assert_eq!(alloc(256 << 20).map(drop), Err(libc::ENOMEM), "256 MiB");
    assert_eq!(alloc(usize::MAX / 2).map(drop), Err(libc::ENOMEM));
    let small = alloc(4 * ps()).expect("a small allocation still fits");
    poke(small + 2 * ps(), 1);
    // Use up what is left, then fail again.
    let mut held = vec![];
    let last = loop {
        match alloc(1 << 20) {
            Ok(p) => held.push(p),
            Err(e) => break e,
        }
    };
    assert_eq!(last, libc::ENOMEM, "allocating until the limit");
    let mut s1 = ww_stats::default();
    // SAFETY: a valid ww_stats.
    assert_eq!(unsafe { ww_get_stats(&mut s1) }, 0);
    assert_eq!(s1.regions, s0.regions + 1 + held.len() as u64, "regions");
    assert_eq!(
        s1.watched_bytes,
        s0.watched_bytes + (4 * ps() + held.len() * (1 << 20)) as u64,
        "watched bytes: failed allocations left nothing behind"
    );
    assert_eq!(get(a, 8, false), Ok(vec![5]));
    assert_eq!(get(small, 4, true), Ok(vec![2]));
    for p in held.drain(..) {
        free(p);
    }
    set_limit(libc::RLIMIT_AS, old);
    let big = alloc(256 << 20).expect("256 MiB once address space is back");
    poke(big + 100 * ps(), 1);
    assert_eq!(get(big, (256 << 20) / ps(), true), Ok(vec![100]));
    free(big);
    free(small);
    assert_eq!(get(a, 8, true), Ok(vec![5]));
    free(a);
    report(format!(
        "ENOMEM while running on {}: handled",
        backend_name()
    ));
}

/// `SECCOMP_RET_ERRNO | EPERM` for `userfaultfd(2)`, everything else
/// allowed. False (after printing SKIP) if this kernel has no seccomp filters.
fn refuse_userfaultfd() -> bool {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    // struct seccomp_data: int nr at 0, __u32 arch at 4.
    let mut filter = [
        stmt(ld, 4),
        jeq(AUDIT_ARCH, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(ld, 0),
        jeq(libc::SYS_userfaultfd as u32, 0, 1),
        stmt(
            ret,
            libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA),
        ),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls on our own process; `prog` outlives them.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let rc = libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        );
        if rc != 0 && errno() == libc::EINVAL {
            println!("SKIP seccomp: this kernel has no seccomp filters (CONFIG_SECCOMP_FILTER)");
            return false;
        }
        assert_eq!(rc, 0, "PR_SET_SECCOMP: {}", std::io::Error::last_os_error());
        assert_eq!(libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC), -1);
    }
    assert_eq!(errno(), libc::EPERM, "the filter refuses userfaultfd");
    true
}

/// userfaultfd refused: written unavailable with a reason, ENOTSUP when
/// asked for by name, AUTO picks the next available backend.
fn seccomp_uffd() {
    if !refuse_userfaultfd() {
        return;
    }
    let why = writewatch::probe_backend(writewatch::BackendKind::Written)
        .expect_err("written must be unavailable");
    assert!(
        why.contains("userfaultfd") && why.contains("not permitted"),
        "the reason names the refused syscall: {why}"
    );
    report(format!("userfaultfd refused: written unavailable: {why}"));
    let avail = ww_available_backends();
    assert_eq!(avail & (1 << 1), 0, "available {avail:#x}");
    assert_eq!(ww_init(1), libc::ENOTSUP, "ww_init(WW_BACKEND_WRITTEN)");
    assert_eq!(ww_init(0), 0, "ww_init(WW_BACKEND_AUTO)");
    match alloc(4 * ps()) {
        Ok(p) => {
            assert_ne!(ww_active_backend(), 1, "AUTO must not pick written");
            assert_ne!(avail & (1 << ww_active_backend()), 0);
            poke(p + 3 * ps(), 1);
            assert_eq!(get(p, 4, true), Ok(vec![3]));
            free(p);
            report(format!("AUTO fell back to {}", backend_name()));
        }
        Err(e) => {
            assert_eq!(avail, 0, "ww_alloc failed ({e}) with backends available");
            assert_eq!(e, libc::ENOTSUP, "no backend left: ENOTSUP");
            report("AUTO: no other backend in this build: ENOTSUP".into());
        }
    }
}

/// The same with `WW_BACKEND=written`: the first use fails with ENOTSUP.
fn seccomp_uffd_explicit() {
    if !refuse_userfaultfd() {
        return;
    }
    assert_eq!(alloc(ps()).map(drop), Err(libc::ENOTSUP));
    let m = Mmap::private(4 * ps());
    // SAFETY: rejected before anything is registered.
    let rc = unsafe { ww_watch(m.base as *mut c_void, m.len) };
    assert_eq!(rc, libc::ENOTSUP);
    assert_eq!(ww_init(1), libc::ENOTSUP);
}

/// A process that changed uid is not dumpable: its /proc/self files
/// belong to root and it cannot open /proc/self/pagemap. Written is then
/// unavailable with that reason, and AUTO picks the next backend.
fn non_dumpable() {
    // SAFETY: plain credential syscalls on this process.
    unsafe {
        assert_eq!(libc::setresgid(65534, 65534, 65534), 0, "setresgid");
        assert_eq!(libc::setresuid(65534, 65534, 65534), 0, "setresuid");
        assert_eq!(libc::prctl(libc::PR_GET_DUMPABLE), 0, "no longer dumpable");
    }
    let why = writewatch::probe_backend(writewatch::BackendKind::Written)
        .expect_err("written must be unavailable");
    assert!(why.contains("/proc/self/pagemap"), "the reason: {why}");
    report(format!("non-dumpable: written unavailable: {why}"));
    assert_eq!(ww_init(1), libc::ENOTSUP, "ww_init(WW_BACKEND_WRITTEN)");
    assert_eq!(ww_init(0), 0);
    match alloc(4 * ps()) {
        Ok(p) => {
            assert_ne!(ww_active_backend(), 1);
            poke(p, 1);
            assert_eq!(get(p, 4, true), Ok(vec![0]));
            free(p);
            report(format!(
                "non-dumpable: AUTO fell back to {}",
                backend_name()
            ));
        }
        Err(e) => {
            assert_eq!((e, ww_available_backends()), (libc::ENOTSUP, 0));
            report("non-dumpable: no other backend in this build: ENOTSUP".into());
        }
    }
}

#[test]
fn child() {
    let Some(case) = child_case() else { return };
    match case.as_str() {
        "nofile-first-use" => nofile_first_use(),
        "nofile-after-use" => nofile_after_use(),
        "nomem-first-use" => nomem_first_use(),
        "nomem-alloc" => nomem_alloc(),
        "seccomp-uffd" => seccomp_uffd(),
        "seccomp-uffd-explicit" => seccomp_uffd_explicit(),
        "non-dumpable" => non_dumpable(),
        other => panic!("unknown child case {other}"),
    }
}

// ---------------------------------------------------------------------------
// The tests (parent side)
// ---------------------------------------------------------------------------

fn show(out: &str) {
    // libtest prints "test child ... " before the first line of output.
    for l in out
        .lines()
        .filter_map(|l| l.find("exhaustion:").map(|i| &l[i..]))
    {
        println!("{l}");
    }
}

#[test]
fn out_of_descriptors_before_first_use() {
    let kind = require_backend!();
    show(&run_child(
        "nofile-first-use",
        &[("WW_EXPECT", kind.name())],
    ));
}

#[test]
fn out_of_descriptors_while_running() {
    require_backend!();
    show(&run_child("nofile-after-use", &[]));
}

#[test]
fn out_of_address_space_before_first_use() {
    let kind = require_backend!();
    show(&run_child("nomem-first-use", &[("WW_EXPECT", kind.name())]));
}

#[test]
fn out_of_address_space_in_alloc() {
    require_backend!();
    show(&run_child("nomem-alloc", &[]));
}

#[test]
fn userfaultfd_refused_by_seccomp() {
    // Independent of WW_BACKEND: the child asks for AUTO itself.
    show(&run_child("seccomp-uffd", &[]));
    show(&run_child(
        "seccomp-uffd-explicit",
        &[("WW_BACKEND", "written")],
    ));
}

#[test]
fn non_dumpable_process_after_dropping_privileges() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        println!("SKIP non_dumpable_process_after_dropping_privileges: needs root to change uid");
        return;
    }
    // The case checks why `written` becomes unavailable, so it needs a
    // kernel where `written` is available to begin with.
    if let Err(why) = writewatch::probe_backend(writewatch::BackendKind::Written) {
        println!(
            "SKIP non_dumpable_process_after_dropping_privileges: written unavailable here anyway: {why}"
        );
        return;
    }
    show(&run_child("non-dumpable", &[]));
}
