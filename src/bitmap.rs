//! A fixed-size bitmap of atomic words, one bit per page. Every operation
//! is a single atomic read-modify-write per word, so it can be used from
//! the fault handler (no allocation, no lock) and by concurrent threads.

use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per page of a region.
pub struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    bits: usize,
}

impl AtomicBitmap {
    /// `bits` zero bits.
    pub fn new(bits: usize) -> AtomicBitmap {
        let words = (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        AtomicBitmap { words, bits }
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.bits
    }

    /// True for a bitmap of no bits.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// Reads bit `i`.
    pub fn get(&self, i: usize) -> bool {
        self.words[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; returns its previous value.
    pub fn set(&self, i: usize) -> bool {
        let m = 1 << (i % 64);
        self.words[i / 64].fetch_or(m, Ordering::AcqRel) & m != 0
    }

    /// Clears bit `i`; returns its previous value.
    pub fn clear(&self, i: usize) -> bool {
        let m = 1 << (i % 64);
        self.words[i / 64].fetch_and(!m, Ordering::AcqRel) & m != 0
    }

    /// Sets bits `[from, to)`.
    pub fn set_range(&self, from: usize, to: usize) {
        for_word_masks(from, to, |w, m| {
            self.words[w].fetch_or(m, Ordering::AcqRel);
        });
    }

    /// Clears bits `[from, to)`.
    pub fn clear_range(&self, from: usize, to: usize) {
        for_word_masks(from, to, |w, m| {
            self.words[w].fetch_and(!m, Ordering::AcqRel);
        });
    }

    /// True if any bit in `[from, to)` is set.
    pub fn any(&self, from: usize, to: usize) -> bool {
        self.next_set(from, to).is_some()
    }

    /// The first set bit in `[from, to)`.
    pub fn next_set(&self, from: usize, to: usize) -> Option<usize> {
        self.next_matching(from, to, false)
    }

    /// The first clear bit in `[from, to)`.
    pub fn next_clear(&self, from: usize, to: usize) -> Option<usize> {
        self.next_matching(from, to, true)
    }

    fn next_matching(&self, from: usize, to: usize, want_clear: bool) -> Option<usize> {
        let to = to.min(self.bits);
        let mut i = from;
        while i < to {
            let w = i / 64;
            let mut word = self.words[w].load(Ordering::Acquire);
            if want_clear {
                word = !word;
            }
            word &= u64::MAX << (i % 64);
            if word != 0 {
                let bit = w * 64 + word.trailing_zeros() as usize;
                return (bit < to).then_some(bit);
            }
            i = (w + 1) * 64;
        }
        None
    }

    /// Calls `f(start, end)` for each maximal run of set bits in `[from, to)`.
    pub fn for_each_run(&self, from: usize, to: usize, mut f: impl FnMut(usize, usize) -> bool) {
        let mut i = from;
        while let Some(s) = self.next_set(i, to) {
            let e = self.next_clear(s, to).unwrap_or(to);
            if !f(s, e) {
                return;
            }
            i = e;
        }
    }
}

/// Calls `f(word_index, mask)` for the words covering bits `[from, to)`.
fn for_word_masks(from: usize, to: usize, mut f: impl FnMut(usize, u64)) {
    let mut i = from;
    while i < to {
        let w = i / 64;
        let lo = i % 64;
        let hi = (to - w * 64).min(64);
        let mask = if hi - lo == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        f(w, mask);
        i = w * 64 + hi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_runs() {
        let b = AtomicBitmap::new(200);
        b.set_range(3, 70);
        b.set(130);
        b.set(199);
        let mut runs = vec![];
        b.for_each_run(0, 200, |s, e| {
            runs.push((s, e));
            true
        });
        assert_eq!(runs, vec![(3, 70), (130, 131), (199, 200)]);
        b.clear_range(10, 65);
        assert_eq!(b.next_set(10, 200), Some(65));
        assert!(!b.any(0, 3));
        assert!(b.clear(130) && !b.clear(130));
        assert_eq!(b.next_clear(65, 70), None);
        assert_eq!(b.next_set(131, 199), None);
    }
}
