/*
 * dlopen_host: a host that loads libwritewatch with dlopen, as a runtime
 * with optional write-watch support would.  Also a test (TAP output, exit 0
 * pass / 77 backend unavailable / 1 fail), built as target/ffi/dlopen_host
 * and target/ffi/test_dlopen_host.
 *
 * What it checks beyond "the symbols resolve":
 *  - The library is linked -z nodelete (header promise): after dlclose() it
 *    stays loaded, so memory still watched through a fault handler (the
 *    mprotect backend) keeps working while the host holds no handle.
 *  - Repeated dlopen/dlclose cycles neither crash nor re-initialise the
 *    library behind a live region's back.
 *
 * Usage: dlopen_host [path/to/libwritewatch.so]   (else $WW_LIB, else the
 * dynamic linker's search path, e.g. LD_LIBRARY_PATH=target/release)
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ww_dl.h"

#define PAGES 8
#define CYCLES 25

static unsigned checks, failures;

static bool check(bool cond, const char *name)
{
    printf("%sok %u - %s\n", cond ? "" : "not ", ++checks, name);
    if (!cond)
        failures++;
    return cond;
}

static void poke(char *p)
{
    *(volatile char *)p = 1;
}

/* Does a get over the region report exactly the single page `want`? */
static bool reports_only(const ww_api *api, char *base, size_t want,
                         uint32_t flags)
{
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    void *addrs[PAGES];
    uintptr_t count = PAGES;
    uint32_t gran = 0;

    if (api->ww_get_write_watch(flags, base, PAGES * ps, addrs, &count,
                                &gran) != 0)
        return false;
    return count == 1 && addrs[0] == base + want * ps && gran == ps;
}

/* Open the library, resolve every symbol; *used gets the name that worked. */
static void *open_or_die(const char *path, ww_api *api, const char **used)
{
    void *h = ww_dl_open(path, used);
    if (h == NULL) {
        printf("Bail out! cannot dlopen libwritewatch\n");
        exit(1);
    }
    int missing = ww_api_load(h, api);
    if (!check(missing == 0, "dlsym finds every ww_* function"))
        exit(1);
    return h;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : NULL;
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    const char *used;
    ww_api api;

    setvbuf(stdout, NULL, _IOLBF, 0);
    void *h = open_or_die(path, &api, &used);
    const char *version = api.ww_version();
    printf("# libwritewatch %s\n", version);

    /* A tiny scenario through the function pointers. */
    errno = 0;
    char *base = api.ww_alloc(PAGES * ps);
    if (base == NULL && errno == ENOTSUP) {
        const char *b = getenv("WW_BACKEND");
        printf("SKIP dlopen_host: backend %s unavailable\n", b ? b : "auto");
        return 77;
    }
    if (!check(base != NULL, "ww_alloc through dlsym"))
        return 1;
    printf("# backend: %s\n", api.ww_backend_name(api.ww_active_backend()));
    poke(base + 2 * ps);
    check(reports_only(&api, base, 2, WW_FLAG_RESET), "write reported");

    /* Drop our only handle while the region is live, then write into it:
     * with nodelete the library (and its fault handler) must stay. */
    check(dlclose(h) == 0, "dlclose with a live region");
    void *still = dlopen(used, RTLD_NOW | RTLD_NOLOAD);
    check(still != NULL, "library stays loaded after dlclose (nodelete)");
    if (still != NULL)
        dlclose(still);
    poke(base + 5 * ps); /* would SIGSEGV if the mprotect handler were gone */

    /* Open/close cycles: must not crash, must not lose the region. */
    bool cycles_ok = true;
    for (int i = 0; i < CYCLES; i++) {
        ww_api again;
        void *hi = ww_dl_open(path, NULL);
        cycles_ok = cycles_ok && hi != NULL && ww_api_load(hi, &again) == 0 &&
                    strcmp(again.ww_version(), version) == 0;
        cycles_ok = cycles_ok && hi != NULL && dlclose(hi) == 0;
    }
    check(cycles_ok, "dlopen/dlclose cycles");

    h = open_or_die(path, &api, &used);
    check(reports_only(&api, base, 5, WW_FLAG_RESET),
          "write made while the host held no handle is reported");
    check(api.ww_free(base) == 0, "ww_free");
    check(dlclose(h) == 0, "final dlclose");

    printf("1..%u\n", checks);
    return failures ? 1 : 0;
}
