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

    /// The words, bit `i` being bit `i % 64` of word `i / 64`. For code that
    /// must be panic-free (the fault handler), which bounds-checks with
    /// `get` itself.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        &self.words
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
        // A slice walk (no per-word index check): gets scan whole regions.
        let to = to.min(self.bits);
        if from >= to {
            return None;
        }
        let (first, last) = (from / 64, (to - 1) / 64);
        let flip = if want_clear { u64::MAX } else { 0 };
        let mut mask = u64::MAX << (from % 64);
        for (k, word) in self.words.get(first..=last)?.iter().enumerate() {
            let bits = (word.load(Ordering::Acquire) ^ flip) & mask;
            if bits != 0 {
                let bit = (first + k) * 64 + bits.trailing_zeros() as usize;
                return (bit < to).then_some(bit);
            }
            mask = u64::MAX;
        }
        None
    }

    /// Calls `f(start, end)` for each maximal run of set bits in `[from, to)`.
    pub fn for_each_run(&self, from: usize, to: usize, f: impl FnMut(usize, usize) -> bool) {
        for_each_run_in_words(|w| self.word(w), from, to.min(self.bits), f);
    }

    /// Number of 64-bit words (bit `i` is in word `i / 64`).
    pub fn word_count(&self) -> usize {
        self.words.len()
    }

    /// Word `w`: bits `64 * w ..` in its low-to-high bits. Bits at or past
    /// [`len`](Self::len) are always zero.
    pub fn word(&self, w: usize) -> u64 {
        self.words[w].load(Ordering::Acquire)
    }

    /// Sets the bits of `mask` in word `w` (none may be at or past `len`).
    pub fn or_word(&self, w: usize, mask: u64) {
        self.words[w].fetch_or(mask, Ordering::AcqRel);
    }

    /// Keeps only the bits of `mask` in word `w` (clears the others).
    pub fn and_word(&self, w: usize, mask: u64) {
        self.words[w].fetch_and(mask, Ordering::AcqRel);
    }

    /// Bit `i`, or `None` if out of range. Never panics (for the fault
    /// handler).
    pub fn try_get(&self, i: usize) -> Option<bool> {
        let word = self.words.get(i / 64)?;
        (i < self.bits).then(|| word.load(Ordering::Acquire) & (1 << (i % 64)) != 0)
    }

    /// Sets bit `i` if it is in range. Never panics (for the fault handler).
    pub fn try_set(&self, i: usize) {
        if let (true, Some(word)) = (i < self.bits, self.words.get(i / 64)) {
            word.fetch_or(1 << (i % 64), Ordering::AcqRel);
        }
    }
}

/// The first bit in `[from, to)` that is set (or clear, `want_clear`) in
/// the bit string whose word `w` is `word(w)`.
fn next_in_words(
    word: impl Fn(usize) -> u64,
    from: usize,
    to: usize,
    want_clear: bool,
) -> Option<usize> {
    let mut i = from;
    while i < to {
        let w = i / 64;
        let mut bits = word(w);
        if want_clear {
            bits = !bits;
        }
        bits &= u64::MAX << (i % 64);
        if bits != 0 {
            let bit = w * 64 + bits.trailing_zeros() as usize;
            return (bit < to).then_some(bit);
        }
        i = (w + 1) * 64;
    }
    None
}

/// Calls `f(start, end)` for each maximal run of set bits in `[from, to)`
/// of the bit string whose word `w` is `word(w)` (for strings computed
/// from several bitmaps, e.g. `!a & b`), until `f` returns false. `word`
/// is only called for words that overlap `[from, to)`.
pub fn for_each_run_in_words(
    word: impl Fn(usize) -> u64,
    from: usize,
    to: usize,
    mut f: impl FnMut(usize, usize) -> bool,
) {
    let mut i = from;
    while let Some(s) = next_in_words(&word, i, to, false) {
        let e = next_in_words(&word, s, to, true).unwrap_or(to);
        if !f(s, e) {
            return;
        }
        i = e;
    }
}

/// Calls `f(word, mask)` for the words covering bits `[from, to)`: `word`
/// is the word's index, `mask` the bits of `[from, to)` in it. Panic-free
/// (no overflow, no indexing): the fault handler uses it too.
pub(crate) fn for_word_masks(from: usize, to: usize, mut f: impl FnMut(usize, u64)) {
    let mut i = from;
    while i < to {
        let w = i >> 6;
        let lo = (i & 63) as u32;
        let stop = to.min(w.saturating_add(1).saturating_mul(64));
        let hi = lo.saturating_add(stop.saturating_sub(i) as u32); // lo < hi <= 64
        f(
            w,
            u64::MAX.wrapping_shr(64u32.saturating_sub(hi)) & u64::MAX.wrapping_shl(lo),
        );
        i = stop;
    }
}

/// The bits of `[from, to)` that fall in word `w` (0 if none). Panic-free.
pub(crate) fn word_mask(w: usize, from: usize, to: usize) -> u64 {
    let first = w.saturating_mul(64);
    let lo = from.max(first);
    let hi = to.min(first.saturating_add(64));
    if lo >= hi {
        return 0;
    }
    let (lo, hi) = (
        lo.saturating_sub(first) as u32,
        hi.saturating_sub(first) as u32,
    );
    u64::MAX.wrapping_shr(64u32.saturating_sub(hi)) & u64::MAX.wrapping_shl(lo)
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

    #[test]
    fn next_set_and_clear_match_a_bit_by_bit_search() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for bits in [1usize, 63, 64, 65, 130, 200] {
            for _ in 0..20 {
                let b = AtomicBitmap::new(bits);
                for i in 0..bits {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x % 5 < 2 {
                        b.set(i);
                    }
                }
                for from in 0..=bits {
                    for to in [from, from + 1, from + 63, bits, bits + 5] {
                        let naive = |v: bool| (from..to.min(bits)).find(|&i| b.get(i) == v);
                        assert_eq!(b.next_set(from, to), naive(true), "{bits} [{from},{to})");
                        assert_eq!(b.next_clear(from, to), naive(false), "{bits} [{from},{to})");
                    }
                }
            }
        }
    }

    #[test]
    fn word_masks() {
        assert_eq!(word_mask(0, 0, 64), u64::MAX);
        assert_eq!(word_mask(1, 0, 64), 0);
        assert_eq!(word_mask(0, 3, 5), 0b11000);
        assert_eq!(word_mask(1, 60, 70), 0b11_1111);
        assert_eq!(word_mask(0, 60, 70), 0xF << 60);
        assert_eq!(word_mask(2, 0, 1000), u64::MAX);
        let mut seen = vec![];
        for_word_masks(60, 130, |w, m| seen.push((w, m)));
        assert_eq!(seen, vec![(0, 0xF << 60), (1, u64::MAX), (2, 0b11)]);
        for (w, m) in seen {
            assert_eq!(word_mask(w, 60, 130), m);
        }
    }

    #[test]
    fn words_and_computed_runs() {
        let a = AtomicBitmap::new(130);
        let b = AtomicBitmap::new(130);
        a.set_range(0, 130);
        b.set_range(10, 20);
        b.set(100);
        assert_eq!(a.word_count(), 3);
        assert_eq!(a.word(2), 0b11, "bits past len stay zero");
        let mut runs = vec![];
        for_each_run_in_words(
            |w| a.word(w) & !b.word(w),
            5,
            130,
            |s, e| {
                runs.push((s, e));
                true
            },
        );
        assert_eq!(runs, vec![(5, 10), (20, 100), (101, 130)]);
        b.or_word(1, 1 << 3);
        assert_eq!(b.try_get(67), Some(true));
        assert_eq!(b.try_get(130), None);
        b.try_set(130); // out of range: ignored
        b.try_set(129);
        assert!(b.get(129));
    }
}
