//! `#[repr(C)]` types of `include/writewatch.h`, with layout checks that
//! mirror the `_Static_assert`s in `ffi/abi_check.c`.

use std::ffi::c_void;

pub use crate::stats::Stats as ww_stats;

/// `ww_backend` (a C enum: `u32` on every Linux ABI we target).
pub type ww_backend = u32;
/// `WW_BACKEND_AUTO`.
pub const WW_BACKEND_AUTO: ww_backend = 0;

/// `WW_FLAG_RESET`.
pub const WW_FLAG_RESET: u32 = 1;

/// `ww_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ww_range {
    /// Start of the run.
    pub start: *mut c_void,
    /// Length in bytes.
    pub size: usize,
}

const _: () = assert!(size_of::<ww_range>() == 2 * size_of::<usize>());
const _: () = assert!(size_of::<ww_range>() == size_of::<crate::WrittenRange>());
const _: () = assert!(align_of::<ww_range>() == align_of::<crate::WrittenRange>());
const _: () = assert!(size_of::<ww_stats>() == 48);
const _: () = assert!(std::mem::offset_of!(ww_stats, faults_handled) == 40);
const _: () = assert!(size_of::<*mut c_void>() == size_of::<usize>());
