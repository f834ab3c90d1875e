//! Memory-management syscalls (mmap(2), munmap(2), mprotect(2),
//! madvise(2), mincore(2)) and a reader for `/proc/self/maps` (proc_pid_maps(5)).

use std::io;

use super::cvt;

/// `mmap(NULL, len, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE)`:
/// reserves address space that faults on any access. `MAP_NORESERVE` so a
/// large sparse reservation is not refused by overcommit accounting when
/// parts of it are later made writable.
pub fn reserve(len: usize) -> io::Result<usize> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a fresh anonymous mapping at an address the kernel picks
    // cannot overlap or alias any existing Rust object.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p as usize)
    }
}

/// `munmap(addr, len)`.
///
/// # Safety
/// Nothing may still reference memory in the range.
pub unsafe fn unmap(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: the caller guarantees the range is no longer referenced.
    cvt(unsafe { libc::munmap(addr as *mut libc::c_void, len) }.into()).map(drop)
}

/// `mprotect(addr, len, prot)`.
///
/// # Safety
/// The range must be memory this crate manages (or the caller asked us to
/// change); removing access from memory Rust code still reads is the
/// caller's responsibility.
pub unsafe fn protect(addr: usize, len: usize, prot: i32) -> io::Result<()> {
    // SAFETY: mprotect only changes page permissions; the caller vouches
    // for the range.
    cvt(unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) }.into()).map(drop)
}

/// `madvise(addr, len, advice)` for advice that never changes contents
/// (`MADV_NOHUGEPAGE`, `MADV_POPULATE_WRITE`, ...).
pub fn advise(addr: usize, len: usize, advice: i32) -> io::Result<()> {
    // SAFETY: the advice values used by this crate do not discard data,
    // so no Rust-visible memory changes.
    cvt(unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) }.into()).map(drop)
}

/// True if the page at `addr` (page aligned) is mapped: mincore(2) fails
/// with `ENOMEM` exactly for unmapped addresses. Allocates nothing.
pub fn page_is_mapped(addr: usize) -> bool {
    let mut vec = [0u8; 1];
    // SAFETY: mincore writes one byte per page of the one-page range into
    // `vec`, which has room for it; it never touches the page itself.
    unsafe { libc::mincore(addr as *mut libc::c_void, 1, vec.as_mut_ptr()) == 0 }
}

/// Reads `/proc/self/maps` into `buf` (cleared first) without growing it:
/// only its spare capacity is used, so this allocates nothing (for code
/// that must not allocate). Returns `Ok(false)` if the text did not fit.
pub fn read_maps_into(buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    let path = c"/proc/self/maps";
    // SAFETY: `path` is NUL-terminated; open returns a new fd or -1.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }.into())?
        as libc::c_int;
    let result = loop {
        let (len, spare) = (buf.len(), buf.capacity() - buf.len());
        if spare == 0 {
            break Ok(false);
        }
        // SAFETY: reads at most `spare` bytes into the vector's unused
        // capacity, which is allocated and writable.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().add(len).cast(), spare) };
        match n {
            0 => break Ok(true),
            n if n > 0 => {
                // SAFETY: the kernel initialised `n <= spare` more bytes.
                unsafe { buf.set_len(len + n as usize) };
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    break Err(e);
                }
            }
        }
    };
    // SAFETY: `fd` is ours and not used after this.
    unsafe { libc::close(fd) };
    result
}

/// `(start, end, writable)` of each line of `/proc/self/maps` text, in
/// address order, parsed without allocating.
pub fn maps_ranges(text: &[u8]) -> impl Iterator<Item = (usize, usize, bool)> + '_ {
    maps_perms(text).map(|(s, e, p)| (s, e, p[1] == b'w'))
}

/// `(start, end, perms)` (`b"rw-p"`) of each line of `/proc/self/maps`
/// text, in address order, parsed without allocating.
pub fn maps_perms(text: &[u8]) -> impl Iterator<Item = (usize, usize, [u8; 4])> + '_ {
    fn hex(s: &[u8]) -> Option<usize> {
        let mut v = 0usize;
        for &c in s {
            let d = (c as char).to_digit(16)? as usize;
            v = v.checked_mul(16)?.checked_add(d)?;
        }
        (!s.is_empty()).then_some(v)
    }
    text.split(|&b| b == b'\n').filter_map(|line| {
        let dash = line.iter().position(|&b| b == b'-')?;
        let space = line.iter().position(|&b| b == b' ')?;
        let (start, end) = (hex(line.get(..dash)?)?, hex(line.get(dash + 1..space)?)?);
        Some((start, end, line.get(space + 1..space + 5)?.try_into().ok()?))
    })
}

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Start address.
    pub start: usize,
    /// End address (exclusive).
    pub end: usize,
    /// `rwxp` / `rw-s` permission string.
    pub perms: [u8; 4],
    /// Inode number (0 for anonymous memory).
    pub inode: u64,
    /// Path or pseudo-path (`[heap]`, `/memfd:x (deleted)`), may be empty.
    pub path: String,
}

impl Mapping {
    /// Readable and writable.
    pub fn is_rw(&self) -> bool {
        self.perms[0] == b'r' && self.perms[1] == b'w'
    }

    /// Anonymous memory, private or shared (shmem: `/dev/zero`, memfd,
    /// SysV shm), as opposed to a regular file.
    pub fn is_anonymous(&self) -> bool {
        self.inode == 0
            || self.path.starts_with("/memfd:")
            || self.path.starts_with("/dev/zero")
            || self.path.starts_with("/SYSV")
    }
}

/// The mappings that overlap `[start, end)`, in address order.
pub fn mappings_in(start: usize, end: usize) -> io::Result<Vec<Mapping>> {
    let text = std::fs::read_to_string("/proc/self/maps")?;
    Ok(text
        .lines()
        .filter_map(parse_maps_line)
        .filter(|m| m.start < end && start < m.end)
        .collect())
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (lo, hi) = fields.next()?.split_once('-')?;
    let perms: [u8; 4] = fields.next()?.as_bytes().try_into().ok()?;
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start().to_owned();
    Some(Mapping {
        start: usize::from_str_radix(lo, 16).ok()?,
        end: usize::from_str_radix(hi, 16).ok()?,
        perms,
        inode,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let m = parse_maps_line("7f00-7f10 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(
            (m.start, m.end, m.inode, m.is_rw(), m.is_anonymous()),
            (0x7f00, 0x7f10, 0, true, true)
        );
        let f = parse_maps_line("5000-6000 r--p 00001000 08:01 1234   /usr/bin/cat").unwrap();
        assert_eq!(
            (f.is_rw(), f.is_anonymous(), f.path.as_str()),
            (false, false, "/usr/bin/cat")
        );
        let s = parse_maps_line("1000-2000 rw-s 00000000 00:01 77 /memfd:x (deleted)").unwrap();
        assert!(s.is_anonymous());
    }

    #[test]
    #[cfg_attr(miri, ignore = "reads /proc/self/maps (Miri isolates the file system)")]
    fn maps_ranges_without_allocation() {
        let text =
            b"7f00-7f10 rw-p 00000000 00:00 0 \n5000-6000 r--p 00001000 08:01 1234   /bin/x\n";
        let got: Vec<_> = maps_ranges(text).collect();
        assert_eq!(got, vec![(0x7f00, 0x7f10, true), (0x5000, 0x6000, false)]);
        let mut buf = Vec::with_capacity(1 << 20);
        assert!(read_maps_into(&mut buf).unwrap());
        assert!(maps_ranges(&buf).count() > 3);
        let mut tiny = Vec::with_capacity(16);
        let cap = tiny.capacity();
        assert!(
            !read_maps_into(&mut tiny).unwrap(),
            "does not fit and does not grow"
        );
        assert_eq!(tiny.capacity(), cap);
    }
}

/// A fork detector that costs one load: a private page with
/// `MADV_WIPEONFORK` (Linux 4.14+), which reads as zeros in any child
/// process, however it was created (glibc `fork`, `vfork`+not-exec, raw
/// `clone` without `CLONE_VM`), where `pthread_atfork` handlers do not run
/// for the raw cases. Made on first use, never freed (one page, one VMA).
pub mod fork_canary {
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    /// Address of the canary page; 0 = not made yet, 1 = unavailable.
    static PAGE: AtomicUsize = AtomicUsize::new(0);

    fn byte() -> Option<&'static AtomicU8> {
        let p = PAGE.load(Ordering::Acquire);
        // SAFETY: a value above 1 is the address of our page, mapped
        // read-write for the life of the process and used only through
        // this atomic byte (zero-filled in a child, which is a valid u8).
        (p > 1).then(|| unsafe { &*(p as *const AtomicU8) })
    }

    /// Makes the canary (if possible) and marks this process as its owner.
    /// Call once, serialized, before [`same_process`] is relied on.
    pub fn init() {
        if PAGE.load(Ordering::Acquire) == 0 {
            let ps = crate::page::page_size();
            let made = super::reserve(ps).and_then(|p| {
                // SAFETY: our fresh reservation, referenced by nothing yet.
                let ready = unsafe { super::protect(p, ps, libc::PROT_READ | libc::PROT_WRITE) }
                    .and_then(|()| super::advise(p, ps, libc::MADV_WIPEONFORK));
                if ready.is_err() {
                    // SAFETY: as above; nothing references it.
                    let _ = unsafe { super::unmap(p, ps) };
                }
                ready.map(|()| p)
            });
            PAGE.store(made.unwrap_or(1), Ordering::Release);
        }
        mark();
    }

    /// After a fork was handled: this process owns the canary again.
    pub fn mark() {
        if let Some(b) = byte() {
            b.store(1, Ordering::Release);
        }
    }

    /// True if this is the process that last called [`mark`]; false in a
    /// child that has not (or if the canary is unavailable: ask getpid).
    pub fn same_process() -> bool {
        byte().is_some_and(|b| b.load(Ordering::Acquire) == 1)
    }
}
