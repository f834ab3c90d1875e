/*
 * test_contract: parameter checking and error codes of the C ABI.
 *
 * The header's promise checked throughout: a failing call returns a positive
 * errno, writes none of its outputs and changes no watch state.  So every
 * rejected get is made with sentinel-filled outputs, which are compared
 * afterwards, on a region with a known written page, which must still be
 * reported afterwards.
 */
#include <stdint.h>
#include <sys/mman.h>

#include "ww_test.h"

#define PAGES 8
#define SENTINEL ((void *)(uintptr_t)0xdeadbeef)
#define COUNT_SENTINEL ((uintptr_t)0x5eed)
#define GRAN_SENTINEL 0xabcdu

static size_t ps;

/* Arguments of one ww_get_write_watch call that must be rejected. */
struct bad_get {
    const char *name;
    int want; /* expected errno */
    uint32_t flags;
    void *base;
    size_t size;
    uintptr_t count; /* *count on entry */
    bool null_addrs, null_count, null_gran;
};

/* Run one rejected get and check that nothing was written. */
static void check_bad_get(const struct bad_get *c)
{
    void *addrs[PAGES];
    uintptr_t count = c->count;
    uint32_t gran = GRAN_SENTINEL;

    for (size_t i = 0; i < PAGES; i++)
        addrs[i] = SENTINEL;
    int rc = ww_get_write_watch(c->flags, c->base, c->size,
                                c->null_addrs ? NULL : addrs,
                                c->null_count ? NULL : &count,
                                c->null_gran ? NULL : &gran);
    tap_rc(rc, c->want, c->name);

    bool untouched = count == c->count && gran == GRAN_SENTINEL;
    for (size_t i = 0; i < PAGES; i++)
        untouched = untouched && addrs[i] == SENTINEL;
    tap_ok(untouched, "%s: outputs untouched", c->name);
}

/* Same for ww_get_written_ranges. */
static void check_bad_ranges(const char *name, int want, uint32_t flags,
                             void *base, size_t size, size_t count_in,
                             bool null_ranges, bool null_count)
{
    ww_range ranges[PAGES];
    size_t count = count_in;

    for (size_t i = 0; i < PAGES; i++)
        ranges[i] = (ww_range){SENTINEL, 0x5eed};
    int rc = ww_get_written_ranges(flags, base, size,
                                   null_ranges ? NULL : ranges,
                                   null_count ? NULL : &count);
    tap_rc(rc, want, name);

    bool untouched = count == count_in;
    for (size_t i = 0; i < PAGES; i++)
        untouched = untouched && ranges[i].start == SENTINEL &&
                    ranges[i].size == 0x5eed;
    tap_ok(untouched, "%s: outputs untouched", name);
}

static void test_get_params(char *base, char *heap)
{
    size_t size = PAGES * ps;
    const struct bad_get cases[] = {
        {"get: NULL count", EFAULT, 0, base, size, 0, false, true, false},
        {"get: NULL granularity", EFAULT, 0, base, size, PAGES, false, false,
         true},
        {"get: *count == 0", EINVAL, 0, base, size, 0, false, false, false},
        {"get: size 0", EINVAL, 0, base, 0, PAGES, false, false, false},
        {"get: unknown flag bit 2", EINVAL, 2, base, size, PAGES, false,
         false, false},
        {"get: RESET|0x80000000", EINVAL, WW_FLAG_RESET | 0x80000000u, base,
         size, PAGES, false, false, false},
        {"get: NULL addresses with count > 0", EFAULT, 0, base, size, PAGES,
         true, false, false},
        {"get: one byte past the region end", EINVAL, 0, base + size - ps,
         ps + 1, PAGES, false, false, false},
        {"get: range starting in the guard page", EINVAL, 0, base - ps,
         2 * ps, PAGES, false, false, false},
        {"get: base + size overflows", EINVAL, 0, base, SIZE_MAX, PAGES,
         false, false, false},
        {"get: base + size wraps to a small address", EINVAL, 0, base + ps,
         (size_t)0 - ps, PAGES, false, false, false},
        {"get: malloc memory", EINVAL, 0, heap, ps, PAGES, false, false,
         false},
        {"get: NULL base", EINVAL, 0, NULL, ps, PAGES, false, false, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_bad_get(&cases[i]);
}

static void test_ranges_params(char *base, char *heap)
{
    size_t size = PAGES * ps;

    check_bad_ranges("ranges: NULL count", EFAULT, 0, base, size, 0, false,
                     true);
    check_bad_ranges("ranges: *count == 0", EINVAL, 0, base, size, 0, false,
                     false);
    check_bad_ranges("ranges: size 0", EINVAL, 0, base, 0, PAGES, false,
                     false);
    check_bad_ranges("ranges: unknown flag bit 2", EINVAL, 2, base, size,
                     PAGES, false, false);
    check_bad_ranges("ranges: NULL ranges with count > 0", EFAULT, 0, base,
                     size, PAGES, true, false);
    check_bad_ranges("ranges: one byte past the region end", EINVAL, 0,
                     base + size - ps, ps + 1, PAGES, false, false);
    check_bad_ranges("ranges: base + size overflows", EINVAL, 0, base,
                     SIZE_MAX, PAGES, false, false);
    check_bad_ranges("ranges: malloc memory", EINVAL, 0, heap, ps, PAGES,
                     false, false);
}

static void test_reset_params(char *base, char *heap)
{
    size_t size = PAGES * ps;

    tap_rc(ww_reset_write_watch(base, 0), EINVAL, "reset: size 0");
    tap_rc(ww_reset_write_watch(base + size - ps, ps + 1), EINVAL,
           "reset: one byte past the region end");
    tap_rc(ww_reset_write_watch(base, SIZE_MAX), EINVAL,
           "reset: base + size overflows");
    tap_rc(ww_reset_write_watch(heap, ps), EINVAL, "reset: malloc memory");
}

static void test_protect_params(char *base, char *heap)
{
    tap_rc(ww_protect(heap, ps, PROT_READ), EINVAL, "protect: malloc memory");
    tap_rc(ww_protect(base, ps, PROT_WRITE), EINVAL,
           "protect: PROT_WRITE without PROT_READ");
    tap_rc(ww_protect(base, ps, PROT_READ | 0x100), EINVAL,
           "protect: unknown prot bit");
    tap_rc(ww_protect(base, 0, PROT_READ), EINVAL, "protect: size 0");
    tap_rc(ww_protect(base + (PAGES - 1) * ps, ps + 1, PROT_READ), EINVAL,
           "protect: one byte past the region end");
}

/*
 * All the rejected calls above were made on a region whose page 3 was
 * written (and some with WW_FLAG_RESET): it must still be reported.
 */
static void test_failed_calls_keep_state(char *base)
{
    tap_rc(ww_get_write_watch(WW_FLAG_RESET | 2, base, PAGES * ps,
                              (void *[PAGES]){0}, &(uintptr_t){PAGES},
                              &(uint32_t){0}),
           EINVAL, "get: RESET with an unknown flag bit");
    tap_expect("rejected calls changed no watch state", 0, base, PAGES, "3");
}

static void test_free_params(char *heap)
{
    tap_rc(ww_free(NULL), EINVAL, "free: NULL");
    tap_rc(ww_free(heap), EINVAL, "free: malloc memory");

    char *r = tap_alloc_or_skip(4 * ps);
    tap_rc(ww_free(r + ps), EINVAL, "free: interior address");
    tap_rc(ww_free(r + 1), EINVAL, "free: unaligned interior address");
    /* The rejected frees must not have touched the region. */
    tap_touch(r, 2);
    tap_expect("region still watched after rejected frees", 0, r, 4, "2");
    tap_rc(ww_free(r), 0, "free: the region");
    tap_rc(ww_free(r), EINVAL, "free: the same region again");

    void *addrs[1];
    uintptr_t count = 1;
    uint32_t gran;
    tap_rc(ww_get_write_watch(0, r, ps, addrs, &count, &gran), EINVAL,
           "get: freed region");

    tap_rc(ww_unwatch(NULL), EINVAL, "unwatch: NULL");
    tap_rc(ww_unwatch(heap), EINVAL, "unwatch: never watched memory");
}

static void test_alloc_params(void)
{
    errno = 0;
    void *p = ww_alloc(0);
    tap_ok(p == NULL && errno == EINVAL, "alloc: size 0 -> NULL, EINVAL");
    if (p != NULL)
        ww_free(p);

    errno = 0;
    p = ww_alloc(SIZE_MAX - 2);
    tap_ok(p == NULL && (errno == ENOMEM || errno == EINVAL),
           "alloc: SIZE_MAX - 2 -> NULL, ENOMEM or EINVAL");
    if (p == NULL)
        tap_diag("  errno %d (%s)", errno, strerror(errno));
    else
        ww_free(p);
}

static void test_backend_queries(void)
{
    static const char *const names[] = {"auto", "written", "soft-dirty",
                                        "mprotect"};
    for (int b = 0; b < 4; b++) {
        const char *n = ww_backend_name((ww_backend)b);
        tap_ok(n != NULL && strcmp(n, names[b]) == 0,
               "ww_backend_name(%d) is \"%s\"", b, names[b]);
    }
    tap_ok(ww_backend_name((ww_backend)99) == NULL, "ww_backend_name(99) NULL");
    tap_ok(ww_backend_name((ww_backend)4) == NULL, "ww_backend_name(4) NULL");
    tap_ok(ww_backend_name((ww_backend)-1) == NULL,
           "ww_backend_name(-1) NULL");

    ww_backend active = ww_active_backend();
    uint32_t avail = ww_available_backends();
    tap_ok(active >= WW_BACKEND_WRITTEN && active <= WW_BACKEND_MPROTECT,
           "active backend is a real one (%d)", (int)active);
    tap_ok(avail & (1u << active), "active backend is in the available set");
    tap_ok((avail & ~0xfu) == 0, "no unknown backend bits (0x%x)", avail);
    tap_rc(ww_init(active), 0, "ww_init(active backend) after first use");
    bool other = false;
    for (int b = WW_BACKEND_WRITTEN; b <= WW_BACKEND_MPROTECT; b++) {
        char what[64];
        if (b == (int)active || !(avail & (1u << b)))
            continue;
        snprintf(what, sizeof(what), "ww_init(%s) after first use",
                 ww_backend_name((ww_backend)b));
        tap_rc(ww_init((ww_backend)b), EBUSY, what);
        other = true;
    }
    if (!other)
        tap_skip_check("ww_init(another backend) after first use -> EBUSY",
                       "no other backend available here");

    const char *v = ww_version();
    unsigned ma, mi, pa;
    char extra;
    tap_ok(v != NULL, "ww_version non-NULL");
    tap_ok(v != NULL && sscanf(v, "%u.%u.%u%c", &ma, &mi, &pa, &extra) == 3,
           "ww_version is MAJOR.MINOR.PATCH (\"%s\")", v ? v : "(null)");
}

static void test_misc(char *heap)
{
    ww_stats st;
    tap_rc(ww_get_stats(NULL), EFAULT, "ww_get_stats(NULL)");
    tap_rc(ww_get_stats(&st), 0, "ww_get_stats");
    tap_ok(ww_handle_fault(heap) == 0, "ww_handle_fault(unwatched) is 0");
    tap_ok(ww_handle_fault(NULL) == 0, "ww_handle_fault(NULL) is 0");
    tap_rc(ww_prepare_kernel_write(heap, 16), 0,
           "ww_prepare_kernel_write(unwatched memory)");
}

int main(void)
{
    tap_start("test_contract");
    tap_require_backend();
    ps = tap_page_size();

    char *heap = malloc(4 * ps);
    char *base = tap_alloc_or_skip(PAGES * ps);
    if (heap == NULL)
        tap_bail("malloc failed");
    tap_touch(base, 3);

    test_get_params(base, heap);
    test_ranges_params(base, heap);
    test_reset_params(base, heap);
    test_protect_params(base, heap);
    test_failed_calls_keep_state(base);
    tap_rc(ww_free(base), 0, "free the test region");

    test_free_params(heap);
    test_alloc_params();
    test_backend_queries();
    test_misc(heap);

    free(heap);
    return tap_done();
}
