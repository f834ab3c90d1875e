//! Page size and page-aligned ranges, with checked rounding: every
//! address computation that could wrap returns `None` instead.

use std::sync::atomic::{AtomicUsize, Ordering};

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// The system page size, read once with `sysconf` and cached.
pub fn page_size() -> usize {
    let cached = PAGE_SIZE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let ps = if ps > 0 { ps as usize } else { 4096 };
    PAGE_SIZE.store(ps, Ordering::Relaxed);
    ps
}

/// A half-open, page-aligned address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRange {
    /// First byte (page aligned).
    pub start: usize,
    /// One past the last byte (page aligned).
    pub end: usize,
}

impl PageRange {
    /// `[start, end)`; both must be page aligned and `start <= end`.
    pub fn new(start: usize, end: usize) -> PageRange {
        debug_assert!(start <= end && is_aligned(start) && is_aligned(end));
        PageRange { start, end }
    }

    /// The pages touched by `[addr, addr + len)`: start rounded down, end
    /// rounded up. `None` if `addr + len` or the rounding overflows.
    pub fn covering(addr: usize, len: usize) -> Option<PageRange> {
        let end = addr.checked_add(len)?;
        Some(PageRange {
            start: align_down(addr),
            end: align_up(end)?,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when the range holds no page.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.len() / page_size()
    }

    /// True if `other` lies entirely inside `self`.
    pub fn contains(&self, other: &PageRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    /// The overlap of two ranges, if any.
    pub fn intersect(&self, other: &PageRange) -> Option<PageRange> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start < end).then_some(PageRange { start, end })
    }
}

/// True if `addr` is a multiple of the page size.
pub fn is_aligned(addr: usize) -> bool {
    addr & (page_size() - 1) == 0
}

/// `addr` rounded down to a page boundary.
pub fn align_down(addr: usize) -> usize {
    addr & !(page_size() - 1)
}

/// `addr` rounded up to a page boundary; `None` on overflow.
pub fn align_up(addr: usize) -> Option<usize> {
    Some(addr.checked_add(page_size() - 1)? & !(page_size() - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_overflow() {
        let ps = page_size();
        assert_eq!(
            PageRange::covering(ps + 10, 1),
            Some(PageRange::new(ps, 2 * ps))
        );
        assert_eq!(
            PageRange::covering(2 * ps - 2, 4),
            Some(PageRange::new(ps, 3 * ps))
        );
        assert_eq!(PageRange::covering(usize::MAX - 10, 20), None);
        assert_eq!(
            PageRange::covering(usize::MAX - 10, 5),
            None,
            "rounding up wraps"
        );
        assert_eq!(align_up(usize::MAX), None);
        let a = PageRange::new(0, 4 * ps);
        assert!(a.contains(&PageRange::new(ps, 2 * ps)));
        assert!(!a.contains(&PageRange::new(3 * ps, 5 * ps)));
        assert_eq!(
            a.intersect(&PageRange::new(3 * ps, 5 * ps)),
            Some(PageRange::new(3 * ps, 4 * ps))
        );
        assert_eq!(a.intersect(&PageRange::new(4 * ps, 5 * ps)), None);
    }
}
