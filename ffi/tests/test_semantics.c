/*
 * test_semantics: GetWriteWatch/ResetWriteWatch behaviour through the C ABI.
 *
 * Each scenario gets a fresh region so that one scenario's writes cannot
 * hide a bug in the next.  Page lists are written as in "1 2 5 40-43".
 */
#include <stdint.h>
#include <sys/mman.h>

#include "ww_test.h"

#define PAGES 64

static size_t ps;

static char *fresh(void)
{
    return tap_alloc_or_skip(PAGES * ps);
}

static void done(char *base)
{
    if (ww_free(base) != 0)
        tap_bail("ww_free failed");
}

static void test_fresh_region_is_clean(void)
{
    char *base = fresh();
    tap_expect("fresh region reports no page", 0, base, PAGES, "");
    /* Reading is not writing. */
    volatile char sum = 0;
    for (size_t p = 0; p < PAGES; p++)
        sum += base[p * ps];
    tap_ok(sum == 0, "fresh region is zeroed");
    tap_expect("reading every page reports no page", 0, base, PAGES, "");
    done(base);
}

static void test_single_byte(void)
{
    char *base = fresh();
    void *addrs[PAGES];
    uintptr_t count = PAGES;
    uint32_t gran = 0;

    tap_poke(base + ps + 1, 7);
    int rc = ww_get_write_watch(0, base, PAGES * ps, addrs, &count, &gran);
    tap_rc(rc, 0, "get after one byte at base+ps+1");
    tap_ok(rc == 0 && count == 1 && addrs[0] == base + ps,
           "reports exactly base+ps (page-aligned address)");
    tap_ok(gran == ps, "granularity is the page size (%u)", gran);
    done(base);
}

static void test_ascending_order(void)
{
    char *base = fresh();
    const size_t order[] = {63, 7, 3, 40, 5, 0};
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        tap_touch(base, order[i]);
    tap_expect("pages come back in ascending order", 0, base, PAGES,
               "0 3 5 7 40 63");
    done(base);
}

static void test_straddling_write(void)
{
    char *base = fresh();
    const uint64_t v = 0x0102030405060708u;
    /* 8 bytes, 4 on each side of the page 9/10 boundary. */
    memcpy(base + 10 * ps - 4, &v, sizeof(v));
    tap_expect("a write across a page boundary marks both pages", 0, base,
               PAGES, "9 10");
    done(base);
}

static void test_reset_flag(void)
{
    char *base = fresh();
    tap_touch(base, 1);
    tap_touch(base, 2);
    tap_touch(base, 5);
    tap_expect("get without RESET", 0, base, PAGES, "1 2 5");
    tap_expect("get without RESET leaves the state unchanged", 0, base, PAGES,
               "1 2 5");
    tap_expect("get with RESET returns the pages", WW_FLAG_RESET, base, PAGES,
               "1 2 5");
    tap_expect("next get after RESET reports nothing", 0, base, PAGES, "");
    tap_touch(base, 2);
    tap_expect("a page written again after RESET is reported again", 0, base,
               PAGES, "2");
    done(base);
}

/* Win32: with RESET, only the pages that fit in the array are reset. */
static void test_capacity_with_reset(void)
{
    char *base = fresh();
    tap_touch(base, 1);
    tap_touch(base, 2);
    tap_touch(base, 4);
    tap_expect_in("count=1 with RESET returns the first page", WW_FLAG_RESET,
                  base, base, PAGES * ps, 1, "1");
    tap_expect("the pages that did not fit are still written", 0, base, PAGES,
               "2 4");
    tap_expect_in("exact capacity (2) with RESET", WW_FLAG_RESET, base, base,
                  PAGES * ps, 2, "2 4");
    tap_expect("all reset", 0, base, PAGES, "");
    done(base);
}

static void test_sub_range(void)
{
    char *base = fresh();
    tap_touch(base, 2);
    tap_touch(base, 6);
    tap_touch(base, 9);
    tap_expect_in("sub-range pages 5..7", 0, base, base + 5 * ps, 3 * ps,
                  PAGES, "6");
    tap_expect_in("unaligned sub-range rounds out (5+10 .. 6+10)", 0, base,
                  base + 5 * ps + 10, ps, PAGES, "6");
    tap_expect_in("2 bytes straddling pages 6/7", 0, base, base + 7 * ps - 1,
                  2, PAGES, "6");
    tap_expect_in("1 byte inside page 9", 0, base, base + 9 * ps + 100, 1,
                  PAGES, "9");
    tap_expect_in("sub-range RESET resets only inside it", WW_FLAG_RESET, base,
                  base + 5 * ps, 5 * ps, PAGES, "6 9");
    tap_expect("page outside the reset sub-range is kept", 0, base, PAGES,
               "2");
    done(base);
}

static void test_reset_write_watch(void)
{
    char *base = fresh();
    for (size_t p = 0; p < 6; p++)
        tap_touch(base, p);
    tap_rc(ww_reset_write_watch(base, 3 * ps), 0, "ww_reset_write_watch(3 pages)");
    tap_expect("only pages 0-2 were reset", 0, base, PAGES, "3-5");
    tap_rc(ww_reset_write_watch(base + 4 * ps + 1, 1), 0,
           "ww_reset_write_watch(1 byte of page 4)");
    tap_expect("an unaligned reset rounds out to page 4", 0, base, PAGES,
               "3 5");
    tap_rc(ww_reset_write_watch(base, PAGES * ps), 0,
           "ww_reset_write_watch(whole region)");
    tap_expect("whole region reset", 0, base, PAGES, "");
    done(base);
}

/* A successful get that finds nothing writes only *count and *granularity. */
static void test_array_untouched_when_empty(void)
{
    char *base = fresh();
    void *addrs[PAGES];
    uintptr_t count = PAGES;
    uint32_t gran = 0;
    bool untouched = true;

    for (size_t i = 0; i < PAGES; i++)
        addrs[i] = (void *)(uintptr_t)0xdeadbeef;
    int rc = ww_get_write_watch(WW_FLAG_RESET, base, PAGES * ps, addrs,
                                &count, &gran);
    tap_ok(rc == 0 && count == 0, "empty get returns count 0");
    for (size_t i = 0; i < PAGES; i++)
        untouched = untouched && addrs[i] == (void *)(uintptr_t)0xdeadbeef;
    tap_ok(untouched, "address array untouched when nothing is reported");
    done(base);
}

static void test_whole_region(void)
{
    char *base = fresh();
    memset(base, 0xa5, PAGES * ps);
    tap_expect("memset of the whole region reports every page",
               WW_FLAG_RESET, base, PAGES, "0-63");
    tap_expect("and RESET cleared them all", 0, base, PAGES, "");
    done(base);
}

/* VirtualProtect keeps the written state in both directions. */
static void test_protect_keeps_state(void)
{
    char *base = fresh();
    tap_touch(base, 4);
    tap_rc(ww_protect(base, PAGES * ps, PROT_READ), 0, "protect PROT_READ");
    tap_ok(base[4 * ps + 1] == 1, "read-only page still readable");
    tap_expect("state kept while read-only", 0, base, PAGES, "4");
    tap_rc(ww_protect(base, PAGES * ps, PROT_READ | PROT_WRITE), 0,
           "protect PROT_READ|PROT_WRITE");
    tap_expect("state kept after RO -> RW (and protect is not a write)", 0,
               base, PAGES, "4");
    tap_touch(base, 5);
    tap_expect("writes after RO -> RW are reported", WW_FLAG_RESET, base,
               PAGES, "4 5");

    /* Protect changes on a part of the region, with state on both sides. */
    tap_touch(base, 10);
    tap_touch(base, 20);
    tap_rc(ww_protect(base + 8 * ps, 8 * ps, PROT_NONE), 0,
           "protect pages 8-15 PROT_NONE");
    tap_rc(ww_protect(base + 8 * ps, 8 * ps, PROT_READ | PROT_WRITE), 0,
           "protect pages 8-15 back to RW");
    tap_touch(base, 12);
    tap_expect("state kept around a PROT_NONE round trip", 0, base, PAGES,
               "10 12 20");
    done(base);
}

static void test_written_ranges(void)
{
    char *base = fresh();
    ww_range r[8];
    size_t n = 8;

    for (size_t p = 1; p <= 3; p++)
        tap_touch(base, p);
    tap_touch(base, 7);
    tap_touch(base, 8);
    tap_touch(base, 10);

    int rc = ww_get_written_ranges(0, base, PAGES * ps, r, &n);
    tap_rc(rc, 0, "ww_get_written_ranges");
    tap_ok(rc == 0 && n == 3 && r[0].start == base + ps &&
               r[0].size == 3 * ps && r[1].start == base + 7 * ps &&
               r[1].size == 2 * ps && r[2].start == base + 10 * ps &&
               r[2].size == ps,
           "maximal runs [1,3] [7,8] [10]");

    n = 8;
    rc = ww_get_written_ranges(0, base + 2 * ps, 6 * ps, r, &n);
    tap_ok(rc == 0 && n == 2 && r[0].start == base + 2 * ps &&
               r[0].size == 2 * ps && r[1].start == base + 7 * ps &&
               r[1].size == ps,
           "runs clipped to the query (pages 2..7): [2,3] [7]");

    n = 1;
    rc = ww_get_written_ranges(WW_FLAG_RESET, base, PAGES * ps, r, &n);
    tap_ok(rc == 0 && n == 1 && r[0].start == base + ps &&
               r[0].size == 3 * ps,
           "count=1 with RESET returns the first run");
    tap_expect("only the returned run was reset", 0, base, PAGES, "7 8 10");
    done(base);
}

/* ww_alloc rounds the size up to whole pages. */
static void test_unaligned_alloc_size(void)
{
    char *base = tap_alloc_or_skip(ps + 1);
    tap_poke(base + ps, 1);
    tap_expect_in("ww_alloc(ps+1): the second page is usable and watched", 0,
                  base, base, ps + 1, 2, "1");
    done(base);
}

/* Counter deltas for a known sequence of calls (this test is single-threaded). */
static void test_stats(void)
{
    ww_stats a, b;
    char *base = fresh();

    tap_touch(base, 1);
    tap_touch(base, 2);
    tap_touch(base, 3);
    ww_get_stats(&a);
    tap_ok(a.regions >= 1 && a.watched_bytes >= PAGES * ps,
           "stats count the live region");
    tap_expect("get with RESET (3 pages)", WW_FLAG_RESET, base, PAGES,
               "1-3");
    tap_rc(ww_reset_write_watch(base, ps), 0, "reset one page");
    void *addrs[1];
    uintptr_t count = 0;
    uint32_t gran;
    ww_get_write_watch(0, base, PAGES * ps, addrs, &count, &gran); /* fails */
    ww_get_stats(&b);
    tap_ok(b.scans == a.scans + 1, "scans +1 (failed gets do not count)");
    tap_ok(b.resets == a.resets + 2, "resets +2 (get with RESET + reset)");
    tap_ok(b.pages_reported == a.pages_reported + 3, "pages_reported +3");
    if (ww_active_backend() == WW_BACKEND_MPROTECT) {
        tap_touch(base, 9);
        ww_get_stats(&b);
        tap_ok(b.faults_handled > a.faults_handled,
               "mprotect: a first write is a handled fault");
    }
    done(base);
    ww_get_stats(&b);
    tap_ok(b.regions == a.regions - 1 &&
               b.watched_bytes == a.watched_bytes - PAGES * ps,
           "ww_free removes the region from the stats");
}

int main(void)
{
    tap_start("test_semantics");
    tap_require_backend();
    ps = tap_page_size();

    test_fresh_region_is_clean();
    test_single_byte();
    test_ascending_order();
    test_straddling_write();
    test_reset_flag();
    test_capacity_with_reset();
    test_sub_range();
    test_reset_write_watch();
    test_array_untouched_when_empty();
    test_whole_region();
    test_protect_keeps_state();
    test_written_ranges();
    test_unaligned_alloc_size();
    test_stats();
    return tap_done();
}
