//! The `ww_*` C functions, in header order. Each body is the same shape:
//! check pointers and arguments in the order the contract fixes, call one
//! `crate::api` function, write outputs only on success, map the error to
//! its errno. No kernel calls here.

#![allow(non_camel_case_types)]

pub mod boundary;
pub mod types;

use std::ffi::{c_char, c_int, c_void};

use boundary::{errno_of, ffi_boundary, set_errno};
use types::*;

use crate::api;
use crate::backend::{BackendKind, WrittenRange};
use crate::page::{PageRange, page_size};

/// Entries of an output array worth looking at: the caller's capacity,
/// but never more than the pages of the range (so the slice we build never
/// extends past what the call may write). `None` if the range wraps.
fn useful_capacity(cap: usize, base: *mut c_void, size: usize) -> Option<usize> {
    Some(cap.min(PageRange::covering(base as usize, size)?.pages()))
}

/// See `include/writewatch.h`.
#[unsafe(no_mangle)]
pub extern "C" fn ww_init(backend: ww_backend) -> c_int {
    ffi_boundary!(match BackendKind::from_raw(backend) {
        Some(kind) => errno_of(api::init(kind)),
        None => libc::EINVAL,
    })
}

/// See `include/writewatch.h`.
#[unsafe(no_mangle)]
pub extern "C" fn ww_active_backend() -> ww_backend {
    ffi_boundary!(api::active_backend() as ww_backend)
}

/// See `include/writewatch.h`.
#[unsafe(no_mangle)]
pub extern "C" fn ww_backend_name(backend: ww_backend) -> *const c_char {
    ffi_boundary!(match BackendKind::from_raw(backend) {
        Some(kind) => kind.c_name().as_ptr(),
        None => std::ptr::null(),
    })
}

/// See `include/writewatch.h`.
#[unsafe(no_mangle)]
pub extern "C" fn ww_available_backends() -> u32 {
    ffi_boundary!(api::available_backends())
}

/// See `include/writewatch.h`.
#[unsafe(no_mangle)]
pub extern "C" fn ww_alloc(size: usize) -> *mut c_void {
    ffi_boundary!(match api::alloc(size) {
        Ok(base) => base as *mut c_void,
        Err(e) => {
            set_errno(e.errno());
            std::ptr::null_mut()
        }
    })
}

/// See `include/writewatch.h`.
///
/// # Safety
/// Nothing may use the region after this returns 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ww_free(base: *mut c_void) -> c_int {
    // SAFETY: the caller gives up the region (the header's contract).
    ffi_boundary!(errno_of(unsafe { api::free(base as usize) }))
}

/// See `include/writewatch.h`.
///
/// # Safety
/// The memory must stay mapped until `ww_unwatch`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ww_watch(base: *mut c_void, size: usize) -> c_int {
    // SAFETY: the caller keeps the memory mapped (the header's contract).
    ffi_boundary!(errno_of(unsafe { api::watch(base as usize, size) }))
}

/// See `include/writewatch.h`.
#[unsafe(no_mangle)]
pub extern "C" fn ww_unwatch(base: *mut c_void) -> c_int {
    ffi_boundary!(errno_of(api::unwatch(base as usize)))
}

/// See `include/writewatch.h`.
///
/// # Safety
/// Non-NULL pointers must be valid for the access the header describes;
/// `addresses` for `*count` entries.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ww_get_write_watch(
    flags: u32,
    base: *mut c_void,
    size: usize,
    addresses: *mut *mut c_void,
    count: *mut usize,
    granularity: *mut u32,
) -> c_int {
    ffi_boundary!({
        if count.is_null() || granularity.is_null() {
            return libc::EFAULT;
        }
        // SAFETY: checked non-NULL; the caller provides a valid uintptr_t.
        let cap = unsafe { *count };
        if cap == 0 || size == 0 || flags & !WW_FLAG_RESET != 0 {
            return libc::EINVAL;
        }
        if addresses.is_null() {
            return libc::EFAULT;
        }
        let Some(cap) = useful_capacity(cap, base, size) else {
            return libc::EINVAL;
        };
        // SAFETY: the caller provides `*count` writable entries, and `cap`
        // is no more; `void *` and `usize` have the same layout.
        let out = unsafe { std::slice::from_raw_parts_mut(addresses.cast::<usize>(), cap) };
        match api::get_write_watch(flags & WW_FLAG_RESET != 0, base as usize, size, out) {
            Ok(n) => {
                // SAFETY: both checked non-NULL above.
                unsafe { *count = n };
                // SAFETY: as above.
                unsafe { *granularity = page_size() as u32 };
                0
            }
            Err(e) => e.errno(),
        }
    })
}

/// See `include/writewatch.h`.
#[unsafe(no_mangle)]
pub extern "C" fn ww_reset_write_watch(base: *mut c_void, size: usize) -> c_int {
    ffi_boundary!(errno_of(api::reset_write_watch(base as usize, size)))
}

/// See `include/writewatch.h`.
///
/// # Safety
/// Non-NULL pointers must be valid; `ranges` for `*count` entries.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ww_get_written_ranges(
    flags: u32,
    base: *mut c_void,
    size: usize,
    ranges: *mut ww_range,
    count: *mut usize,
) -> c_int {
    ffi_boundary!({
        if count.is_null() {
            return libc::EFAULT;
        }
        // SAFETY: checked non-NULL; the caller provides a valid size_t.
        let cap = unsafe { *count };
        if cap == 0 || size == 0 || flags & !WW_FLAG_RESET != 0 {
            return libc::EINVAL;
        }
        if ranges.is_null() {
            return libc::EFAULT;
        }
        let Some(cap) = useful_capacity(cap, base, size) else {
            return libc::EINVAL;
        };
        // SAFETY: the caller provides `*count` writable entries and `cap` is
        // no more; `ww_range` and `WrittenRange` have the same layout
        // (asserted in `types`).
        let out = unsafe { std::slice::from_raw_parts_mut(ranges.cast::<WrittenRange>(), cap) };
        match api::get_written_ranges(flags & WW_FLAG_RESET != 0, base as usize, size, out) {
            Ok(n) => {
                // SAFETY: checked non-NULL above.
                unsafe { *count = n };
                0
            }
            Err(e) => e.errno(),
        }
    })
}

/// See `include/writewatch.h`.
///
/// # Safety
/// The caller must not rely on access it removes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ww_protect(base: *mut c_void, size: usize, prot: c_int) -> c_int {
    // SAFETY: the caller asked for this protection on its own memory.
    ffi_boundary!(errno_of(unsafe { api::protect(base as usize, size, prot) }))
}

/// See `include/writewatch.h`. No panic boundary: this runs in signal
/// context and is panic-free by construction (and a panic here would
/// abort, since Rust 1.81, rather than unwind into C).
#[unsafe(no_mangle)]
pub extern "C" fn ww_handle_fault(fault_addr: *mut c_void) -> c_int {
    api::handle_fault(fault_addr as usize) as c_int
}

/// See `include/writewatch.h`.
#[unsafe(no_mangle)]
pub extern "C" fn ww_prepare_kernel_write(addr: *mut c_void, len: usize) -> c_int {
    ffi_boundary!(errno_of(api::prepare_kernel_write(addr as usize, len)))
}

/// See `include/writewatch.h`.
///
/// # Safety
/// `out` must be NULL or valid for writing a `ww_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ww_get_stats(out: *mut ww_stats) -> c_int {
    ffi_boundary!({
        if out.is_null() {
            return libc::EFAULT;
        }
        // SAFETY: checked non-NULL; the caller provides a writable ww_stats.
        unsafe { out.write(api::stats()) };
        0
    })
}

/// See `include/writewatch.h`.
#[unsafe(no_mangle)]
pub extern "C" fn ww_version() -> *const c_char {
    const VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
        Ok(v) => v,
        Err(_) => panic!("version has a NUL"),
    };
    VERSION.as_ptr()
}
