/*
 * test_watch: ww_watch/ww_unwatch on memory the caller mapped itself.
 */
#include <stdint.h>
#include <sys/mman.h>

#include "ww_test.h"

#define PAGES 16

static size_t ps;

static char *map_anon(size_t pages, int share)
{
    void *p = mmap(NULL, pages * ps, PROT_READ | PROT_WRITE,
                   share | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        tap_bail("mmap: %s", strerror(errno));
    return p;
}

/* Fill each page with its own byte value, so we can check it is kept. */
static void fill_pattern(char *base, size_t pages)
{
    for (size_t p = 0; p < pages; p++)
        memset(base + p * ps, (int)(p + 1), ps);
}

static bool pattern_kept(const char *base, size_t pages)
{
    for (size_t p = 0; p < pages; p++)
        for (size_t i = 0; i < ps; i += 512)
            if (base[p * ps + i] != (char)(p + 1))
                return false;
    return true;
}

/*
 * Does /proc/self/maps show [base, base + size) entirely read-write?  After
 * ww_unwatch no page may be left write-protected by the library (for the
 * mprotect backend that would mean a crash on the next write).
 */
static bool maps_say_rw(const char *base, size_t size)
{
    uintptr_t lo = (uintptr_t)base, hi = lo + size, covered = lo;
    char line[512];
    FILE *f = fopen("/proc/self/maps", "r");
    bool ok = true;

    if (f == NULL)
        return false;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long s, e;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &s, &e, perms) != 3)
            continue;
        if (e <= lo || s >= hi)
            continue;
        if (perms[0] != 'r' || perms[1] != 'w')
            ok = false;
        if (s <= covered && e > covered)
            covered = e;
    }
    fclose(f);
    return ok && covered >= hi;
}

static void test_watch_private(void)
{
    char *base = map_anon(PAGES, MAP_PRIVATE);

    fill_pattern(base, PAGES);
    tap_rc(ww_watch(base, PAGES * ps), 0, "ww_watch private anonymous memory");
    tap_ok(pattern_kept(base, PAGES), "contents are kept");
    tap_expect("writes before ww_watch are not reported", 0, base, PAGES, "");

    tap_touch(base, 3);
    tap_touch(base, 11);
    tap_expect("writes after ww_watch are reported", WW_FLAG_RESET, base,
               PAGES, "3 11");

    /* Overlaps with a watched range are refused, whichever the overlap. */
    tap_rc(ww_watch(base, PAGES * ps), EBUSY, "ww_watch the same range again");
    tap_rc(ww_watch(base + 4 * ps, 2 * ps), EBUSY, "ww_watch a sub-range");
    tap_rc(ww_unwatch(base + ps), EINVAL, "ww_unwatch an interior address");
    tap_rc(ww_free(base), EINVAL, "ww_free of ww_watch memory");

    tap_touch(base, 5);
    tap_rc(ww_unwatch(base), 0, "ww_unwatch");
    tap_ok(maps_say_rw(base, PAGES * ps), "memory is read-write after unwatch");
    fill_pattern(base, PAGES); /* would crash if a page stayed protected */
    tap_ok(pattern_kept(base, PAGES), "every page writable after unwatch");

    void *addrs[PAGES];
    uintptr_t count = PAGES;
    uint32_t gran;
    tap_rc(ww_get_write_watch(0, base, PAGES * ps, addrs, &count, &gran),
           EINVAL, "get on unwatched memory");
    tap_rc(ww_unwatch(base), EINVAL, "ww_unwatch twice");

    /* The range can be watched again, and starts clean. */
    tap_rc(ww_watch(base, PAGES * ps), 0, "ww_watch the same memory again");
    tap_expect("re-watched memory starts clean", 0, base, PAGES, "");
    tap_touch(base, 0);
    tap_expect("and reports new writes", 0, base, PAGES, "0");
    tap_rc(ww_unwatch(base), 0, "ww_unwatch again");
    munmap(base, PAGES * ps);
}

static void test_watch_shared(void)
{
    char *base = map_anon(PAGES, MAP_SHARED);

    fill_pattern(base, PAGES);
    tap_rc(ww_watch(base, PAGES * ps), 0, "ww_watch shared anonymous memory");
    tap_ok(pattern_kept(base, PAGES), "shared: contents are kept");
    tap_expect("shared: earlier writes not reported", 0, base, PAGES, "");
    tap_touch(base, 2);
    tap_expect("shared: later writes reported", 0, base, PAGES, "2");
    tap_rc(ww_unwatch(base), 0, "shared: ww_unwatch");
    tap_ok(maps_say_rw(base, PAGES * ps), "shared: read-write after unwatch");
    fill_pattern(base, PAGES);
    munmap(base, PAGES * ps);
}

static void test_watch_rejects(void)
{
    char *base = map_anon(PAGES, MAP_PRIVATE);
    char *region = tap_alloc_or_skip(4 * ps);

    tap_rc(ww_watch(base + 1, ps), EINVAL, "ww_watch unaligned base");
    tap_rc(ww_watch(region, 4 * ps), EBUSY, "ww_watch a ww_alloc region");
    tap_rc(ww_watch(region + ps, ps), EBUSY,
           "ww_watch part of a ww_alloc region");
    tap_rc(ww_unwatch(region), EINVAL, "ww_unwatch a ww_alloc region");

    /* A partial overlap at the end of a watched range. */
    tap_rc(ww_watch(base, 8 * ps), 0, "ww_watch first half");
    tap_rc(ww_watch(base + 7 * ps, 2 * ps), EBUSY,
           "ww_watch overlapping its last page");
    tap_rc(ww_watch(base + 8 * ps, 8 * ps), 0, "ww_watch the adjacent half");
    tap_touch(base, 7);
    tap_touch(base, 8);
    tap_expect_in("adjacent watches report independently", 0, base,
                  base + 8 * ps, 8 * ps, PAGES, "8");
    tap_rc(ww_unwatch(base + 8 * ps), 0, "ww_unwatch second half");
    tap_rc(ww_unwatch(base), 0, "ww_unwatch first half");

    ww_free(region);
    munmap(base, PAGES * ps);
}

int main(void)
{
    tap_start("test_watch");
    tap_require_backend();
    ps = tap_page_size();

    test_watch_private();
    test_watch_shared();
    test_watch_rejects();
    return tap_done();
}
