/*
 * test_threads: no write is lost while other threads get-and-reset.
 *
 * Writer threads store ever-increasing, globally unique values into the
 * first word of pages they own (each page has one writer), while the main
 * thread loops ww_get_write_watch(WW_FLAG_RESET).  Each time a page is
 * reported the main thread records the page's current value ("last seen").
 *
 * The oracle: after the writers stop and one final get-with-reset, every
 * page must hold its last-seen value.  Why that is exact: a page last
 * reported (and reset) at time t was read just after t; any store after t
 * re-marks it written, so it would have been reported again and re-read.  A
 * page whose value differs from the last one seen was therefore written
 * after its last reset without being reported: a lost write.
 *
 * Extra reports (a page reported whose value did not change since it was
 * last seen) are allowed -- a store can land between the reset and our
 * read, and is then reported once more -- and only counted.
 *
 * Knobs: WW_THREADS_MS (run time, default 300), WW_THREADS (writers, 2..4).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "ww_test.h"

#define PAGES 256
#define MAX_WRITERS 4

static size_t ps;

struct writer {
    pthread_t thread;
    unsigned id, nwriters;
    char *base;
    atomic_bool *stop;
    uint64_t writes;
};

static _Atomic uint64_t *slot(char *base, size_t page)
{
    return (_Atomic uint64_t *)(void *)(base + page * ps);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Writer: random pages among those it owns (page % nwriters == id). */
static void *writer_main(void *arg)
{
    struct writer *w = arg;
    uint64_t rng = 0x9e3779b97f4a7c15u * (w->id + 1), seq = 0;
    size_t own = PAGES / w->nwriters;

    while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        size_t page = w->id + w->nwriters * (size_t)(rng % own);
        /* Unique across writers: writer id in the top bits. */
        uint64_t value = ((uint64_t)(w->id + 1) << 56) | ++seq;
        atomic_store_explicit(slot(w->base, page), value,
                              memory_order_relaxed);
        w->writes++;
    }
    return NULL;
}

struct oracle {
    uint64_t last_seen[PAGES];
    uint64_t reports, extras, scans;
};

/* One get-with-reset; record what each reported page now holds. */
static int scan(char *base, struct oracle *o, size_t *n_out)
{
    static void *addrs[PAGES];
    uintptr_t count = PAGES;
    uint32_t gran;
    int rc = ww_get_write_watch(WW_FLAG_RESET, base, PAGES * ps, addrs,
                                &count, &gran);
    if (rc != 0)
        return rc;
    for (uintptr_t i = 0; i < count; i++) {
        size_t page = (size_t)((char *)addrs[i] - base) / ps;
        uint64_t v = atomic_load_explicit(slot(base, page),
                                          memory_order_relaxed);
        if (v == o->last_seen[page])
            o->extras++;
        o->last_seen[page] = v;
    }
    o->reports += count;
    o->scans++;
    *n_out = count;
    return 0;
}

static unsigned env_uint(const char *name, unsigned def, unsigned lo,
                         unsigned hi)
{
    const char *s = getenv(name);
    unsigned v = s ? (unsigned)strtoul(s, NULL, 10) : def;
    return v < lo ? lo : v > hi ? hi : v;
}

/* Compare every page with its last-seen value; returns the lost writes. */
static unsigned count_lost(char *base, const struct oracle *o)
{
    unsigned lost = 0;
    for (size_t p = 0; p < PAGES; p++) {
        uint64_t v = atomic_load_explicit(slot(base, p), memory_order_relaxed);
        if (v != o->last_seen[p] && lost++ < 10)
            tap_diag("  page %zu holds %#llx, last reported value %#llx", p,
                     (unsigned long long)v,
                     (unsigned long long)o->last_seen[p]);
    }
    return lost;
}

int main(void)
{
    tap_start("test_threads");
    tap_require_backend();
    ps = tap_page_size();

    unsigned run_ms = env_uint("WW_THREADS_MS", 300, 10, 600000);
    unsigned nwriters = env_uint("WW_THREADS", MAX_WRITERS, 2, MAX_WRITERS);
    char *base = tap_alloc_or_skip(PAGES * ps);
    static struct oracle o; /* zero: a fresh region holds zeros */
    struct writer w[MAX_WRITERS];
    atomic_bool stop = false;
    int scan_rc = 0;
    size_t n;

    for (unsigned i = 0; i < nwriters; i++) {
        w[i] = (struct writer){.id = i, .nwriters = nwriters, .base = base,
                               .stop = &stop};
        if (pthread_create(&w[i].thread, NULL, writer_main, &w[i]) != 0)
            tap_bail("pthread_create failed");
    }
    for (uint64_t end = now_ms() + run_ms; now_ms() < end && scan_rc == 0;)
        scan_rc = scan(base, &o, &n);
    atomic_store(&stop, true);

    uint64_t writes = 0;
    for (unsigned i = 0; i < nwriters; i++) {
        pthread_join(w[i].thread, NULL);
        writes += w[i].writes;
    }
    tap_rc(scan_rc, 0, "get with RESET while writers run");
    tap_rc(scan(base, &o, &n), 0, "final get with RESET after the writers");
    tap_diag("%u writers, %llu writes, %llu scans, %llu pages reported, "
             "%llu extras (reported, unchanged since last seen)",
             nwriters, (unsigned long long)writes,
             (unsigned long long)o.scans, (unsigned long long)o.reports,
             (unsigned long long)o.extras);
    tap_ok(writes > 0 && o.scans > 1, "writers and scanner both ran");

    unsigned lost = count_lost(base, &o);
    tap_ok(lost == 0, "no lost write (%u pages changed but not reported)",
           lost);
    tap_ok(scan(base, &o, &n) == 0 && n == 0,
           "quiescent: nothing reported after the final reset");
    tap_rc(ww_free(base), 0, "ww_free");
    return tap_done();
}
