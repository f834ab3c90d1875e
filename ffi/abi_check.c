/*
 * abi_check: compile-only pin of the C ABI in include/writewatch.h.
 *
 * Nothing here runs and nothing is linked: if this file compiles (with
 * -Werror, so an incompatible pointer assignment is an error), the header
 * still declares exactly the ABI the Rust side implements and that binaries
 * built against an earlier header expect.  A change that makes this fail is
 * an ABI break: bump the soname, don't edit the expectation.
 *
 * Built with plain -std=c11 (no _GNU_SOURCE) to also prove the header is
 * self-contained standard C.
 */
#include "writewatch.h"

#include <stddef.h>
#include <stdint.h>

/* ---- prototypes: each function assigned to a pointer of the exact type --- */

/* File-scope objects with static storage: address constants are allowed in
 * their initializers, and no code is generated for a call. */
static int (*const pin_init)(ww_backend) = ww_init;
static ww_backend (*const pin_active_backend)(void) = ww_active_backend;
static const char *(*const pin_backend_name)(ww_backend) = ww_backend_name;
static uint32_t (*const pin_available_backends)(void) = ww_available_backends;
static void *(*const pin_alloc)(size_t) = ww_alloc;
static int (*const pin_free)(void *) = ww_free;
static int (*const pin_watch)(void *, size_t) = ww_watch;
static int (*const pin_unwatch)(void *) = ww_unwatch;
static int (*const pin_get_write_watch)(uint32_t, void *, size_t, void **,
                                        uintptr_t *, uint32_t *) =
    ww_get_write_watch;
static int (*const pin_reset_write_watch)(void *, size_t) =
    ww_reset_write_watch;
static int (*const pin_get_written_ranges)(uint32_t, void *, size_t,
                                           ww_range *, size_t *) =
    ww_get_written_ranges;
static int (*const pin_protect)(void *, size_t, int) = ww_protect;
static int (*const pin_handle_fault)(void *) = ww_handle_fault;
static int (*const pin_prepare_kernel_write)(void *, size_t) =
    ww_prepare_kernel_write;
static int (*const pin_get_stats)(ww_stats *) = ww_get_stats;
static const char *(*const pin_version)(void) = ww_version;

/* Referenced once so -Wunused-variable stays quiet; never called. */
const void *const abi_check_pins[] = {
    &pin_init,           &pin_active_backend,       &pin_backend_name,
    &pin_available_backends, &pin_alloc,            &pin_free,
    &pin_watch,          &pin_unwatch,              &pin_get_write_watch,
    &pin_reset_write_watch, &pin_get_written_ranges, &pin_protect,
    &pin_handle_fault,   &pin_prepare_kernel_write, &pin_get_stats,
    &pin_version,
};

/* ---- flags and enum values ---------------------------------------------- */

_Static_assert(WW_FLAG_RESET == 1u, "WW_FLAG_RESET is 1u");
_Static_assert(sizeof(WW_FLAG_RESET) == sizeof(unsigned),
               "WW_FLAG_RESET is an unsigned int constant");
_Static_assert(WW_BACKEND_AUTO == 0, "WW_BACKEND_AUTO");
_Static_assert(WW_BACKEND_WRITTEN == 1, "WW_BACKEND_WRITTEN");
_Static_assert(WW_BACKEND_SOFT_DIRTY == 2, "WW_BACKEND_SOFT_DIRTY");
_Static_assert(WW_BACKEND_MPROTECT == 3, "WW_BACKEND_MPROTECT");
/* The enum crosses the ABI by value: the Rust side takes a 32-bit integer
 * (and must accept any value, e.g. ww_backend_name(99)). */
_Static_assert(sizeof(ww_backend) == sizeof(uint32_t),
               "ww_backend is passed as a 32-bit integer");

/* ---- ww_range ------------------------------------------------------------ */

_Static_assert(sizeof(ww_range) == 2 * sizeof(void *), "sizeof(ww_range)");
_Static_assert(offsetof(ww_range, start) == 0, "ww_range.start");
_Static_assert(offsetof(ww_range, size) == sizeof(void *), "ww_range.size");
_Static_assert(_Alignof(ww_range) == _Alignof(void *), "alignof(ww_range)");

/* ---- ww_stats: six u64 counters, in this order ---------------------------- */

_Static_assert(sizeof(ww_stats) == 48, "sizeof(ww_stats)");
_Static_assert(offsetof(ww_stats, regions) == 0, "ww_stats.regions");
_Static_assert(offsetof(ww_stats, watched_bytes) == 8,
               "ww_stats.watched_bytes");
_Static_assert(offsetof(ww_stats, scans) == 16, "ww_stats.scans");
_Static_assert(offsetof(ww_stats, resets) == 24, "ww_stats.resets");
_Static_assert(offsetof(ww_stats, pages_reported) == 32,
               "ww_stats.pages_reported");
_Static_assert(offsetof(ww_stats, faults_handled) == 40,
               "ww_stats.faults_handled");

/* ---- types the prototypes rely on ---------------------------------------- */

/* Win32 uses ULONG_PTR for the count and ULONG for the granularity. */
_Static_assert(sizeof(uintptr_t) == sizeof(void *), "count is pointer-sized");
_Static_assert(sizeof(size_t) == sizeof(void *), "size_t is pointer-sized");
