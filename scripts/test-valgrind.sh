#!/usr/bin/env bash
# valgrind memcheck over the C side (`make test-valgrind`, mk/sanitize.mk).
#
#   scripts/test-valgrind.sh LIBDIR OUTDIR FFI_DIR PROBE -- TEST... -- EXAMPLE...
#
# 1. ww-probe (PROBE) runs under memcheck: the library's load, probing of
#    every backend, and teardown, whatever works here.
# 2. Which backends work *under valgrind* is asked of ww-probe run under
#    valgrind: valgrind emulates every syscall and lacks some (3.19 has no
#    userfaultfd(2), so the written backend reads as unavailable inside it).
#    Backends in $WW_BACKENDS that do not work there are SKIPped, with the
#    reason, out loud.
# 3. The C tests and the dlopen host (its dlopen/dlclose cycles included)
#    run under memcheck once per remaining backend, through wrapper scripts
#    so that FFI_DIR/run_tests.sh keeps its per-backend loop and its
#    77-means-skip rule; the examples run once, as a user would (AUTO).
#
# memcheck: --error-exitcode=1 --leak-check=full; definite and possible
# leaks are errors; suppressions only in mk/valgrind.supp, each explained.
set -u
libdir=$1 out=$2 ffi=$3 probe=$4
shift 4
[[ ${1:-} == -- ]] && shift
tests=() examples=()
while [[ $# -gt 0 && $1 != -- ]]; do tests+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
examples=("$@")

: "${VALGRIND:=valgrind}"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vg=("$VALGRIND" --tool=memcheck --error-exitcode=1 --leak-check=full
    --errors-for-leak-kinds=definite,possible --show-leak-kinds=definite,possible
    --track-origins=yes --suppressions="$repo/mk/valgrind.supp" --quiet)
export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p "$out/logs" "$out/run"
fail=0

echo "### $("$VALGRIND" --version) memcheck"
# 1. The probe binary itself.
if "${vg[@]}" --log-file="$out/logs/ww-probe.vg.log" "$probe" >"$out/logs/ww-probe.out" 2>&1; then
    echo "PASS ww-probe [valgrind]"
else
    echo "FAIL ww-probe [valgrind]"; sed 's/^/    | /' "$out/logs/ww-probe.vg.log" "$out/logs/ww-probe.out"
    fail=1
fi

# 2. Backends that work under valgrind.
runnable=()
while IFS=$'\t' read -r name ok why; do
    [[ " ${WW_BACKENDS:-written soft-dirty mprotect} " == *" $name "* ]] || continue
    if [[ $ok == yes ]]; then
        runnable+=("$name")
    else
        echo "SKIP valgrind [$name]: unavailable under $("$VALGRIND" --version): $why"
    fi
done < <("$VALGRIND" -q "$probe" --porcelain 2>/dev/null)

# The mprotect backend needs a faithful SIGSEGV: the faulting address in
# si_addr and SEGV_ACCERR. Ask valgrind with a ten-line program.
if [[ " ${runnable[*]} " == *" mprotect "* ]]; then
    cat >"$out/fault_check.c" <<'C'
/* What the mprotect backend needs from SIGSEGV, twice in a row: the
 * faulting address and SEGV_ACCERR, on an alternate stack, with the
 * handler resolving the fault by mprotect and returning. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
static char *pages;
static int resolved;
static void on_segv(int sig, siginfo_t *si, void *ctx)
{
    (void)sig; (void)ctx;
    char *want = pages + resolved * 4096;
    if (si->si_addr != want || si->si_code != SEGV_ACCERR)
        _Exit(3);
    mprotect(want, 4096, PROT_READ | PROT_WRITE);
    resolved++;
}
int main(void)
{
    static char altstack[1 << 16];
    stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack };
    sigaltstack(&ss, NULL);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigfillset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    /* As ww_alloc does: a PROT_NONE reservation, the middle made RW, then
     * armed read-only. */
    char *map = mmap(NULL, 4 * 4096, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    pages = map + 4096;
    mprotect(pages, 2 * 4096, PROT_READ | PROT_WRITE);
    mprotect(pages, 2 * 4096, PROT_READ);
    pages[0] = 1;
    pages[4096] = 1;
    return resolved == 2 ? 0 : 4;
}
C
    cc -o "$out/fault_check" "$out/fault_check.c"
    if ! "$VALGRIND" -q "$out/fault_check" >/dev/null 2>&1; then
        echo "SKIP valgrind [mprotect]: $("$VALGRIND" --version) does not deliver repeated write faults on read-only pages faithfully (checked by fault_check.c: address and SEGV_ACCERR, on an alternate stack), so SIGSEGV-based tracking cannot be checked under it"
        runnable=("${runnable[@]/mprotect/}")
        mapfile -t runnable < <(printf '%s\n' "${runnable[@]}" | grep .)
    fi
fi

if [[ ${#runnable[@]} -eq 0 ]]; then
    echo "SKIP valgrind C tests: no backend in '${WW_BACKENDS:-written soft-dirty mprotect}' works under valgrind here"
    exit $fail
fi

# 3. The C tests and the dlopen host, per backend.
wrapped=()
for t in "${tests[@]}"; do
    w=$out/run/$(basename "$t")
    printf '#!/bin/sh\nexec %s "%s" "$@"\n' "$(printf '%q ' "${vg[@]}")" "$(cd "$(dirname "$t")" && pwd)/$(basename "$t")" >"$w"
    chmod +x "$w"
    wrapped+=("$w")
done
WW_BACKENDS="${runnable[*]}" "$ffi/run_tests.sh" "$libdir" "$out/logs" "${wrapped[@]}" || fail=1

# The examples, as a user runs them, on a backend that works here.
for e in "${examples[@]}"; do
    log=$out/logs/$(basename "$e").log
    if WW_BACKEND=${runnable[0]} "${vg[@]}" "$e" >"$log" 2>&1; then
        echo "PASS $(basename "$e") [valgrind, ${runnable[0]}]"
    else
        echo "FAIL $(basename "$e") [valgrind, ${runnable[0]}]"; sed 's/^/    | /' "$log"
        fail=1
    fi
done
exit $fail
