//! The soft-dirty backend: not implemented yet (its own issue); reported
//! unavailable so AUTO skips it and `ww_init` answers ENOTSUP.

use crate::error::{Error, Result};

/// Placeholder: always unavailable.
pub fn probe() -> std::result::Result<(), String> {
    Err("not implemented in this build".into())
}

/// Always `ENOTSUP`.
pub fn instance() -> Result<&'static dyn super::Backend> {
    Err(Error::NOTSUP)
}

/// Placeholder: the soft-dirty backend claims no faults.
pub(crate) fn on_fault(_r: &crate::registry::Region, _addr: usize) -> bool {
    false
}
