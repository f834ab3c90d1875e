//! Fuzz bytes → a sequence of C API calls, run against the library and the
//! model of the contract in `tests/common/model.rs` (the same model as the
//! property test `tests/model.rs`, which decodes ops from a PRNG instead).
//! Any disagreement panics with the decoded op list.
//!
//! The backend is the process's: `WW_BACKEND=written|soft-dirty|mprotect`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/model.rs"]
mod model;

fuzz_target!(|data: &[u8]| {
    let ops = model::generate(&mut model::Bytes(data), 512);
    if let Err(f) = model::run(&ops) {
        panic!(
            "model[{}] disagrees with the library\n{}",
            writewatch::active_backend().name(),
            f.report(&ops)
        );
    }
});
