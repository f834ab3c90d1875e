/*
 * demo: what libwritewatch does, shown the way a Wine-like runtime uses it.
 *
 * The library is loaded with dlopen() (a runtime must still start when it
 * is missing), every ww_* function is resolved up front, and then we write
 * a known set of pages and ask which pages were written.  The demo is also
 * a check: it exits 1 if the library reports anything other than what was
 * written.
 *
 * Usage: demo [path/to/libwritewatch.so]
 *   Without an argument: $WW_LIB, else "libwritewatch.so.0" then
 *   "libwritewatch.so" through the dynamic linker's search path (e.g.
 *   LD_LIBRARY_PATH=target/release).  $WW_BACKEND (auto|written|soft-dirty|
 *   mprotect) picks the backend.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "ww_dl.h"

#define DEMO_PAGES 64
#define BENCH_BYTES ((size_t)64 << 20) /* 64 MiB */
#define BENCH_ROUNDS 10

static ww_api ww; /* every library function, resolved by dlsym */
static size_t ps;
static int mismatches;

/* ---- small helpers ---------------------------------------------------- */

static void poke(char *p)
{
    *(volatile char *)p = 1; /* a store the compiler must keep */
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Compare what the library said with what we wrote; say so either way. */
static void verdict(const size_t *got, size_t ngot, const size_t *want,
                    size_t nwant)
{
    bool same = ngot == nwant;
    for (size_t i = 0; same && i < ngot; i++)
        same = got[i] == want[i];
    if (same) {
        printf("   ok\n");
        return;
    }
    printf("   MISMATCH, expected:");
    for (size_t i = 0; i < nwant; i++)
        printf(" %zu", want[i]);
    printf("\n");
    mismatches++;
}

static void print_pages(const size_t *pages, size_t n)
{
    if (n == 0)
        printf(" (none)");
    for (size_t i = 0; i < n; i++)
        printf(" %zu", pages[i]);
}

/* ---- the walkthrough --------------------------------------------------- */

static void show_environment(const char *lib_name)
{
    struct utsname u;
    uint32_t avail = ww.ww_available_backends();

    printf("writewatch demo: which pages of my own memory did I write?\n\n");
    printf("  library : %s (version %s)\n", lib_name, ww.ww_version());
    printf("  kernel  : %s\n", uname(&u) == 0 ? u.release : "?");
    printf("  backends available here:");
    for (int b = WW_BACKEND_WRITTEN; b <= WW_BACKEND_MPROTECT; b++)
        if (avail & (1u << b))
            printf(" %s", ww.ww_backend_name((ww_backend)b));
    printf("%s\n", (avail & 0xeu) ? "" : " (none)");
}

/*
 * ww_get_write_watch over the region, as page indices.  With
 * WW_FLAG_RESET the reported pages become "unwritten" again.
 */
static size_t get_pages(char *base, uint32_t flags, size_t *pages)
{
    void *addrs[DEMO_PAGES];
    uintptr_t count = DEMO_PAGES;
    uint32_t granularity = 0;
    int rc = ww.ww_get_write_watch(flags, base, DEMO_PAGES * ps, addrs,
                                   &count, &granularity);
    if (rc != 0) {
        printf("   ww_get_write_watch failed: %s\n", strerror(rc));
        mismatches++;
        return 0;
    }
    if (granularity != ps) {
        printf("   granularity %u is not the page size\n", granularity);
        mismatches++;
    }
    for (uintptr_t i = 0; i < count; i++)
        pages[i] = (size_t)((char *)addrs[i] - base) / ps;
    return (size_t)count;
}

static void show_get(const char *label, char *base, uint32_t flags,
                     const size_t *want, size_t nwant)
{
    size_t pages[DEMO_PAGES];
    size_t n = get_pages(base, flags, pages);
    printf("  %-38s ->", label);
    print_pages(pages, n);
    verdict(pages, n, want, nwant);
}

/* The same question answered as runs of pages: [first-last]. */
static void show_ranges(char *base, const size_t *want, size_t nwant)
{
    ww_range r[DEMO_PAGES];
    size_t n = DEMO_PAGES, got[DEMO_PAGES], ngot = 0;
    int rc = ww.ww_get_written_ranges(0, base, DEMO_PAGES * ps, r, &n);

    printf("  %-38s ->", "ww_get_written_ranges");
    if (rc != 0) {
        printf(" failed: %s\n", strerror(rc));
        mismatches++;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        size_t first = (size_t)((char *)r[i].start - base) / ps;
        size_t last = first + r[i].size / ps - 1;
        if (first == last)
            printf(" [%zu]", first);
        else
            printf(" [%zu-%zu]", first, last);
        for (size_t p = first; p <= last && ngot < DEMO_PAGES; p++)
            got[ngot++] = p;
    }
    verdict(got, ngot, want, nwant);
}

/* The Win32-style walkthrough; returns the region, still allocated. */
static char *walkthrough(void)
{
    static const size_t written[] = {1, 2, 5, 40, 41, 42, 43};
    const size_t nwritten = sizeof(written) / sizeof(written[0]);

    char *base = ww.ww_alloc(DEMO_PAGES * ps);
    if (base == NULL) {
        const char *want = getenv("WW_BACKEND");
        printf("ww_alloc failed: %s\n", strerror(errno));
        if (errno == ENOTSUP)
            printf("(backend \"%s\" is not available on this kernel)\n",
                   want ? want : "auto");
        exit(1);
    }
    printf("  in use  : %s\n\n",
           ww.ww_backend_name(ww.ww_active_backend()));
    printf("ww_alloc gave %d pages of %zu bytes at %p (fresh: none written)\n",
           DEMO_PAGES, ps, (void *)base);
    show_get("ww_get_write_watch (fresh)", base, 0, NULL, 0);

    printf("\nWriting one byte into pages 1, 2, 5, 40-43 ...\n");
    for (size_t i = 0; i < nwritten; i++)
        poke(base + written[i] * ps + 123);
    show_get("ww_get_write_watch", base, 0, written, nwritten);
    show_ranges(base, written, nwritten);
    show_get("ww_get_write_watch(WW_FLAG_RESET)", base, WW_FLAG_RESET,
             written, nwritten);
    show_get("again, after the reset", base, 0, NULL, 0);

    printf("\nWriting page 7 ...\n");
    poke(base + 7 * ps);
    show_get("ww_get_write_watch(WW_FLAG_RESET)", base, WW_FLAG_RESET,
             (const size_t[]){7}, 1);
    return base;
}

/* ---- timing ------------------------------------------------------------ */

/*
 * Mark about 10% of the pages, scattered (a fixed pseudo-random choice so
 * runs are comparable).  Returns how many were chosen.
 */
static size_t choose_pages(bool *chosen, size_t npages)
{
    uint32_t x = 2463534242u;
    size_t n = 0;
    for (size_t p = 0; p < npages; p++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        chosen[p] = x % 10 == 0;
        n += chosen[p];
    }
    return n;
}

static void bench(void)
{
    size_t npages = BENCH_BYTES / ps;
    bool *chosen = calloc(npages, sizeof(*chosen));
    void **addrs = calloc(npages, sizeof(*addrs));
    char *base = ww.ww_alloc(BENCH_BYTES);
    uint64_t write_ns = 0, get_ns = 0;

    if (chosen == NULL || addrs == NULL || base == NULL) {
        printf("timing skipped: out of memory\n");
        goto out;
    }
    size_t n = choose_pages(chosen, npages);

    /* Populate every page first, so that we time the write-watch cost of
     * a first write after a reset, not the kernel handing out zero pages. */
    memset(base, 1, BENCH_BYTES);
    ww.ww_reset_write_watch(base, BENCH_BYTES);

    /* Round -1 is a warm-up, not counted: the first reset after populating
     * may still be splitting huge pages and the like. */
    for (int round = -1; round < BENCH_ROUNDS; round++) {
        uint64_t t0 = now_ns();
        for (size_t p = 0; p < npages; p++)
            if (chosen[p])
                poke(base + p * ps);
        uint64_t t1 = now_ns();
        uintptr_t count = npages;
        uint32_t gran;
        int rc = ww.ww_get_write_watch(WW_FLAG_RESET, base, BENCH_BYTES,
                                       addrs, &count, &gran);
        uint64_t t2 = now_ns();
        if (rc != 0 || count != n) {
            printf("  timing round %d: reported %lu pages, wrote %zu\n",
                   round, (unsigned long)count, n);
            mismatches++;
        }
        if (round >= 0) {
            write_ns += t1 - t0;
            get_ns += t2 - t1;
        }
    }
    printf("\nTiming (64 MiB region = %zu pages, %zu scattered pages written "
           "per round, %d rounds):\n", npages, n, BENCH_ROUNDS);
    printf("  get+reset      : %8.1f us per call (%.1f ns per region page)\n",
           get_ns / 1e3 / BENCH_ROUNDS,
           (double)get_ns / BENCH_ROUNDS / (double)npages);
    printf("  first write    : %8.1f ns per page (after a reset)\n",
           (double)write_ns / BENCH_ROUNDS / (double)n);
out:
    if (base != NULL)
        ww.ww_free(base);
    free(addrs);
    free(chosen);
}

static void show_stats(void)
{
    ww_stats s;
    if (ww.ww_get_stats(&s) != 0) {
        printf("ww_get_stats failed\n");
        mismatches++;
        return;
    }
    printf("\nStats: regions %llu, watched bytes %llu, scans %llu, "
           "resets %llu,\n       pages reported %llu, faults handled %llu\n",
           (unsigned long long)s.regions,
           (unsigned long long)s.watched_bytes,
           (unsigned long long)s.scans, (unsigned long long)s.resets,
           (unsigned long long)s.pages_reported,
           (unsigned long long)s.faults_handled);
}

int main(int argc, char **argv)
{
    const char *lib_name = NULL;

    ps = (size_t)sysconf(_SC_PAGESIZE);
    void *lib = ww_dl_open(argc > 1 ? argv[1] : NULL, &lib_name);
    if (lib == NULL)
        return 1;
    if (ww_api_load(lib, &ww) != 0) {
        fprintf(stderr, "demo: the library lacks ww_* functions; wrong "
                        "library or version?\n");
        return 1;
    }

    show_environment(lib_name);
    char *base = walkthrough();
    bench();
    show_stats();
    if (ww.ww_free(base) != 0) {
        printf("ww_free failed\n");
        mismatches++;
    }
    dlclose(lib);
    if (mismatches) {
        printf("\nFAILED: %d result(s) differ from what was written\n",
               mismatches);
        return 1;
    }
    printf("\nAll results match what was written.\n");
    return 0;
}
