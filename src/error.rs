//! The crate's error type: an errno value, because that is what crosses the
//! C boundary. This is the only place errno numbers are named.

use std::fmt;
use std::io;

/// An errno value. `Display` gives the system's text for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error(i32);

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Bad argument: size 0, unaligned, range not in one watched region, unknown flags.
    pub const INVAL: Error = Error(libc::EINVAL);
    /// A required pointer was NULL.
    pub const FAULT: Error = Error(libc::EFAULT);
    /// Already watched, or the backend is already chosen and different.
    pub const BUSY: Error = Error(libc::EBUSY);
    /// The backend is not available on this kernel.
    pub const NOTSUP: Error = Error(libc::ENOTSUP);
    /// Out of memory (or of mappings).
    pub const NOMEM: Error = Error(libc::ENOMEM);
    /// An internal failure (a panic caught at the C boundary).
    pub const IO: Error = Error(libc::EIO);

    /// Wraps a raw errno value; 0 and negatives become `EIO`.
    pub fn from_errno(errno: i32) -> Error {
        if errno > 0 { Error(errno) } else { Error::IO }
    }

    /// The calling thread's current `errno`.
    pub fn last_os_error() -> Error {
        Error::from(io::Error::last_os_error())
    }

    /// The errno value.
    pub fn errno(self) -> i32 {
        self.0
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::from_errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::from_raw_os_error(e.0)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Error({}: {})",
            self.0,
            io::Error::from_raw_os_error(self.0)
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&io::Error::from_raw_os_error(self.0), f)
    }
}

impl std::error::Error for Error {}
