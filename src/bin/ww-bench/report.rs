//! Collects the children's figures and writes them out: Markdown tables
//! (with library/raw ratios and the targets of the benchmark issue), JSON,
//! and an SVG chart of get+reset cost against the dirty fraction.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Identifies a row of the tables.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RowKey {
    /// Table (one per kind of case).
    pub section: String,
    /// What is measured (`get+reset`, `first write`, ...).
    pub group: String,
    /// Region size or count.
    pub size: String,
    /// Which pages were written.
    pub pattern: String,
    /// Unit of the values (empty until a value arrives).
    pub unit: String,
}

/// The machine and the conditions of the run.
pub struct Machine {
    nproc: usize,
    cpu: String,
    kernel: String,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started.
    pub load_start: String,
    load_end: String,
    max_map_count: String,
    thp: String,
    date: String,
    quick: bool,
    rounds: usize,
    seconds: f64,
    /// Backends not available here, with the probe's reason.
    pub unavailable: Vec<(String, String)>,
    /// Wall-clock times instead of thread CPU time (`--wall`).
    pub wall: bool,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Machine {
    /// Reads the machine's description now.
    pub fn now(quick: bool, rounds: usize) -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("?".into(), |(_, v)| v.trim().to_owned());
        let thp = read("/sys/kernel/mm/transparent_hugepage/enabled");
        let thp = thp
            .split_once('[')
            .and_then(|(_, r)| r.split_once(']'))
            .map_or("?".into(), |(v, _)| v.to_owned());
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_start: loadavg(),
            load_end: String::new(),
            max_map_count: crate::cases::max_map_count(),
            thp,
            date: utc_now(),
            quick,
            rounds,
            seconds: 0.0,
            unavailable: vec![],
            wall: false,
        }
    }

    /// Records the end of the run.
    pub fn finish(&mut self, seconds: f64) {
        self.seconds = seconds;
        self.load_end = loadavg();
    }
}

/// `YYYY-MM-DD HH:MM UTC` from the system clock.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Everything the rounds produced.
pub struct Results {
    libs: Vec<String>,
    /// Conditions of the run.
    pub machine: Machine,
    rows: Vec<RowKey>,
    index: HashMap<(String, String, String, String), usize>,
    values: HashMap<(usize, String), Vec<f64>>,
    fails: HashMap<(usize, String), String>,
    notes: Vec<String>,
    job_fails: Vec<String>,
    /// Cases not run, with the reason.
    pub skipped: Vec<String>,
}

/// Column order: library backends first, then the baselines.
const BASELINES: [&str; 7] = [
    "raw-uffd",
    "raw-uffd-aa",
    "raw-uffd-sparse",
    "raw-pagemap",
    "raw-mprotect",
    "raw-clear-refs",
    "plain",
];

/// A derived column: `a / b` or `a - b`.
#[derive(Clone, Copy)]
enum Derived {
    Ratio(&'static str, &'static str),
    Diff(&'static str, &'static str),
}

impl Derived {
    fn header(self) -> String {
        match self {
            Derived::Ratio(a, b) => format!("{a}/{b}"),
            Derived::Diff(a, b) => format!("{a} − {b}"),
        }
    }
}

/// The derived columns of a section.
fn derived(section: &str) -> Vec<Derived> {
    use Derived::*;
    match section {
        "Writes" | "Get and get+reset" => vec![
            Ratio("written", "raw-uffd"),
            Ratio("raw-uffd-aa", "raw-uffd"),
            Ratio("raw-mprotect", "written"),
            Ratio("mprotect", "raw-mprotect"),
        ],
        "Sparse reservation" => vec![
            Ratio("written", "raw-uffd-sparse"),
            Ratio("written", "plain"),
        ],
        "Per call and many regions" => vec![
            Diff("written", "raw-uffd"),
            Diff("raw-uffd-aa", "raw-uffd"),
            Ratio("written", "raw-uffd"),
            Diff("mprotect", "raw-mprotect"),
        ],
        "Map-count limit" => vec![Ratio("mprotect", "raw-mprotect")],
        "Soft-dirty partial reset" => vec![Ratio("soft-dirty", "raw-clear-refs")],
        _ => vec![],
    }
}

/// A number with about three significant digits.
fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The median (upper median for an even count).
fn median(v: &[f64]) -> f64 {
    crate::cases::median(v)
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One target of the issue and how this run did.
pub struct Target {
    what: String,
    measured: String,
    met: Option<bool>,
}

impl Results {
    /// Empty results for a run with these library backends.
    pub fn new(libs: Vec<String>, machine: Machine) -> Results {
        Results {
            libs,
            machine,
            rows: vec![],
            index: HashMap::new(),
            values: HashMap::new(),
            fails: HashMap::new(),
            notes: vec![],
            job_fails: vec![],
            skipped: vec![],
        }
    }

    fn row(&mut self, key: &RowKey) -> usize {
        let id = (
            key.section.clone(),
            key.group.clone(),
            key.size.clone(),
            key.pattern.clone(),
        );
        let i = *self.index.entry(id).or_insert_with(|| {
            self.rows.push(key.clone());
            self.rows.len() - 1
        });
        if self.rows[i].unit.is_empty() {
            self.rows[i].unit = key.unit.clone();
        }
        i
    }

    /// One round's value.
    pub fn add(&mut self, key: RowKey, imp: &str, v: f64) {
        let i = self.row(&key);
        self.values.entry((i, imp.into())).or_default().push(v);
    }

    /// A note from a child (deduplicated).
    pub fn note(&mut self, key: &RowKey, imp: &str, text: &str) {
        let n = format!("{imp}, {} {} {}: {text}", key.group, key.size, key.pattern);
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    /// A failure reported by a child for one row.
    pub fn fail(&mut self, key: &RowKey, imp: &str, text: &str) {
        let i = self.row(key);
        self.fails.insert((i, imp.into()), text.into());
    }

    /// A child that crashed or exited with an error.
    pub fn job_failure(&mut self, section: &str, imp: &str, text: &str) {
        let t = format!("{section}, {imp}: {text}");
        if !self.job_fails.contains(&t) {
            self.job_fails.push(t);
        }
    }

    fn columns(&self) -> Vec<String> {
        self.libs
            .iter()
            .cloned()
            .chain(BASELINES.iter().map(|s| s.to_string()))
            .collect()
    }

    /// Median of `imp` in row `i`.
    fn med(&self, i: usize, imp: &str) -> Option<f64> {
        self.values
            .get(&(i, imp.to_owned()))
            .map(|v| median(v))
            .filter(|v| v.is_finite())
    }

    /// Lowest round of `imp` in row `i`. The machine's noise only adds
    /// time, and identical processes land in a fast or a slow mode (two
    /// clusters ~2x apart on the cheap rows, whatever the CPU they run on),
    /// so the fastest rounds compare like with like.
    fn best(&self, i: usize, imp: &str) -> Option<f64> {
        self.values
            .get(&(i, imp.to_owned()))
            .map(|v| v.iter().copied().fold(f64::INFINITY, f64::min))
            .filter(|v| v.is_finite())
    }

    fn find(&self, group: &str, size: &str, pattern: &str) -> Option<usize> {
        self.rows
            .iter()
            .position(|r| r.group == group && r.size == size && r.pattern == pattern)
    }

    fn derive(&self, d: Derived, i: usize) -> Option<f64> {
        match d {
            Derived::Ratio(a, b) => Some(self.med(i, a)? / self.med(i, b)?),
            Derived::Diff(a, b) => Some(self.med(i, a)? - self.med(i, b)?),
        }
    }

    fn sections(&self) -> Vec<String> {
        let mut s: Vec<String> = vec![];
        for r in &self.rows {
            if !s.contains(&r.section) {
                s.push(r.section.clone());
            }
        }
        s
    }

    /// The tables, the targets, and the conditions, as Markdown.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut o = String::new();
        let _ = writeln!(o, "# writewatch benchmark results\n");
        let _ = writeln!(
            o,
            "{} · {} {} rounds · {:.0} s · kernel {} · {} × {} · THP `{}` · vm.max_map_count {}  ",
            m.date,
            if m.quick { "--quick," } else { "full," },
            m.rounds,
            m.seconds,
            m.kernel,
            m.nproc,
            m.cpu,
            m.thp,
            m.max_map_count
        );
        let _ = writeln!(
            o,
            "Load average (1/5/15 min) at start {}, at end {} (2 cores shared with other work).\n",
            m.load_start, m.load_end
        );
        let _ = writeln!(
            o,
            "Backends measured: {}.",
            if self.libs.is_empty() {
                "none".to_string()
            } else {
                self.libs.join(", ")
            }
        );
        for (name, why) in &m.unavailable {
            let _ = writeln!(o, "Not available here: {name} ({why}).");
        }
        let _ = writeln!(
            o,
            "\nEach figure is the median over the rounds (at most 3 for the 1 GiB \
             get rows), each round a fresh process per case and implementation, the \
             order alternating between rounds; each process reports the median of its \
             repetitions. {} \
             Gets produce the page address list (capacity: every page of the \
             region); get and get+reset figures are per call on the whole region. \
             `raw-uffd-aa` is `raw-uffd` measured again: its ratio to `raw-uffd` is \
             this run's noise.\n",
            if m.wall {
                "Times are wall-clock (`--wall`)."
            } else {
                "Times are the measured thread's CPU time (user + system: faults and \
                 ioctls count, other processes on the shared cores do not)."
            }
        );
        let cols = self.columns();
        for section in self.sections() {
            let rows: Vec<usize> = (0..self.rows.len())
                .filter(|&i| self.rows[i].section == section)
                .collect();
            let used: Vec<&String> = cols
                .iter()
                .filter(|c| {
                    rows.iter().any(|&i| {
                        self.values.contains_key(&(i, c.to_string()))
                            || self.fails.contains_key(&(i, c.to_string()))
                    })
                })
                .collect();
            let der: Vec<Derived> = derived(&section)
                .into_iter()
                .filter(|&d| rows.iter().any(|&i| self.derive(d, i).is_some()))
                .collect();
            let _ = writeln!(o, "## {section}\n");
            let mut head = "| what | size | pattern | unit |".to_string();
            let mut rule = "|---|---|---|---|".to_string();
            for c in &used {
                let _ = write!(head, " {c} |");
                rule.push_str("---:|");
            }
            for d in &der {
                let _ = write!(head, " {} |", d.header());
                rule.push_str("---:|");
            }
            let _ = writeln!(o, "{head}\n{rule}");
            for &i in &rows {
                let r = &self.rows[i];
                let _ = write!(
                    o,
                    "| {} | {} | {} | {} |",
                    r.group, r.size, r.pattern, r.unit
                );
                for c in &used {
                    let cell = if self.fails.contains_key(&(i, c.to_string())) {
                        format!(
                            "**fail**{}",
                            self.med(i, c)
                                .map_or(String::new(), |v| format!(" ({})", fmt(v)))
                        )
                    } else {
                        self.med(i, c).map_or("".into(), fmt)
                    };
                    let _ = write!(o, " {cell} |");
                }
                for &d in &der {
                    let cell = match (d, self.derive(d, i)) {
                        (Derived::Ratio(..), Some(v)) => format!("{}×", fmt(v)),
                        (Derived::Diff(..), Some(v)) => format!("{v:+.2}"),
                        (_, None) => String::new(),
                    };
                    let _ = write!(o, " {cell} |");
                }
                o.push('\n');
            }
            o.push('\n');
        }
        let _ = writeln!(o, "## Targets\n");
        let _ = writeln!(o, "| target | measured | met |\n|---|---|---|");
        for t in self.targets() {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(o, "| {} | {} | {met} |", t.what, t.measured);
        }
        o.push('\n');
        let lists = [
            ("Failures", self.fails_list()),
            ("Crashed cases", self.job_fails.clone()),
            ("Notes", self.notes.clone()),
            ("Skipped", self.skipped.clone()),
        ];
        for (title, items) in lists {
            if items.is_empty() {
                continue;
            }
            let _ = writeln!(o, "## {title}\n");
            for it in items {
                let _ = writeln!(o, "- {it}");
            }
            o.push('\n');
        }
        let _ = writeln!(
            o,
            "Chart: `chart.svg` (get+reset cost against the dirty fraction)."
        );
        o
    }

    fn fails_list(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .fails
            .iter()
            .map(|((i, imp), t)| {
                let r = &self.rows[*i];
                format!("{imp}, {} {} {}: {t}", r.group, r.size, r.pattern)
            })
            .collect();
        v.sort();
        v
    }

    /// The targets, evaluated on this run's medians.
    pub fn targets(&self) -> Vec<Target> {
        let mut t = vec![];
        let has = |b: &str| self.libs.iter().any(|l| l == b);
        let ratio = |i: Option<usize>, a: &str, b: &str| -> Option<f64> {
            let i = i?;
            Some(self.med(i, a)? / self.med(i, b)?)
        };
        let na = |what: &str, why: &str| Target {
            what: what.into(),
            measured: why.into(),
            met: None,
        };
        if !has("written") {
            t.push(na(
                "written backend targets",
                "written backend unavailable here",
            ));
        } else {
            // First write.
            let fw = self.find("first write", "64 MiB", "populated, clean");
            let what = "first write: written ≤ 1.05× raw-uffd";
            t.push(match ratio(fw, "written", "raw-uffd") {
                Some(r) => Target {
                    what: what.into(),
                    measured: format!(
                        "{}× (A/A raw-uffd-aa/raw-uffd: {}×; fastest rounds: {}×)",
                        fmt(r),
                        ratio(fw, "raw-uffd-aa", "raw-uffd").map_or("?".into(), fmt),
                        fw.and_then(|i| Some(self.best(i, "written")? / self.best(i, "raw-uffd")?))
                            .map_or("?".into(), fmt)
                    ),
                    met: Some(r <= 1.05),
                },
                None => na(what, "not measured"),
            });
            // get+reset at every fraction.
            for size in ["64 MiB", "1 GiB"] {
                let what =
                    format!("get+reset at {size}: written ≤ 1.2× raw-uffd at every fraction");
                let rs: Vec<(String, f64)> = (0..self.rows.len())
                    .filter(|&i| self.rows[i].group == "get+reset" && self.rows[i].size == size)
                    .filter_map(|i| {
                        Some((
                            self.rows[i].pattern.clone(),
                            ratio(Some(i), "written", "raw-uffd")?,
                        ))
                    })
                    .collect();
                if rs.is_empty() {
                    t.push(na(&what, "not measured"));
                    continue;
                }
                let worst = rs.iter().map(|r| r.1).fold(0.0, f64::max);
                let rows = (0..self.rows.len())
                    .filter(|&i| self.rows[i].group == "get+reset" && self.rows[i].size == size);
                let aa = rows
                    .clone()
                    .filter_map(|i| ratio(Some(i), "raw-uffd-aa", "raw-uffd"))
                    .map(|r| (r - 1.0).abs())
                    .fold(0.0, f64::max);
                let best = rows
                    .filter_map(|i| Some(self.best(i, "written")? / self.best(i, "raw-uffd")?))
                    .fold(0.0, f64::max);
                t.push(Target {
                    what,
                    measured: format!(
                        "medians: {} (noise: raw-uffd-aa/raw-uffd within ±{:.0}%; \
                         ratio of the fastest rounds: at most {}×)",
                        rs.iter()
                            .map(|(p, r)| format!("{p}: {}×", fmt(*r)))
                            .collect::<Vec<_>>()
                            .join(", "),
                        aa * 100.0,
                        fmt(best)
                    ),
                    met: Some(worst <= 1.2),
                });
            }
            // Against Wine's approach.
            let what = "first write: raw-mprotect ≥ 5× written";
            t.push(match ratio(fw, "raw-mprotect", "written") {
                Some(r) => Target {
                    what: what.into(),
                    measured: format!("{}× cheaper", fmt(r)),
                    met: Some(r >= 5.0),
                },
                None => na(what, "not measured"),
            });
            for size in ["64 MiB", "1 GiB"] {
                let what = format!("get+reset, 10% scattered, {size}: raw-mprotect ≥ 20× written");
                let i = self.find("get+reset", size, "10% scattered");
                t.push(match ratio(i, "raw-mprotect", "written") {
                    Some(r) => Target {
                        what,
                        measured: format!("{}× cheaper", fmt(r)),
                        met: Some(r >= 20.0),
                    },
                    None => na(&what, "not measured"),
                });
            }
            // Sparse reservation.
            let sz = "64 GiB";
            let cl = "0.1% in 2 MiB chunks";
            let what = "sparse 64 GiB, 0.1% touched (2 MiB chunks): page tables ≤ 1 MiB";
            let pte = self
                .find("sparse: page tables (VmPTE)", sz, cl)
                .and_then(|i| Some((self.med(i, "written")?, self.med(i, "plain"))));
            t.push(match pte {
                Some((v, plain)) => Target {
                    what: what.into(),
                    measured: format!(
                        "{} KiB (plain mmap, same touches: {} KiB)",
                        fmt(v),
                        plain.map_or("?".into(), fmt)
                    ),
                    met: Some(v <= 1024.0),
                },
                None => na(what, "not measured"),
            });
            // The target is the get; a get+reset also write-protects
            // every touched page again, which the kernel alone takes about a
            // millisecond for here: shown against the raw kernel, not judged.
            if let Some(i) = self.find("sparse: get+reset", sz, cl) {
                let (v, raw) = (self.med(i, "written"), self.med(i, "raw-uffd-sparse"));
                t.push(Target {
                    what: "(not a target) sparse: get+reset (64 GiB, 0.1% in 2 MiB chunks), \
                           against the raw kernel doing the same"
                        .into(),
                    measured: format!(
                        "{} µs vs raw-uffd-sparse {} µs ({}×)",
                        v.map_or("?".into(), fmt),
                        raw.map_or("?".into(), fmt),
                        match (v, raw) {
                            (Some(v), Some(r)) if r > 0.0 => fmt(v / r),
                            _ => "?".into(),
                        }
                    ),
                    met: None,
                });
            }
            for g in ["sparse: get", "sparse: get, nothing written"] {
                let what = format!("{g} (64 GiB, 0.1% in 2 MiB chunks) ≤ 1 ms");
                t.push(
                    match self.find(g, sz, cl).and_then(|i| self.med(i, "written")) {
                        Some(v) => Target {
                            what,
                            measured: format!("{} µs", fmt(v)),
                            met: Some(v <= 1000.0),
                        },
                        None => na(&what, "not measured"),
                    },
                );
            }
            let un = "0.1% scattered";
            if let Some(i) = self.find("sparse: page tables (VmPTE)", sz, un) {
                let what = "(not a target) sparse 64 GiB, 0.1% touched uniformly: page tables";
                let v = self.med(i, "written").unwrap_or(f64::NAN);
                let plain = self.med(i, "plain").unwrap_or(f64::NAN);
                t.push(Target {
                    what: what.into(),
                    measured: format!(
                        "{} KiB vs {} KiB for plain mmap: one page-table page per touched 2 MiB is the kernel's floor",
                        fmt(v),
                        fmt(plain)
                    ),
                    met: None,
                });
            }
            // Per-call overhead.
            for size in ["1 page, 1 region", "10000 × 16 KiB"] {
                let what = format!("per call ({size}): written ≤ raw-uffd + 2 µs");
                let ds: Vec<(String, f64)> = (0..self.rows.len())
                    .filter(|&i| self.rows[i].group == "per call" && self.rows[i].size == size)
                    .filter_map(|i| {
                        Some((
                            self.rows[i].pattern.clone(),
                            self.med(i, "written")? - self.med(i, "raw-uffd")?,
                        ))
                    })
                    .collect();
                if ds.is_empty() {
                    t.push(na(&what, "not measured"));
                    continue;
                }
                let worst = ds.iter().map(|d| d.1).fold(f64::MIN, f64::max);
                t.push(Target {
                    what,
                    measured: ds
                        .iter()
                        .map(|(p, d)| format!("{p}: {d:+.2} µs"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    met: Some(worst <= 2.0),
                });
            }
        }
        // The mprotect backend.
        if !has("mprotect") {
            let why = self
                .machine
                .unavailable
                .iter()
                .find(|(n, _)| n == "mprotect")
                .map_or(String::new(), |(_, w)| w.clone());
            t.push(na(
                "mprotect backend ≤ 1.2× raw-mprotect; not pathological at vm.max_map_count",
                &format!("not evaluated: mprotect backend unavailable here ({why})"),
            ));
        } else {
            let what = "mprotect backend ≤ 1.2× raw-mprotect (writes, get+reset)";
            let rs: Vec<(String, f64)> = (0..self.rows.len())
                .filter(|&i| {
                    let g = &self.rows[i].group;
                    g == "first write" || g == "get+reset"
                })
                .filter_map(|i| {
                    let r = &self.rows[i];
                    Some((
                        format!("{} {} {}", r.group, r.size, r.pattern),
                        ratio(Some(i), "mprotect", "raw-mprotect")?,
                    ))
                })
                .collect();
            let worst = rs.iter().map(|r| r.1).fold(0.0, f64::max);
            t.push(Target {
                what: what.into(),
                measured: rs
                    .iter()
                    .map(|(p, r)| format!("{p}: {}×", fmt(*r)))
                    .collect::<Vec<_>>()
                    .join(", "),
                met: (!rs.is_empty()).then_some(worst <= 1.2),
            });
            let what = "mprotect backend at vm.max_map_count (512 MiB, every other page written): \
                        completes, reports every page, write cost ≤ 2× its first-write cost";
            let i = self.find("map-count: write", "512 MiB", "every other page");
            let j = self.find("map-count: get+reset", "512 MiB", "every other page");
            let failed = j.is_some_and(|j| self.fails.contains_key(&(j, "mprotect".into())))
                || self
                    .job_fails
                    .iter()
                    .any(|f| f.contains("mapcount mprotect"));
            let w = i.and_then(|i| self.med(i, "mprotect"));
            let fw = fw_of(self, "mprotect");
            if w.is_none() && fw.is_none() && !failed {
                t.push(na(what, "not measured in this run"));
                return t;
            }
            t.push(Target {
                what: what.into(),
                measured: format!(
                    "{}; write {} ns/page vs first write {} ns/page",
                    if failed { "failed" } else { "completed" },
                    w.map_or("?".into(), fmt),
                    fw.map_or("?".into(), fmt)
                ),
                met: Some(!failed && matches!((w, fw), (Some(w), Some(f)) if w <= 2.0 * f)),
            });
        }
        t
    }

    /// The run as JSON.
    pub fn json(&self) -> String {
        let m = &self.machine;
        let mut o = String::from("{\n");
        let _ = writeln!(
            o,
            "  \"machine\": {{\"date\": {}, \"kernel\": {}, \"cpu\": {}, \"nproc\": {}, \
             \"load_start\": {}, \"load_end\": {}, \"thp\": {}, \"max_map_count\": {}, \
             \"quick\": {}, \"rounds\": {}, \"seconds\": {:.1}, \"clock\": {}}},",
            json_str(&m.date),
            json_str(&m.kernel),
            json_str(&m.cpu),
            m.nproc,
            json_str(&m.load_start),
            json_str(&m.load_end),
            json_str(&m.thp),
            json_str(&m.max_map_count),
            m.quick,
            m.rounds,
            m.seconds,
            json_str(if m.wall { "wall" } else { "thread-cpu" })
        );
        let list = |v: &[String]| v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(o, "  \"backends\": [{}],", list(&self.libs));
        let _ = writeln!(
            o,
            "  \"unavailable\": {{{}}},",
            m.unavailable
                .iter()
                .map(|(n, w)| format!("{}: {}", json_str(n), json_str(w)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(o, "  \"rows\": [");
        let cols = self.columns();
        for (i, r) in self.rows.iter().enumerate() {
            let vals: Vec<String> = cols
                .iter()
                .filter_map(|c| {
                    let v = self.values.get(&(i, c.clone()))?;
                    Some(format!(
                        "{}: {{\"median\": {}, \"rounds\": [{}]}}",
                        json_str(c),
                        json_num(median(v)),
                        v.iter()
                            .map(|x| json_num(*x))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
                .collect();
            let fails: Vec<String> = cols
                .iter()
                .filter_map(|c| {
                    let f = self.fails.get(&(i, c.clone()))?;
                    Some(format!("{}: {}", json_str(c), json_str(f)))
                })
                .collect();
            let _ = writeln!(
                o,
                "    {{\"section\": {}, \"what\": {}, \"size\": {}, \"pattern\": {}, \"unit\": {}, \
                 \"values\": {{{}}}, \"failures\": {{{}}}}}{}",
                json_str(&r.section),
                json_str(&r.group),
                json_str(&r.size),
                json_str(&r.pattern),
                json_str(&r.unit),
                vals.join(", "),
                fails.join(", "),
                if i + 1 < self.rows.len() { "," } else { "" }
            );
        }
        let _ = writeln!(o, "  ],");
        let targets: Vec<String> = self
            .targets()
            .iter()
            .map(|t| {
                format!(
                    "    {{\"target\": {}, \"measured\": {}, \"met\": {}}}",
                    json_str(&t.what),
                    json_str(&t.measured),
                    t.met.map_or("null".into(), |b| b.to_string())
                )
            })
            .collect();
        let _ = writeln!(o, "  \"targets\": [\n{}\n  ],", targets.join(",\n"));
        let _ = writeln!(o, "  \"notes\": [{}],", list(&self.notes));
        let _ = writeln!(o, "  \"crashed\": [{}],", list(&self.job_fails));
        let _ = writeln!(o, "  \"skipped\": [{}]", list(&self.skipped));
        o.push_str("}\n");
        o
    }

    /// get+reset cost against the scattered dirty fraction, one panel per
    /// region size, log scale, one line per implementation.
    pub fn svg(&self) -> String {
        let fractions = [
            "0%",
            "0.1% scattered",
            "1% scattered",
            "10% scattered",
            "100%",
        ];
        let xlabels = ["0%", "0.1%", "1%", "10%", "100%"];
        let sizes: Vec<String> = ["64 MiB", "1 GiB"]
            .iter()
            .filter(|s| self.find("get+reset", s, "0%").is_some())
            .map(|s| s.to_string())
            .collect();
        let cols: Vec<String> = self
            .columns()
            .into_iter()
            .filter(|c| c != "raw-uffd-aa")
            .filter(|c| {
                sizes.iter().any(|s| {
                    fractions.iter().any(|f| {
                        self.find("get+reset", s, f)
                            .and_then(|i| self.med(i, c))
                            .is_some()
                    })
                })
            })
            .collect();
        let all: Vec<f64> = sizes
            .iter()
            .flat_map(|s| {
                let cols = &cols;
                fractions.iter().flat_map(move |f| {
                    cols.iter()
                        .filter_map(move |c| self.med(self.find("get+reset", s, f)?, c))
                })
            })
            .filter(|v| *v > 0.0)
            .collect();
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.01);
        let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
        let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        let (pw, ph, ml, mt, gap) = (420.0, 300.0, 70.0, 50.0, 60.0);
        let width = ml + sizes.len().max(1) as f64 * (pw + gap) + 170.0;
        let height = mt + ph + 70.0;
        let colors = [
            "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f",
            "#e377c2",
        ];
        let mut o = String::new();
        let _ = writeln!(
            o,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
        );
        let _ = writeln!(
            o,
            "<text x=\"{ml}\" y=\"22\" font-size=\"15\">get+reset cost (µs, log scale) vs dirty \
             fraction (scattered), medians — kernel {}, {}</text>",
            xml(&self.machine.kernel),
            xml(&self.machine.date)
        );
        let floor = 10f64.powi(d0);
        let y_of = |v: f64| mt + ph - (v.max(floor).log10() - d0 as f64) / (d1 - d0) as f64 * ph;
        for (k, size) in sizes.iter().enumerate() {
            let x0 = ml + k as f64 * (pw + gap);
            let x_of = |j: usize| x0 + 20.0 + j as f64 * (pw - 40.0) / (fractions.len() - 1) as f64;
            let _ = writeln!(
                o,
                "<rect x=\"{x0}\" y=\"{mt}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>\n\
                 <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-weight=\"bold\">{} region</text>",
                x0 + pw / 2.0,
                mt - 8.0,
                xml(size)
            );
            for d in d0..=d1 {
                let y = y_of(10f64.powi(d));
                let label = 10f64.powi(d);
                let _ = writeln!(
                    o,
                    "<line x1=\"{x0}\" x2=\"{:.0}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
                     <text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
                    x0 + pw,
                    x0 - 4.0,
                    y + 4.0
                );
            }
            for (j, l) in xlabels.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "<text x=\"{:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{l}</text>",
                    x_of(j),
                    mt + ph + 18.0
                );
            }
            let _ = writeln!(
                o,
                "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\">pages written since the last reset</text>",
                x0 + pw / 2.0,
                mt + ph + 38.0
            );
            for (c, col) in cols.iter().enumerate() {
                let color = colors[c % colors.len()];
                let pts: Vec<(f64, f64)> = fractions
                    .iter()
                    .enumerate()
                    .filter_map(|(j, f)| {
                        let v = self.med(self.find("get+reset", size, f)?, col)?;
                        Some((x_of(j), y_of(v)))
                    })
                    .collect();
                let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let dash = if self.libs.contains(col) {
                    ""
                } else {
                    " stroke-dasharray=\"5,3\""
                };
                let _ = writeln!(
                    o,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>",
                    path.join(" ")
                );
                for (x, y) in pts {
                    let _ = writeln!(
                        o,
                        "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"/>"
                    );
                }
            }
        }
        let lx = ml + sizes.len().max(1) as f64 * (pw + gap) - gap / 2.0;
        for (c, col) in cols.iter().enumerate() {
            let color = colors[c % colors.len()];
            let y = mt + 10.0 + c as f64 * 20.0;
            let dash = if self.libs.contains(col) {
                ""
            } else {
                " stroke-dasharray=\"5,3\""
            };
            let kind = if self.libs.contains(col) {
                " (library)"
            } else {
                ""
            };
            let _ = writeln!(
                o,
                "<line x1=\"{lx}\" x2=\"{:.0}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\n\
                 <text x=\"{:.0}\" y=\"{:.0}\">{}{kind}</text>",
                lx + 24.0,
                lx + 30.0,
                y + 4.0,
                xml(col)
            );
        }
        o.push_str("</svg>\n");
        o
    }
}

/// The median first-write cost of `imp` at 64 MiB.
fn fw_of(r: &Results, imp: &str) -> Option<f64> {
    r.med(r.find("first write", "64 MiB", "populated, clean")?, imp)
}
