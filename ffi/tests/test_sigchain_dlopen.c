/*
 * test_sigchain_dlopen: a C host that dlopens libwritewatch.so and has its
 * own SIGSEGV handler, with the mprotect backend (the one that needs ours).
 *
 * Each case runs in a forked child (which loads the library itself, so the
 * order of "host installs" and "library installs" is the case's own); the
 * parent checks how the child ended:
 *   host_before        host handler installed before the library's: our
 *                      faults never reach it, its own still do
 *   host_after         host handler installed after, calling
 *                      ww_handle_fault(si_addr) first, chaining to ours
 *   dlclose_harmless   after dlclose a watched write is still resolved
 *                      (the library is linked -z nodelete)
 *   crash_readonly     write to a read-only unwatched page: SIGSEGV
 *   crash_null         NULL dereference: SIGSEGV
 *   crash_host_after   not ours, not the host's: through both handlers to
 *                      the default action, SIGSEGV
 *
 * The library comes from $WW_LIB, else the dynamic linker's search path.
 * It is a test of the mprotect backend only: with $WW_BACKEND naming another
 * backend it skips.  Exit status: 0 pass, 77 skip (last line "SKIP ..."),
 * 1 fail.  Output: "ok N - case" / "not ok N - case", then the plan.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "writewatch.h"

#define TEST_NAME "test_sigchain_dlopen"
#define EXIT_SKIP 77

/* The library's functions, looked up with dlsym. */
static struct {
    void *handle;
    int (*init)(ww_backend);
    void *(*alloc)(size_t);
    int (*get_write_watch)(uint32_t, void *, size_t, void **, uintptr_t *,
                           uint32_t *);
    int (*handle_fault)(void *);
} ww;

static size_t ps;

static void die(const char *what)
{
    printf("# %s: %s\n", what, strerror(errno));
    fflush(stdout);
    _exit(1);
}

/* dlsym into a function pointer without an object-to-function cast. */
static void sym(void *fn_ptr, size_t size, const char *name)
{
    void *p = dlsym(ww.handle, name);
    if (p == NULL) {
        printf("# dlsym(%s): %s\n", name, dlerror());
        _exit(1);
    }
    memcpy(fn_ptr, &p, size);
}

/* dlopen + dlsym + ww_init(MPROTECT); exits 77 if unavailable. */
static void load(void)
{
    const char *path = getenv("WW_LIB");
    ww.handle = dlopen(path != NULL ? path : "libwritewatch.so.0", RTLD_NOW);
    if (ww.handle == NULL && path == NULL)
        ww.handle = dlopen("libwritewatch.so", RTLD_NOW);
    if (ww.handle == NULL) {
        printf("# dlopen: %s\n", dlerror());
        _exit(1);
    }
    sym(&ww.init, sizeof ww.init, "ww_init");
    sym(&ww.alloc, sizeof ww.alloc, "ww_alloc");
    sym(&ww.get_write_watch, sizeof ww.get_write_watch, "ww_get_write_watch");
    sym(&ww.handle_fault, sizeof ww.handle_fault, "ww_handle_fault");
    int rc = ww.init(WW_BACKEND_MPROTECT);
    if (rc != 0) {
        printf("SKIP " TEST_NAME ": mprotect backend unavailable: %s\n",
               strerror(rc));
        fflush(stdout);
        _exit(EXIT_SKIP);
    }
}

static void poke(char *p, char v)
{
    *(volatile char *)p = v;
}

static char *map_page(int prot)
{
    void *p = mmap(NULL, ps, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    return p;
}

/* Written pages of [base, base + pages*ps) as a bit mask (pages < 64). */
static uint64_t written_mask(char *base, size_t pages)
{
    void *addrs[64];
    uintptr_t count = pages;
    uint32_t gran = 0;
    uint64_t mask = 0;
    if (ww.get_write_watch(0, base, pages * ps, addrs, &count, &gran) != 0)
        die("ww_get_write_watch");
    for (uintptr_t i = 0; i < count; i++)
        mask |= UINT64_C(1) << (((char *)addrs[i] - base) / ps);
    return mask;
}

static void expect(int cond, const char *what)
{
    if (!cond) {
        printf("# check failed: %s\n", what);
        fflush(stdout);
        _exit(1);
    }
}

/* ---- the host's handler and its state ---------------------------------- */

static char *volatile host_page;
static volatile sig_atomic_t host_faults, host_saw_ours;
static struct sigaction host_previous;

/* The host's own business: its one read-only page. */
static int host_fix_up(void *addr)
{
    if ((char *)((uintptr_t)addr & ~(uintptr_t)(ps - 1)) != host_page)
        return 0;
    host_faults++;
    mprotect(host_page, ps, PROT_READ | PROT_WRITE);
    return 1;
}

static void host_give_up(int sig)
{
    signal(sig, SIG_DFL); /* the fault repeats and kills */
}

static void host_before_handler(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    if (!host_fix_up(si->si_addr))
        host_give_up(sig);
}

static void host_after_handler(int sig, siginfo_t *si, void *ctx)
{
    if (ww.handle_fault(si->si_addr)) {
        host_saw_ours++;
        return;
    }
    if (host_fix_up(si->si_addr))
        return;
    if (host_previous.sa_flags & SA_SIGINFO)
        host_previous.sa_sigaction(sig, si, ctx);
    else if (host_previous.sa_handler == SIG_DFL ||
             host_previous.sa_handler == SIG_IGN)
        host_give_up(sig);
    else
        host_previous.sa_handler(sig);
}

static void install_host(void (*fn)(int, siginfo_t *, void *))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fn;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &host_previous) != 0)
        die("sigaction");
}

/* ---- cases (each runs in its own child) --------------------------------- */

static void case_host_before(void)
{
    host_page = map_page(PROT_READ);
    install_host(host_before_handler);
    load();
    char *base = ww.alloc(8 * ps);
    expect(base != NULL, "ww_alloc");
    poke(base + 1 * ps, 1);
    poke(base + 4 * ps + 9, 1);
    expect(written_mask(base, 8) == ((1u << 1) | (1u << 4)),
           "pages 1 and 4 written");
    expect(host_faults == 0, "the host saw none of our faults");
    poke(host_page, 7);
    expect(host_faults == 1, "the host got its own fault");
    expect(host_page[0] == 7, "the host's write landed");
}

static void case_host_after(void)
{
    load();
    char *base = ww.alloc(8 * ps);
    expect(base != NULL, "ww_alloc");
    poke(base + 2 * ps, 1); /* our handler is installed by now */
    host_page = map_page(PROT_READ);
    install_host(host_after_handler);
    poke(base + 5 * ps, 1);
    poke(base + 6 * ps, 1);
    expect(host_saw_ours == 2, "resolved by ww_handle_fault");
    expect(written_mask(base, 8) == ((1u << 2) | (1u << 5) | (1u << 6)),
           "pages 2, 5, 6 written");
    poke(host_page, 3);
    expect(host_faults == 1, "the host got its own fault");
}

static void case_dlclose_harmless(void)
{
    load();
    char *base = ww.alloc(8 * ps);
    expect(base != NULL, "ww_alloc");
    poke(base + 1 * ps, 1);
    expect(dlclose(ww.handle) == 0, "dlclose");
    poke(base + 3 * ps, 1); /* our handler must still be mapped */
    load();                 /* the same, never-unloaded library */
    expect(written_mask(base, 8) == ((1u << 1) | (1u << 3)),
           "state survived dlclose; pages 1 and 3 written");
}

static void case_crash_readonly(void)
{
    load();
    char *base = ww.alloc(4 * ps);
    poke(base, 1);
    poke(map_page(PROT_READ), 1);
}

/* The NULL load is the point of the case (a genuine crash must still kill
 * by SIGSEGV), so UBSan's null check is turned off for this one function. */
#if defined(__GNUC__)
__attribute__((no_sanitize("null")))
#endif
static void case_crash_null(void)
{
    load();
    char *base = ww.alloc(4 * ps);
    poke(base, 1);
    char *volatile null = NULL;
    printf("%d\n", *null);
}

static void case_crash_host_after(void)
{
    load();
    char *base = ww.alloc(4 * ps);
    poke(base, 1);
    host_page = map_page(PROT_READ);
    install_host(host_after_handler);
    poke(map_page(PROT_READ), 1);
}

static const struct {
    const char *name;
    void (*run)(void);
    int want_signal; /* 0: must exit 0 */
} cases[] = {
    {"host_before", case_host_before, 0},
    {"host_after", case_host_after, 0},
    {"dlclose_harmless", case_dlclose_harmless, 0},
    {"crash_readonly", case_crash_readonly, SIGSEGV},
    {"crash_null", case_crash_null, SIGSEGV},
    {"crash_host_after", case_crash_host_after, SIGSEGV},
};

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    ps = (size_t)sysconf(_SC_PAGESIZE);
    const char *b = getenv("WW_BACKEND");
    if (b != NULL && *b != '\0' && strcmp(b, "mprotect") != 0) {
        printf("SKIP " TEST_NAME ": tests the mprotect backend only "
               "(WW_BACKEND=%s)\n", b);
        return EXIT_SKIP;
    }
    unsigned n = 0, failed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            cases[i].run();
            fflush(stdout);
            _exit(0);
        }
        int status;
        if (waitpid(pid, &status, 0) != pid)
            die("waitpid");
        if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_SKIP) {
            printf("SKIP " TEST_NAME ": mprotect backend unavailable\n");
            return EXIT_SKIP;
        }
        int ok = cases[i].want_signal
                     ? WIFSIGNALED(status) && WTERMSIG(status) == cases[i].want_signal
                     : WIFEXITED(status) && WEXITSTATUS(status) == 0;
        n++;
        if (!ok)
            failed++;
        printf("%sok %u - %s", ok ? "" : "not ", n, cases[i].name);
        if (WIFSIGNALED(status))
            printf(" (killed by signal %d)", WTERMSIG(status));
        else
            printf(" (exit %d)", WEXITSTATUS(status));
        printf("\n");
    }
    printf("1..%u\n", n);
    return failed ? 1 : 0;
}
