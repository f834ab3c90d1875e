//! The C boundary: every `ww_*` body runs inside [`ffi_boundary!`], which
//! catches panics (none may unwind into C) and turns them into a fixed
//! failure value per return type, chosen by [`FailureValue`].

/// The value a C function returns when its body panicked.
pub trait FailureValue {
    /// The failure value.
    fn failure() -> Self;
}

impl FailureValue for i32 {
    /// `EIO`: an internal error.
    fn failure() -> i32 {
        libc::EIO
    }
}

impl FailureValue for u32 {
    /// No bits / `WW_BACKEND_AUTO`.
    fn failure() -> u32 {
        0
    }
}

impl<T> FailureValue for *mut T {
    /// NULL, with errno set to `EIO`.
    fn failure() -> *mut T {
        set_errno(libc::EIO);
        std::ptr::null_mut()
    }
}

impl<T> FailureValue for *const T {
    /// NULL.
    fn failure() -> *const T {
        std::ptr::null()
    }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// Runs `$body` (an expression of the function's return type), returning
/// [`FailureValue::failure`] if it panics.
macro_rules! ffi_boundary {
    ($body:expr) => {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| $body)) {
            Ok(v) => v,
            Err(_) => $crate::capi::boundary::FailureValue::failure(),
        }
    };
}
pub(crate) use ffi_boundary;

/// `Result<(), Error>` → 0 or the errno value.
pub fn errno_of(r: crate::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.errno(),
    }
}
