//! # writewatch
//!
//! Which pages of this process's memory were written since you last asked:
//! Win32 `GetWriteWatch`/`ResetWriteWatch` for Linux, done with the kernel's
//! page tables.
//!
//! The crate builds `libwritewatch.so` (C API: `include/writewatch.h`,
//! [`capi`]) and a Rust library ([`WatchedAlloc`], [`WatchedRange`] and the
//! raw-address functions in this module).
//!
//! Layers, each depending only on those below: [`capi`] (argument checks,
//! errno) → [`api`] (selection, validation, regions) → [`backend`] (one
//! kernel mechanism each) → [`sys`] (syscalls, ioctls, `/proc`). Beside
//! them: [`registry`], [`signal`], [`page`], [`stats`], [`bitmap`].
//!
//! Nothing runs at load time: the backend is probed and chosen on first use.

pub mod api;
pub mod backend;
pub mod bitmap;
pub mod capi;
pub mod error;
pub mod page;
pub mod registry;
pub mod signal;
pub mod stats;
pub mod sys;

pub use api::*;
pub use backend::{BackendKind, WrittenRange};
pub use error::{Error, Result};
pub use page::page_size;
pub use stats::Stats;
