/*
 * writewatch: which pages of this process's memory were written since the
 * last time you asked.  Win32 GetWriteWatch/ResetWriteWatch for Linux.
 *
 * Conventions (see README.md, "API conventions"):
 *  - Every int-returning function returns 0 on success or a positive errno
 *    value (EINVAL, EFAULT, EBUSY, ENOTSUP, ENOMEM, ...).  A failed call
 *    writes none of its outputs and changes no watch state.
 *  - Every function is thread-safe.  Only ww_handle_fault() is
 *    async-signal-safe.
 *  - No function panics or unwinds into C; an internal bug is reported
 *    as EIO.
 *  - Nothing runs at load time.  The library is linked -z nodelete, so
 *    dlclose() never unmaps it while a fault handler may be installed.
 */
#ifndef WRITEWATCH_H
#define WRITEWATCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ww_get_write_watch / ww_get_written_ranges: also reset what is returned. */
#define WW_FLAG_RESET 1u

/* The kernel mechanism used to find written pages. */
typedef enum ww_backend {
    WW_BACKEND_AUTO = 0,       /* best available (only as ww_init argument) */
    WW_BACKEND_WRITTEN = 1,    /* userfaultfd WP_ASYNC + PAGEMAP_SCAN (6.7+) */
    WW_BACKEND_SOFT_DIRTY = 2, /* PTE soft-dirty bit + clear_refs */
    WW_BACKEND_MPROTECT = 3    /* mprotect + SIGSEGV handler */
} ww_backend;

/* A run of written pages: [start, start + size). */
typedef struct ww_range {
    void *start;
    size_t size;
} ww_range;

/* Counters since the library was loaded. */
typedef struct ww_stats {
    uint64_t regions;        /* regions currently watched */
    uint64_t watched_bytes;  /* bytes currently watched (guard pages excluded) */
    uint64_t scans;          /* successful get calls (both forms) */
    uint64_t resets;         /* gets with WW_FLAG_RESET + ww_reset_write_watch */
    uint64_t pages_reported; /* pages reported by all gets */
    uint64_t faults_handled; /* write faults resolved (mprotect backend) */
} ww_stats;

/* Choose the backend.  Any number of times before the first
 * ww_alloc/ww_watch; afterwards 0 for the active backend, EBUSY for another.
 * ENOTSUP if the backend is unavailable on this kernel.  Without a call,
 * the first use picks $WW_BACKEND (auto|written|soft-dirty|mprotect) or AUTO. */
int ww_init(ww_backend backend);
/* The backend in use; before the first ww_alloc/ww_watch, the one that
 * would be used (what ww_init or $WW_BACKEND asked for, else the best
 * available).  Never WW_BACKEND_AUTO. */
ww_backend ww_active_backend(void);
/* "auto", "written", "soft-dirty", "mprotect"; NULL for other values. */
const char *ww_backend_name(ww_backend backend);
/* Bit (1u << b) set for each backend b that works here (probed once). */
uint32_t ww_available_backends(void);

/* Zeroed read-write memory, watched from birth with no page written,
 * between two PROT_NONE guard pages.  NULL with errno set on failure. */
void *ww_alloc(size_t size);
/* Free a ww_alloc region (base exactly as returned). */
int ww_free(void *base);

/* Watch the caller's page-aligned private or shared anonymous memory.
 * Contents are kept; earlier writes are not reported. */
int ww_watch(void *base, size_t size);
/* Stop watching (base exactly as passed to ww_watch); memory stays RW. */
int ww_unwatch(void *base);

/* GetWriteWatch: up to *count written page addresses in
 * [base, base + size) rounded out to pages, ascending.  *count receives how
 * many, *granularity the page size.  With WW_FLAG_RESET exactly the
 * returned pages are reset, atomically per page. */
int ww_get_write_watch(uint32_t flags, void *base, size_t size,
                       void **addresses, uintptr_t *count,
                       uint32_t *granularity);
/* ResetWriteWatch: mark every page of the range unwritten. */
int ww_reset_write_watch(void *base, size_t size);
/* Like ww_get_write_watch, but maximal runs of written pages, clipped to
 * the rounded range.  With WW_FLAG_RESET the returned runs are reset. */
int ww_get_written_ranges(uint32_t flags, void *base, size_t size,
                          ww_range *ranges, size_t *count);

/* VirtualProtect for watched memory: PROT_NONE, PROT_READ,
 * PROT_READ|PROT_WRITE, optionally |PROT_EXEC.  Written state is kept. */
int ww_protect(void *base, size_t size, int prot);

/* For hosts that own SIGSEGV: call first from your handler with si_addr.
 * Returns 1 if the fault was a write-watch fault and is resolved (return
 * from your handler), 0 if it is not ours.  Async-signal-safe.  Only the
 * address is known here, so any fault on a watched page that the caller's
 * protection lets be written counts as a write; faults on pages made
 * read-only or inaccessible with ww_protect() are never ours. */
int ww_handle_fault(void *fault_addr);
/* Before a syscall writes into watched memory (read(2), recv(2), ...):
 * marks every watched page of the range as written so the kernel's write
 * cannot fail with EFAULT.  Returns 0 (mprotect backend: ENOMEM if even the
 * whole region could not be made writable, at vm.max_map_count).
 * On backends that write-protect pages (mprotect; soft-dirty while another
 * thread resets), a get-with-reset or reset of the same pages on another
 * thread between this call and the syscall re-protects them: the syscall
 * then fails with EFAULT having written nothing; call this again and retry
 * it.  The written backend never needs the retry. */
int ww_prepare_kernel_write(void *addr, size_t len);

/* Copy the counters; EFAULT for NULL. */
int ww_get_stats(ww_stats *out);
/* "MAJOR.MINOR.PATCH" */
const char *ww_version(void);

#ifdef __cplusplus
}
#endif

#endif /* WRITEWATCH_H */
