//! Kernel ABI items the `libc` crate lacks, spelled as the kernel spells them.
//!
//! Structs and constants come from `linux-raw-sys` (bindgen output of the
//! kernel's uapi headers); the `PAGEMAP_SCAN` ioctl number is missing there
//! and is computed here. Tests pin every value we rely on, because copies of
//! these constants in public code disagree (e.g. `UFFD_FEATURE_WP_ASYNC`).
//!
//! References:
//! - `include/uapi/linux/fs.h` (`PAGEMAP_SCAN`, `struct pm_scan_arg`,
//!   `struct page_region`), PAGEMAP_SCAN(2const),
//!   `Documentation/admin-guide/mm/pagemap.rst`
//! - `include/uapi/linux/userfaultfd.h`, userfaultfd(2), ioctl_userfaultfd(2),
//!   `Documentation/admin-guide/mm/userfaultfd.rst`
//! - `Documentation/admin-guide/mm/soft-dirty.rst` (pagemap bit 55)
//! - `include/uapi/asm-generic/siginfo.h` (`SEGV_ACCERR`), sigaction(2)

#![allow(non_camel_case_types)]

pub use linux_raw_sys::general::{
    PAGE_IS_HUGE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SOFT_DIRTY, PAGE_IS_SWAPPED,
    PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, SEGV_ACCERR, UFFD_API,
    UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED, UFFD_USER_MODE_ONLY,
    UFFDIO_REGISTER_MODE_WP, page_region, pm_scan_arg, uffdio_api, uffdio_range, uffdio_register,
    uffdio_writeprotect,
};
pub use linux_raw_sys::ioctl::{
    UFFDIO_API, UFFDIO_REGISTER, UFFDIO_UNREGISTER, UFFDIO_WRITEPROTECT,
};

/// `_IOWR(type, nr, size)` from `include/uapi/asm-generic/ioctl.h`
/// (x86, arm64, riscv: dir bits 30..31, size 16..29, type 8..15, nr 0..7).
const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    const IOC_READ_WRITE: u32 = 3;
    (IOC_READ_WRITE << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `#define PAGEMAP_SCAN _IOWR(PAGEMAP_IOCTL_MAGIC, 16, struct pm_scan_arg)`
/// with `PAGEMAP_IOCTL_MAGIC 'f'` (linux/fs.h, Linux 6.7+).
pub const PAGEMAP_SCAN: u32 = iowr(b'f', 16, size_of::<pm_scan_arg>());

/// `UFFDIO_WRITEPROTECT_MODE_WP` (userfaultfd.h; an enum-like `#define`
/// that linux-raw-sys does not carry): set the write-protect bit.
pub const UFFDIO_WRITEPROTECT_MODE_WP: u32 = 1 << 0;
/// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`: do not wake faulting threads.
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u32 = 1 << 1;

/// `/proc/PID/pagemap` entry bit 55: the PTE is soft-dirty (soft-dirty.rst).
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// Entry bit 57: the PTE is uffd-wp write-protected (since 5.13).
pub const PM_UFFD_WP: u64 = 1 << 57;
/// Entry bit 62: page swapped.
pub const PM_SWAP: u64 = 1 << 62;
/// Entry bit 63: page present.
pub const PM_PRESENT: u64 = 1 << 63;

// Layouts the kernel checks (`pm_scan_arg.size`) or relies on.
const _: () = assert!(size_of::<pm_scan_arg>() == 96);
const _: () = assert!(size_of::<page_region>() == 24);
const _: () = assert!(size_of::<uffdio_api>() == 24);
const _: () = assert!(size_of::<uffdio_range>() == 16);
const _: () = assert!(size_of::<uffdio_register>() == 32);
const _: () = assert!(size_of::<uffdio_writeprotect>() == 24);

#[cfg(test)]
mod tests {
    use super::*;

    /// Values as in mainline `include/uapi/linux/{fs,userfaultfd}.h`.
    #[test]
    fn constants_match_mainline() {
        assert_eq!(PAGEMAP_SCAN, 0xC060_6610);
        assert_eq!(PM_SCAN_WP_MATCHING, 1 << 0);
        assert_eq!(PM_SCAN_CHECK_WPASYNC, 1 << 1);
        assert_eq!(PAGE_IS_WRITTEN, 1 << 1);
        assert_eq!(PAGE_IS_PRESENT, 1 << 3);
        assert_eq!(PAGE_IS_SWAPPED, 1 << 4);
        assert_eq!(PAGE_IS_PFNZERO, 1 << 5);
        assert_eq!(PAGE_IS_HUGE, 1 << 6);
        assert_eq!(PAGE_IS_SOFT_DIRTY, 1 << 7);
        assert_eq!(SEGV_ACCERR, 2);
        assert_eq!(UFFD_API, 0xAA);
        assert_eq!(UFFD_USER_MODE_ONLY, 1);
        assert_eq!(UFFD_FEATURE_WP_UNPOPULATED, 1 << 13);
        assert_eq!(UFFD_FEATURE_WP_ASYNC, 1 << 15);
        assert_eq!(UFFDIO_REGISTER_MODE_WP, 1 << 1);
        assert_eq!(UFFDIO_WRITEPROTECT_MODE_WP, 1);
        assert_eq!(UFFDIO_WRITEPROTECT_MODE_DONTWAKE, 2);
        assert_eq!(UFFDIO_API, 0xC018_AA3F);
        assert_eq!(UFFDIO_REGISTER, 0xC020_AA00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_AA01);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xC018_AA06);
    }

    /// Compares with the installed C headers when they are new enough to
    /// have PAGEMAP_SCAN (the dev box's /usr/include is 6.1: then it says so).
    #[test]
    fn constants_match_installed_headers() {
        let src = "#include <linux/fs.h>\n#include <linux/userfaultfd.h>\n#include <stdio.h>\n\
            int main(void){\n#ifdef PAGEMAP_SCAN\nprintf(\"%lu %u\\n\",(unsigned long)PAGEMAP_SCAN,\
            (unsigned)UFFD_FEATURE_WP_ASYNC);return 0;\n#else\nreturn 77;\n#endif\n}\n";
        let dir = std::env::temp_dir().join(format!("ww-uapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("u.c"), src).unwrap();
        let cc = std::process::Command::new("cc")
            .args(["-o", "u", "u.c"])
            .current_dir(&dir)
            .status();
        if !matches!(cc, Ok(s) if s.success()) {
            println!("SKIP constants_match_installed_headers: no C compiler or kernel headers");
            return;
        }
        let out = std::process::Command::new(dir.join("u")).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        if out.status.code() == Some(77) {
            println!(
                "SKIP constants_match_installed_headers: installed headers predate PAGEMAP_SCAN (< 6.7)"
            );
            return;
        }
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text.trim(),
            format!("{} {}", PAGEMAP_SCAN, UFFD_FEATURE_WP_ASYNC)
        );
    }
}
