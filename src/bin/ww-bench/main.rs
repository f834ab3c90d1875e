//! `ww-bench`: the library against the raw kernel mechanisms, side by side
//! in one run.
//!
//! ```text
//! ww-bench [--quick] [--wall] [--rounds N] [--out DIR] [--only SECTION[,SECTION]]
//! ```
//!
//! For every backend `available_backends()` reports here and for the
//! baselines (see `raw.rs`), each case runs in a fresh process (this
//! binary re-executed with `--case ...`), `rounds` times; the order of the
//! implementations alternates from round to round, and each figure is the
//! median over the rounds (each process itself reports the median of its
//! inner repetitions). Results: a table on stdout and
//! `DIR/results.{md,json}` plus `DIR/chart.svg` (default `target/bench`).

mod cases;
mod raw;
mod report;

use std::process::{Command, Stdio};
use std::time::Instant;

use writewatch::BackendKind;

use cases::Pattern;
use report::{Machine, Results, RowKey};

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
/// Rounds of the 1 GiB get/get+reset cases (each process populates 1 GiB).
const BIG_ROUNDS: usize = 3;
/// Longest a single case may run, in seconds (`--child-timeout`, default
/// 120; under qemu TCG the soft-dirty case with 1,000 regions needs more).
static CHILD_TIMEOUT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(120);

fn child_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(CHILD_TIMEOUT.load(std::sync::atomic::Ordering::Relaxed))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--case") {
        child(&args[1..]);
    } else {
        parent(&args);
    }
}

/// The value following `--name`.
fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn num(args: &[String], name: &str, default: usize) -> usize {
    opt(args, name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
    })
}

// ---------------------------------------------------------------------------
// Child: one case, one implementation
// ---------------------------------------------------------------------------

fn child(args: &[String]) {
    let case = args.first().map(String::as_str).unwrap_or("");
    let imp = opt(args, "--impl").expect("--impl");
    let reps = num(args, "--reps", 3);
    let size = num(args, "--size", 64 * MIB);
    let iters = num(args, "--iters", 20000);
    if args.iter().any(|a| a == "--wall") {
        cases::WALL.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if case == "softdirty" {
        let others = num(args, "--others", 1);
        if imp == "raw-clear-refs" {
            cases::softdirty(None, others, reps);
        } else {
            let mut t = raw::tracker(imp).expect("implementation");
            cases::softdirty(Some(&mut *t), others, reps);
        }
        return;
    }
    let mut t = raw::tracker(imp).unwrap_or_else(|| panic!("unknown implementation {imp}"));
    let t = &mut *t;
    match case {
        "write" => cases::write(t, size, reps),
        "scan" => {
            let patterns: Vec<Pattern> = opt(args, "--patterns")
                .expect("--patterns")
                .split(',')
                .map(|p| Pattern::parse(p).unwrap_or_else(|| panic!("bad pattern {p}")))
                .collect();
            cases::scan(t, size, &patterns, reps)
        }
        "sparse" => {
            let p = Pattern::parse(opt(args, "--pattern").expect("--pattern")).expect("pattern");
            cases::sparse(t, size, p, reps)
        }
        "percall" => cases::percall(t, iters),
        "regions" => cases::regions(t, num(args, "--count", 10000), size, iters),
        "mapcount" => cases::mapcount(t, size, reps),
        _ => panic!("unknown case {case}"),
    }
}

// ---------------------------------------------------------------------------
// Parent: the plan, the rounds, the report
// ---------------------------------------------------------------------------

/// One child process to run each round.
struct Job {
    section: &'static str,
    imp: String,
    args: Vec<String>,
    /// Run only in the first this many rounds (the expensive 1 GiB cases).
    max_rounds: usize,
}

/// Jobs whose order alternates between rounds.
type Group = Vec<Job>;

fn job(section: &'static str, case: &str, imp: &str, extra: &[(&str, String)]) -> Job {
    let mut args = vec!["--case".into(), case.into(), "--impl".into(), imp.into()];
    for (k, v) in extra {
        args.push(format!("--{k}"));
        args.push(v.clone());
    }
    Job {
        section,
        imp: imp.into(),
        args,
        max_rounds: usize::MAX,
    }
}

/// Limits a job to the first `n` rounds.
fn at_most(mut j: Job, n: usize) -> Job {
    j.max_rounds = n;
    j
}

fn plan(libs: &[String], quick: bool) -> (Vec<Group>, Vec<String>) {
    let mut groups: Vec<Group> = vec![];
    let mut skipped = vec![];
    let with = |extra: &[&str]| -> Vec<String> {
        libs.iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let s = |v: usize| v.to_string();

    // First and second write.
    let reps = if quick { 2 } else { 3 };
    groups.push(
        with(&["raw-uffd", "raw-uffd-aa", "raw-mprotect", "plain"])
            .iter()
            .map(|i| {
                let extra = [("size", s(64 * MIB)), ("reps", s(reps))];
                job("Writes", "write", i, &extra)
            })
            .collect(),
    );

    // get / get+reset by dirty fraction.
    let patterns = "0,0.1,1,10,100,runs".to_string();
    let scan_impls = with(&[
        "raw-uffd",
        "raw-uffd-aa",
        "raw-uffd-sparse",
        "raw-pagemap",
        "raw-mprotect",
    ]);
    let mut sizes = vec![(64 * MIB, if quick { 3 } else { 5 })];
    if quick {
        skipped.push("1 GiB get/get+reset rows: skipped in --quick mode".into());
    } else {
        sizes.push((GIB, 1));
    }
    for (size, reps) in sizes {
        groups.push(
            scan_impls
                .iter()
                .map(|i| {
                    let extra = [
                        ("size", s(size)),
                        ("reps", s(reps)),
                        ("patterns", patterns.clone()),
                    ];
                    let j = job("Get and get+reset", "scan", i, &extra);
                    if size >= GIB {
                        at_most(j, BIG_ROUNDS)
                    } else {
                        j
                    }
                })
                .collect(),
        );
    }
    // Just above the written backend's DENSE_LIMIT: the sparse strategy.
    if !quick && libs.iter().any(|l| l == "written") {
        let size = writewatch::backend::written::DENSE_LIMIT + 2 * MIB;
        let extra = [
            ("size", s(size)),
            ("reps", s(1)),
            ("patterns", "0,10,100".to_string()),
        ];
        let j = job("Get and get+reset", "scan", "written", &extra);
        groups.push(vec![at_most(j, BIG_ROUNDS)]);
    }

    // Sparse reservation.
    for pattern in ["clustered", "0.1"] {
        groups.push(
            with(&["raw-uffd-sparse", "raw-uffd", "plain"])
                .iter()
                .map(|i| {
                    let extra = [
                        ("size", s(64 * GIB)),
                        ("reps", s(3)),
                        ("pattern", pattern.into()),
                    ];
                    job("Sparse reservation", "sparse", i, &extra)
                })
                .collect(),
        );
    }

    // Per-call cost, and many regions.
    let iters = if quick { 5000 } else { 20000 };
    groups.push(
        with(&["raw-uffd", "raw-uffd-aa", "raw-mprotect"])
            .iter()
            .map(|i| {
                job(
                    "Per call and many regions",
                    "percall",
                    i,
                    &[("iters", s(iters))],
                )
            })
            .collect(),
    );
    groups.push(
        with(&["raw-uffd", "raw-uffd-aa", "raw-mprotect", "plain"])
            .iter()
            .map(|i| {
                let extra = [
                    ("count", s(10000)),
                    ("size", s(16 * 1024)),
                    ("iters", s(iters)),
                ];
                job("Per call and many regions", "regions", i, &extra)
            })
            .collect(),
    );

    // vm.max_map_count.
    groups.push(
        with(&["raw-uffd", "raw-mprotect"])
            .iter()
            .map(|i| {
                let extra = [
                    ("size", s(512 * MIB)),
                    ("reps", s(if quick { 1 } else { 2 })),
                ];
                job("Map-count limit", "mapcount", i, &extra)
            })
            .collect(),
    );

    // Soft-dirty partial reset.
    let sd = BackendKind::SoftDirty.name();
    if libs.iter().any(|l| l == sd) {
        for others in [1, 100, 1000] {
            groups.push(
                [sd, "raw-clear-refs"]
                    .iter()
                    .map(|i| {
                        let extra = [("others", s(others)), ("reps", s(5))];
                        job("Soft-dirty partial reset", "softdirty", i, &extra)
                    })
                    .collect(),
            );
        }
    } else {
        let why = writewatch::probe_backend(BackendKind::SoftDirty)
            .err()
            .unwrap_or_default();
        skipped.push(format!("soft-dirty partial reset: skipped: {why}"));
    }
    (groups, skipped)
}

fn parent(args: &[String]) {
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = num(args, "--rounds", if quick { 3 } else { 5 });
    CHILD_TIMEOUT.store(
        num(args, "--child-timeout", 120) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let out_dir = opt(args, "--out").unwrap_or("target/bench").to_owned();
    let only: Option<Vec<String>> =
        opt(args, "--only").map(|s| s.split(',').map(str::to_owned).collect());
    let exe = std::env::current_exe().expect("current_exe");

    let avail = writewatch::available_backends();
    let mut libs = vec![];
    let mut unavailable = vec![];
    for kind in BackendKind::CONCRETE {
        if avail & (1 << kind as u32) != 0 {
            libs.push(kind.name().to_owned());
        } else {
            let why = writewatch::probe_backend(kind).err().unwrap_or_default();
            unavailable.push((kind.name().to_owned(), why));
        }
    }
    let mut machine = Machine::now(quick, rounds);
    machine.wall = args.iter().any(|a| a == "--wall");
    machine.unavailable = unavailable.clone();
    eprintln!(
        "ww-bench: backends here: {}; {} rounds; load {}",
        libs.join(", "),
        rounds,
        machine.load_start
    );
    for (name, why) in &unavailable {
        eprintln!("ww-bench: backend {name} unavailable: {why}");
    }

    let (mut groups, skipped) = plan(&libs, quick);
    let wall = args.iter().any(|a| a == "--wall");
    if wall {
        for j in groups.iter_mut().flatten() {
            j.args.push("--wall".into());
        }
    }
    if let Some(only) = &only {
        groups.retain(|g| {
            only.iter()
                .any(|o| g[0].args[1] == *o || g[0].section.eq_ignore_ascii_case(o))
        });
    }
    let mut results = Results::new(libs.clone(), machine);
    results.skipped = skipped;
    for s in &results.skipped {
        eprintln!("ww-bench: {s}");
    }
    let started = Instant::now();
    for round in 0..rounds {
        for g in &groups {
            // Alternate the order within each group from round to round.
            let order: Vec<&Job> = if round % 2 == 0 {
                g.iter().collect()
            } else {
                g.iter().rev().collect()
            };
            for j in order.into_iter().filter(|j| round < j.max_rounds) {
                run_job(&exe, j, round, rounds, &mut results);
            }
        }
    }
    results.machine.finish(started.elapsed().as_secs_f64());
    let md = results.markdown();
    println!("{md}");
    std::fs::create_dir_all(&out_dir).expect("create output dir");
    let write = |name: &str, text: String| {
        let path = format!("{out_dir}/{name}");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{path}: {e}"));
        eprintln!("ww-bench: wrote {path}");
    };
    write("results.md", md);
    write("results.json", results.json());
    write("chart.svg", results.svg());
}

fn run_job(exe: &std::path::Path, j: &Job, round: usize, rounds: usize, results: &mut Results) {
    let t = Instant::now();
    let mut child = Command::new(exe)
        .args(&j.args)
        .env_remove("WW_BACKEND")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ww-bench child");
    // A case that never finishes (a livelocked fault handler, say) is a
    // result too: kill it after CHILD_TIMEOUT and report it.
    let mut timed_out = false;
    while child.try_wait().expect("wait for child").is_none() {
        if t.elapsed() > child_timeout() {
            let _ = child.kill();
            timed_out = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = child.wait_with_output().expect("child output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 5 {
            continue;
        }
        let key = RowKey {
            section: j.section.into(),
            group: f[1].into(),
            size: f[2].into(),
            pattern: f[3].into(),
            unit: if f[0] == "R" {
                f[4].into()
            } else {
                String::new()
            },
        };
        match (f[0], f.get(5)) {
            ("R", Some(v)) => {
                let v: f64 = v.parse().unwrap_or(f64::NAN);
                results.add(key, &j.imp, v);
            }
            ("N", _) => results.note(&key, &j.imp, f[4]),
            ("F", _) => results.fail(&key, &j.imp, f[4]),
            _ => {}
        }
    }
    if timed_out || !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        let msg = format!(
            "{} {}: child {} ({})",
            j.args[1],
            j.imp,
            if timed_out {
                format!("killed after {} s", child_timeout().as_secs())
            } else {
                out.status.to_string()
            },
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
        eprintln!("ww-bench: FAILED {msg}");
        results.job_failure(j.section, &j.imp, &msg);
    }
    eprintln!(
        "ww-bench: round {}/{} {:<8} {:<16} {:>6.2} s {}",
        round + 1,
        rounds,
        j.args[1],
        j.imp,
        t.elapsed().as_secs_f64(),
        j.args[4..]
            .chunks(2)
            .filter(|c| c[0] != "--patterns")
            .map(|c| c.join(" "))
            .collect::<Vec<_>>()
            .join(" ")
    );
}
