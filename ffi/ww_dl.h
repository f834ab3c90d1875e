/*
 * ww_dl.h: load libwritewatch at run time with dlopen()/dlsym(), the way a
 * Wine-like runtime that must not hard-link against us would.  Shared by
 * ffi/demo.c and ffi/dlopen_host.c; header-only so each stays one file.
 *
 * Every function of include/writewatch.h has a slot in `ww_api`.  The slot
 * types are checked against the header's prototypes at compile time (see
 * WW_PIN below), so a prototype change that is not mirrored here fails the
 * build instead of calling through a wrong pointer type.
 */
#ifndef WW_DL_H
#define WW_DL_H

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "writewatch.h"

/* One function pointer per exported ww_* function, named like it. */
typedef struct ww_api {
    int (*ww_init)(ww_backend);
    ww_backend (*ww_active_backend)(void);
    const char *(*ww_backend_name)(ww_backend);
    uint32_t (*ww_available_backends)(void);
    void *(*ww_alloc)(size_t);
    int (*ww_free)(void *);
    int (*ww_watch)(void *, size_t);
    int (*ww_unwatch)(void *);
    int (*ww_get_write_watch)(uint32_t, void *, size_t, void **, uintptr_t *,
                              uint32_t *);
    int (*ww_reset_write_watch)(void *, size_t);
    int (*ww_get_written_ranges)(uint32_t, void *, size_t, ww_range *,
                                 size_t *);
    int (*ww_protect)(void *, size_t, int);
    int (*ww_handle_fault)(void *);
    int (*ww_prepare_kernel_write)(void *, size_t);
    int (*ww_get_stats)(ww_stats *);
    const char *(*ww_version)(void);
} ww_api;

/*
 * Compile-time check that slot `name` has exactly the type of the header's
 * function `name`: the assignment sits inside sizeof, so it is type-checked
 * (an incompatible pointer type is an error under -Werror) but never
 * evaluated, and no reference to the symbol reaches the object file -- the
 * programs using this header do not link against libwritewatch.
 */
#define WW_PIN(name)                                                         \
    _Static_assert(sizeof(((ww_api *)0)->name = name) == sizeof(void (*)(void)), \
                   "ww_api slot " #name " does not match writewatch.h")
WW_PIN(ww_init);
WW_PIN(ww_active_backend);
WW_PIN(ww_backend_name);
WW_PIN(ww_available_backends);
WW_PIN(ww_alloc);
WW_PIN(ww_free);
WW_PIN(ww_watch);
WW_PIN(ww_unwatch);
WW_PIN(ww_get_write_watch);
WW_PIN(ww_reset_write_watch);
WW_PIN(ww_get_written_ranges);
WW_PIN(ww_protect);
WW_PIN(ww_handle_fault);
WW_PIN(ww_prepare_kernel_write);
WW_PIN(ww_get_stats);
WW_PIN(ww_version);
#undef WW_PIN

/* dlsym() returns void *; POSIX guarantees function pointers fit in it. */
_Static_assert(sizeof(void *) == sizeof(void (*)(void)),
               "function pointers must be the size of void *");

/*
 * Resolve every ww_* symbol into *api.  Reports each missing one on stderr
 * (a runtime wants to know all of them at once, not one per attempt).
 * Returns the number of missing symbols: 0 means *api is complete.
 */
static inline int ww_api_load(void *handle, ww_api *api)
{
#define WW_SLOT(name) { #name, (void *)&api->name }
    const struct {
        const char *name;
        void *slot; /* address of the function-pointer member */
    } table[] = {
        WW_SLOT(ww_init),           WW_SLOT(ww_active_backend),
        WW_SLOT(ww_backend_name),   WW_SLOT(ww_available_backends),
        WW_SLOT(ww_alloc),          WW_SLOT(ww_free),
        WW_SLOT(ww_watch),          WW_SLOT(ww_unwatch),
        WW_SLOT(ww_get_write_watch), WW_SLOT(ww_reset_write_watch),
        WW_SLOT(ww_get_written_ranges), WW_SLOT(ww_protect),
        WW_SLOT(ww_handle_fault),   WW_SLOT(ww_prepare_kernel_write),
        WW_SLOT(ww_get_stats),      WW_SLOT(ww_version),
    };
#undef WW_SLOT
    _Static_assert(sizeof(table) / sizeof(table[0]) ==
                       sizeof(ww_api) / sizeof(void (*)(void)),
                   "every ww_api slot must be in the dlsym table");
    int missing = 0;

    memset(api, 0, sizeof(*api));
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        dlerror(); /* clear, so the message below is about this symbol */
        void *sym = dlsym(handle, table[i].name);
        if (sym == NULL) {
            const char *err = dlerror();
            fprintf(stderr, "writewatch: missing symbol %s (%s)\n",
                    table[i].name, err ? err : "NULL address");
            missing++;
            continue;
        }
        /* memcpy, not a cast: ISO C has no object->function pointer cast. */
        memcpy(table[i].slot, &sym, sizeof(sym));
    }
    return missing;
}

/*
 * dlopen() the library with RTLD_NOW (every symbol bound up front, so a
 * broken build fails here and not in the middle of a run).  Tries, in order:
 * `explicit_path` if non-NULL, else $WW_LIB if set, else the soname
 * "libwritewatch.so.0" then the development name "libwritewatch.so" through
 * the normal search path (LD_LIBRARY_PATH, ...): cargo itself only produces
 * the latter.  *used receives the name that worked.  NULL if none did, with
 * every attempt's error on stderr (none are printed if one works).
 */
static inline void *ww_dl_open(const char *explicit_path, const char **used)
{
    const char *env = getenv("WW_LIB");
    const char *candidates[2];
    char errors[2][512];
    size_t n = 0;

    if (explicit_path != NULL && *explicit_path != '\0')
        candidates[n++] = explicit_path;
    else if (env != NULL && *env != '\0')
        candidates[n++] = env;
    else {
        candidates[n++] = "libwritewatch.so.0";
        candidates[n++] = "libwritewatch.so";
    }

    for (size_t i = 0; i < n; i++) {
        void *h = dlopen(candidates[i], RTLD_NOW | RTLD_LOCAL);
        if (h != NULL) {
            if (used != NULL)
                *used = candidates[i];
            return h;
        }
        /* dlerror()'s string is only valid until the next dl* call. */
        snprintf(errors[i], sizeof(errors[i]), "%s", dlerror());
    }
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "writewatch: dlopen(\"%s\") failed: %s\n",
                candidates[i], errors[i]);
    fprintf(stderr, "writewatch: library not found; set WW_LIB=/path/to/"
                    "libwritewatch.so or LD_LIBRARY_PATH=target/release\n");
    return NULL;
}

#endif /* WW_DL_H */
