#!/bin/sh
# Run the C tests once per backend.  Called by `make test-c` (mk/c.mk).
#
#   ffi/run_tests.sh LIBDIR LOGDIR TEST...
#
# Each TEST runs with WW_BACKEND=<backend> and LD_LIBRARY_PATH=LIBDIR, for
# every backend in $WW_BACKENDS (default: written soft-dirty mprotect).
# Exit status of a test: 0 pass, 77 skip (its last output line says why),
# anything else fail (its output is shown).  Full logs: LOGDIR/<test>.<backend>.log
# Knobs: WW_BACKENDS, WW_TEST_TIMEOUT (seconds per test, default 300).
set -u

libdir=$1 logdir=$2
shift 2
backends=${WW_BACKENDS:-written soft-dirty mprotect}
timeout_s=${WW_TEST_TIMEOUT:-300}
mkdir -p "$logdir"

# `timeout` is coreutils; without it, run the test as is.
if command -v timeout >/dev/null 2>&1; then
    limit="timeout -s KILL $timeout_s"
else
    limit=""
fi

pass=0 skip=0 fail=0 failed=""
for backend in $backends; do
    for exe in "$@"; do
        name=$(basename "$exe")
        log=$logdir/$name.$backend.log
        WW_BACKEND=$backend LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
            $limit "$exe" >"$log" 2>&1 </dev/null
        rc=$?
        case $rc in
        0)
            pass=$((pass + 1))
            echo "PASS $name [$backend]"
            ;;
        77)
            skip=$((skip + 1))
            # The test's last line is "SKIP <test>: <reason>".
            echo "SKIP $name [$backend]: $(tail -n 1 "$log" | sed 's/^SKIP [^:]*: //')"
            ;;
        *)
            fail=$((fail + 1))
            failed="$failed $name[$backend]"
            [ $rc -eq 137 ] && why="killed (timeout ${timeout_s}s?)" || why="exit status $rc"
            echo "FAIL $name [$backend]: $why"
            # The failing checks first, then the end of the log for context.
            grep -E '^(not ok|Bail out)' "$log" | sed 's/^/    /'
            echo "    ---- last 30 lines of $log ----"
            tail -n 30 "$log" | sed 's/^/    | /'
            ;;
        esac
    done
done

echo "C tests: $pass passed, $skip skipped, $fail failed"
[ $fail -eq 0 ] || { echo "failing:$failed"; exit 1; }
# Every test skipped everywhere means nothing was checked (mprotect works on
# any kernel, so this is a broken build or library, not a kernel limit).
[ $pass -gt 0 ] || { echo "no C test passed on any backend"; exit 1; }
