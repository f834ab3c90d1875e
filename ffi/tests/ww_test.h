/*
 * ww_test.h: tiny TAP-style harness shared by the C tests (ffi/tests/).
 *
 * Output, all on stdout so the order is preserved in a log:
 *   ok 3 - name              a passing check
 *   not ok 4 - name          a failing check, followed by "# ..." details
 *   ok 5 - name # SKIP why   a check that cannot run here
 *   1..5                     the plan, printed last
 * Exit status: 0 all passed, 1 something failed, 77 whole test skipped.
 * On a skip, the last line printed is "SKIP <test>: <reason>" (the backend
 * runners show the last line of a skipped test's log).
 *
 * Each test program includes this header once, so the static state below
 * is per program.
 */
#ifndef WW_TEST_H
#define WW_TEST_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "writewatch.h"

#define WW_EXIT_SKIP 77

static struct {
    const char *test; /* program name, for SKIP lines */
    unsigned n;       /* checks so far */
    unsigned failed;  /* failing checks so far */
} tap;

static inline void tap_start(const char *test)
{
    tap.test = test;
    /* Line-buffered even into a file: a crash still leaves the last lines. */
    setvbuf(stdout, NULL, _IOLBF, 0);
}

/* Diagnostic line ("# ..."), never affects the result. */
static inline void tap_diag(const char *fmt, ...)
{
    va_list ap;
    fputs("# ", stdout);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
}

/* Record one check; returns `cond` so callers can add details on failure. */
static inline bool tap_ok(bool cond, const char *fmt, ...)
{
    va_list ap;
    tap.n++;
    if (!cond)
        tap.failed++;
    printf("%sok %u - ", cond ? "" : "not ", tap.n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    return cond;
}

/* Check that an int-returning ww_* call returned `want` (0 or an errno). */
static inline bool tap_rc(int got, int want, const char *what)
{
    bool ok = tap_ok(got == want, "%s -> %s", what,
                     want ? strerror(want) : "0");
    if (!ok)
        tap_diag("  got %d (%s)", got, got ? strerror(got) : "success");
    return ok;
}

static inline void tap_skip_check(const char *name, const char *why)
{
    printf("ok %u - %s # SKIP %s\n", ++tap.n, name, why);
}

/* Print the plan and return the exit status for main(). */
static inline int tap_done(void)
{
    printf("1..%u\n", tap.n);
    if (tap.failed)
        printf("# %u of %u checks failed\n", tap.failed, tap.n);
    return tap.failed ? 1 : 0;
}

/* Stop now: something the rest of the test depends on failed. */
static inline _Noreturn void tap_bail(const char *fmt, ...)
{
    va_list ap;
    fputs("Bail out! ", stdout);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    exit(1);
}

static inline size_t tap_page_size(void)
{
    return (size_t)sysconf(_SC_PAGESIZE);
}

/* Name of the backend asked for in $WW_BACKEND ("auto" when unset). */
static inline const char *tap_requested_backend(void)
{
    const char *b = getenv("WW_BACKEND");
    return (b != NULL && *b != '\0') ? b : "auto";
}

/*
 * ww_alloc that turns "the requested backend does not work on this kernel"
 * (NULL with errno ENOTSUP) into a whole-test skip, and any other failure
 * into a bail-out.  The library picks $WW_BACKEND at its first use, so the
 * first ww_alloc of a test is where unavailability shows up.
 */
static inline void *tap_alloc_or_skip(size_t size)
{
    errno = 0;
    void *p = ww_alloc(size);
    if (p != NULL)
        return p;
    if (errno == ENOTSUP) {
        printf("SKIP %s: backend %s unavailable\n", tap.test,
               tap_requested_backend());
        exit(WW_EXIT_SKIP);
    }
    tap_bail("ww_alloc(%zu) failed: %s", size, strerror(errno));
}

/* Make sure the backend works (or skip), and say which one runs. */
static inline void tap_require_backend(void)
{
    void *p = tap_alloc_or_skip(tap_page_size());
    if (ww_free(p) != 0)
        tap_bail("ww_free of a fresh region failed");
    ww_backend b = ww_active_backend();
    const char *name = ww_backend_name(b);
    tap_diag("backend: %s (requested %s), library %s", name ? name : "?",
             tap_requested_backend(), ww_version());
}

/* A store the compiler must perform, exactly where written. */
static inline void tap_poke(char *p, char v)
{
    *(volatile char *)p = v;
}

/* Write one byte in page `page` of `base` (not at offset 0, on purpose). */
static inline void tap_touch(char *base, size_t page)
{
    tap_poke(base + page * tap_page_size() + 1, 1);
}

/*
 * ww_get_write_watch over [qbase, qbase + qsize) with room for `cap`
 * addresses; converts the result to page indices relative to `origin`
 * (idx must hold cap entries).  Also checks the granularity.  Returns the
 * call's result; *n receives the count (0 on failure).
 */
static inline int tap_get_pages(uint32_t flags, char *origin, char *qbase,
                                size_t qsize, size_t cap, size_t *idx,
                                size_t *n)
{
    void **addrs = calloc(cap ? cap : 1, sizeof(*addrs));
    uintptr_t count = cap;
    uint32_t gran = 0;
    size_t ps = tap_page_size();

    if (addrs == NULL)
        tap_bail("out of memory");
    *n = 0;
    int rc = ww_get_write_watch(flags, qbase, qsize, addrs, &count, &gran);
    if (rc == 0) {
        if (gran != ps)
            tap_ok(false, "granularity %u is the page size %zu", gran, ps);
        for (uintptr_t i = 0; i < count && i < cap; i++)
            idx[i] = (size_t)((char *)addrs[i] - origin) / ps;
        *n = (size_t)count;
    }
    free(addrs);
    return rc;
}

/*
 * Parse a page list such as "1 2 5 40-43" (ascending, as the library must
 * report them) into out[]; returns how many.  "" is the empty list.
 */
static inline size_t tap_parse_pages(const char *spec, size_t *out,
                                     size_t cap)
{
    size_t n = 0;
    char *end;

    for (const char *s = spec; *s != '\0'; s = end) {
        if (*s == ' ') {
            end = (char *)s + 1;
            continue;
        }
        size_t lo = strtoul(s, &end, 10), hi = lo;
        if (end == s)
            tap_bail("bad page list \"%s\"", spec);
        if (*end == '-')
            hi = strtoul(end + 1, &end, 10);
        for (size_t p = lo; p <= hi; p++) {
            if (n == cap)
                tap_bail("page list \"%s\" too long", spec);
            out[n++] = p;
        }
    }
    return n;
}

static inline void tap_print_pages(const char *label, const size_t *idx,
                                   size_t n)
{
    printf("#   %s:", label);
    for (size_t i = 0; i < n; i++)
        printf(" %zu", idx[i]);
    printf("%s\n", n ? "" : " (none)");
}

/*
 * The workhorse check: ww_get_write_watch(flags) over [qbase, qbase+qsize)
 * reports exactly the pages in `want` (indices relative to `origin`, in
 * ascending order), with room for `cap` addresses.
 */
static inline bool tap_expect_in(const char *name, uint32_t flags,
                                 char *origin, char *qbase, size_t qsize,
                                 size_t cap, const char *want)
{
    size_t *got = calloc(cap + 1, sizeof(*got));
    size_t *exp = calloc(cap + 1, sizeof(*exp));
    size_t ngot, nexp;
    bool same;

    if (got == NULL || exp == NULL)
        tap_bail("out of memory");
    nexp = tap_parse_pages(want, exp, cap + 1);
    int rc = tap_get_pages(flags, origin, qbase, qsize, cap, got, &ngot);
    if (rc != 0) {
        same = tap_rc(rc, 0, name);
    } else {
        same = ngot == nexp;
        for (size_t i = 0; same && i < ngot; i++)
            same = got[i] == exp[i];
        if (!tap_ok(same, "%s", name)) {
            tap_print_pages("got ", got, ngot);
            tap_print_pages("want", exp, nexp);
        }
    }
    free(got);
    free(exp);
    return same;
}

/* tap_expect_in over a whole region of `pages` pages. */
static inline bool tap_expect(const char *name, uint32_t flags, char *base,
                              size_t pages, const char *want)
{
    return tap_expect_in(name, flags, base, base, pages * tap_page_size(),
                         pages, want);
}

#endif /* WW_TEST_H */
