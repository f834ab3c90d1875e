//! After fork(), the child misses no write made after the fork (its first
//! get may report extra pages) and the parent is unaffected. One test per
//! file: fork from a process whose other threads could hold library locks
//! is outside the contract.

mod common;

use common::*;

#[test]
fn child_tracks_writes_and_parent_is_unaffected() {
    require_backend!();
    fork_scenario(fork);
}
