//! Model-based property test: random sequences of C API calls (alloc,
//! free, watch, unwatch, writes of every kind, gets in both forms with
//! random capacities and sub-ranges, resets, protection changes, bad
//! arguments of every class) run against the library and against the
//! model in `common/model.rs`, which must agree exactly (see there).
//!
//! Deterministic: case `i` uses seed `WW_FUZZ_SEED + i`.
//!
//! - `WW_FUZZ_ITERS`: number of cases. Default: up to 400, stopping after
//!   about 3 seconds (a CI run); set it for soak runs.
//! - `WW_FUZZ_SEED`: first seed (decimal or 0x-hex), default 0x5757_0000.
//! - `WW_FUZZ_OPS`: ops per case, default 300.
//!
//! On failure it prints the seed (replay: `WW_FUZZ_SEED=<seed>
//! WW_FUZZ_ITERS=1`), the op sequence, and a shrunk sequence.
//!
//! One test in this binary: the model owns every region of the process
//! (the statistics it checks are process-wide).

mod common;
#[path = "common/model.rs"]
mod model;

use std::time::{Duration, Instant};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => v.replace('_', "").parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("bad {name}={v}")))
}

#[test]
fn model_agrees_with_library() {
    let kind = require_backend!();
    let explicit = env_u64("WW_FUZZ_ITERS");
    let cases = explicit.unwrap_or(400);
    let budget = if explicit.is_some() {
        Duration::MAX
    } else {
        Duration::from_secs(3)
    };
    let seed0 = env_u64("WW_FUZZ_SEED").unwrap_or(0x5757_0000);
    let nops = env_u64("WW_FUZZ_OPS").unwrap_or(300) as usize;
    let t0 = Instant::now();
    let mut total = model::Tally::default();
    let mut done = 0;
    for i in 0..cases {
        if t0.elapsed() > budget {
            break;
        }
        let seed = seed0.wrapping_add(i);
        let ops = model::generate(&mut model::XorShift::new(seed), nops);
        match model::run(&ops) {
            Ok(t) => total.add(&t),
            Err(f) => {
                let full = f.report(&ops);
                let shrunk = match model::shrink(&ops, 3000) {
                    Some((small, sf)) => sf.report(&small),
                    None => "(did not fail again when re-run: flaky?)".into(),
                };
                panic!(
                    "model[{}]: seed {seed:#x} FAILED\n\
                     replay: WW_BACKEND={} WW_FUZZ_SEED={seed:#x} WW_FUZZ_ITERS=1 \
                     cargo test --release --test model\n\n{full}\n\
                     shrunk sequence:\n{shrunk}",
                    kind.name(),
                    kind.name()
                );
            }
        }
        done += 1;
    }
    println!(
        "model[{}]: {done} cases x {nops} ops (seeds {seed0:#x}..{:#x}) in {:.1?}: \
         {} ops, {} gets, {} pages reported, {} errors checked, {} extra pages, {} ops skipped",
        kind.name(),
        seed0.wrapping_add(done.max(1) - 1),
        t0.elapsed(),
        total.ops,
        total.gets,
        total.pages_reported,
        total.errors_checked,
        total.extras,
        total.skipped
    );
    assert!(done > 0, "no case ran");
}

/// Writes the committed seed corpus of the libFuzzer target
/// (`fuzz/corpus/api/seed-*`): PRNG bytes, which the target decodes into
/// the same op sequences this test runs. Touches no library state.
/// `cargo test --release --test model -- --ignored write_fuzz_corpus`
#[test]
#[ignore]
fn write_fuzz_corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/api");
    std::fs::create_dir_all(dir).unwrap();
    for (i, len) in [64usize, 256, 512, 1024, 2048, 4096, 4096, 8192]
        .into_iter()
        .enumerate()
    {
        let mut rng = model::XorShift::new(0x5757_0000 + i as u64);
        let bytes: Vec<u8> = (0..len).map(|_| (rng.next_u64() >> 56) as u8).collect();
        std::fs::write(format!("{dir}/seed-{i}"), bytes).unwrap();
    }
}
