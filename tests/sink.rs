//! `backend::Sink`, where every backend's scan results go: capacity limits
//! (only what fits is reported, and the caller resets exactly that), run
//! merging, counters. Pure Rust, no kernel: also run under Miri
//! (`make test-miri`).

use writewatch::backend::{Limit, Sink, WrittenRange};
use writewatch::page_size;

fn ps() -> usize {
    page_size()
}

#[test]
fn pages_fill_up_to_capacity_and_say_where_they_stopped() {
    let ps = ps();
    let base = 0x10_0000 * ps;
    let mut out = [0usize; 3];
    let mut sink = Sink::pages(&mut out);
    assert!(matches!(sink.remaining(), Limit::Pages(3)));
    assert_eq!(sink.push(base, base + 2 * ps), base + 2 * ps, "all fit");
    assert!(!sink.is_full());
    // Five pages, one slot left: the first fits, the call says where it stopped.
    assert_eq!(sink.push(base + 4 * ps, base + 9 * ps), base + 5 * ps);
    assert!(sink.is_full());
    assert!(matches!(sink.remaining(), Limit::Pages(0)));
    assert_eq!(
        sink.push(base + 20 * ps, base + 21 * ps),
        base + 20 * ps,
        "none fit"
    );
    assert_eq!((sink.filled(), sink.pages_reported()), (3, 3));
    assert_eq!(out, [base, base + ps, base + 4 * ps]);
}

#[test]
fn pages_leave_unused_entries_untouched() {
    let ps = ps();
    let mut out = [7usize; 4];
    let mut sink = Sink::pages(&mut out);
    assert_eq!(sink.push(ps, 2 * ps), 2 * ps);
    assert_eq!(sink.filled(), 1);
    assert_eq!(out, [ps, 7, 7, 7]);
}

#[test]
fn runs_merge_when_adjacent_even_when_full() {
    let ps = ps();
    let mut out = [WrittenRange::default(); 2];
    let mut sink = Sink::runs(&mut out);
    assert_eq!(sink.push(0, 2 * ps), 2 * ps);
    assert_eq!(sink.push(2 * ps, 3 * ps), 3 * ps, "adjacent: merged");
    assert_eq!(sink.filled(), 1);
    assert_eq!(sink.push(5 * ps, 6 * ps), 6 * ps);
    assert!(sink.is_full());
    assert!(matches!(sink.remaining(), Limit::Runs(0)));
    // Full, but a run that continues the last one still merges.
    assert_eq!(sink.push(6 * ps, 8 * ps), 8 * ps);
    // A separate run does not fit: nothing of it is reported.
    assert_eq!(sink.push(10 * ps, 11 * ps), 10 * ps);
    assert_eq!((sink.filled(), sink.pages_reported()), (2, 6));
    assert_eq!(
        out,
        [
            WrittenRange {
                start: 0,
                size: 3 * ps
            },
            WrittenRange {
                start: 5 * ps,
                size: 3 * ps
            }
        ]
    );
}

#[test]
fn empty_output_is_full_from_the_start() {
    let mut out: [usize; 0] = [];
    let mut sink = Sink::pages(&mut out);
    assert!(sink.is_full());
    assert_eq!(sink.push(ps(), 2 * ps()), ps());
    let mut runs: [WrittenRange; 0] = [];
    let mut sink = Sink::runs(&mut runs);
    assert!(sink.is_full());
    assert_eq!(sink.push(ps(), 2 * ps()), ps());
    assert_eq!(sink.pages_reported(), 0);
}

#[test]
fn overlapping_runs_are_clipped_so_no_page_is_listed_twice() {
    let p = ps();
    let mut out = [0usize; 8];
    {
        let mut sink = Sink::pages(&mut out);
        assert_eq!(sink.push(0x10000, 0x10000 + 3 * p), 0x10000 + 3 * p);
        // A lagging resume re-reports pages 1..4: only page 3 is new.
        assert_eq!(sink.push(0x10000 + p, 0x10000 + 4 * p), 0x10000 + 4 * p);
        assert_eq!(
            sink.push(0x10000, 0x10000 + 2 * p),
            0x10000 + 2 * p,
            "all old: nothing added"
        );
        assert_eq!((sink.filled(), sink.pages_reported()), (4, 4));
    }
    assert_eq!(
        out[..4],
        [0x10000, 0x10000 + p, 0x10000 + 2 * p, 0x10000 + 3 * p]
    );

    let mut runs = [WrittenRange::default(); 2];
    {
        let mut sink = Sink::runs(&mut runs);
        sink.push(0x10000, 0x10000 + 2 * p);
        sink.push(0x10000 + p, 0x10000 + 5 * p);
        assert_eq!((sink.filled(), sink.pages_reported()), (1, 5));
    }
    assert_eq!((runs[0].start, runs[0].size), (0x10000, 5 * p));
}
