#!/usr/bin/env bash
# Run the whole test suite once per writewatch backend, on the running kernel.
#
# Used in two places with the same staged binaries:
#   * inside each test VM (started by the VM's /init, scripts/vm-init.sh), and
#   * directly on the host, for the "host" row of `make test-kernels`.
#
# Input: a staging directory ($WW_ROOT, default: the directory above this
# script) laid out by scripts/test-kernels.sh:
#
#   $WW_ROOT/bin/ww-probe         prints "<backend>\t<yes|no>\t<reason>" lines
#                                 for --porcelain
#   $WW_ROOT/rust/*               Rust test executables (libtest harness)
#   $WW_ROOT/c/*                  C test executables: exit 0 pass, 77 skip,
#                                 anything else fail
#   $WW_ROOT/lib/libwritewatch.so the C ABI library the C tests link to
#
# For each backend B in "written soft-dirty mprotect":
#   * the probe says B is unavailable -> "skipped: <probe's reason>"
#   * else every Rust test runs with WW_BACKEND=B WW_REQUIRE_BACKENDS=B and
#     `--test-threads=2`, and every C test with WW_BACKEND=B and
#     LD_LIBRARY_PATH=$WW_ROOT/lib; any failure -> "failed", else "passed".
#
# Output (stdout): human-readable progress, the tail of every failing test's
# output, and one machine-readable line per backend that test-kernels.sh
# parses (also from the VM's serial console):
#
#   WWRESULT <backend> <passed|failed|skipped> <free-text detail>
#
# followed by a final "WWDONE" line. Exit status: 0 if nothing failed.
#
# Knobs: WW_BACKENDS (default "written soft-dirty mprotect"),
#        WW_TEST_TIMEOUT (seconds per test executable, default 300),
#        WW_FAIL_TAIL (lines of a failing test's output to show, default 80),
#        WW_SHOW_OUTPUT (1: also show the output of passing tests),
#        WW_LOG_DIR (where full test logs go, default a new temp dir).
set -euo pipefail

WW_ROOT=${WW_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
BACKENDS=${WW_BACKENDS:-written soft-dirty mprotect}
TEST_TIMEOUT=${WW_TEST_TIMEOUT:-300}
FAIL_TAIL=${WW_FAIL_TAIL:-80}
LOG_DIR=${WW_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ww-run.XXXXXX")}
mkdir -p "$LOG_DIR"

PROBE=$WW_ROOT/bin/ww-probe
LIB_DIR=$WW_ROOT/lib

# Collect the test executables (sorted; a missing directory means "none").
shopt -s nullglob
RUST_TESTS=("$WW_ROOT"/rust/*)
C_TESTS=("$WW_ROOT"/c/*)
shopt -u nullglob

# Strip cargo's "-<16 hex digit hash>" suffix for display.
short_name() {
    local b
    b=$(basename "$1")
    printf '%s\n' "${b%-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]}"
}

# Print the last lines of a failed test's stdout and stderr (kept apart: a C
# program's stdout is block-buffered into a file, so interleaving them would
# not show the real order anyway), indented, so that a failure is diagnosable
# from the console/serial log alone.
show_tail() {
    local log=$1 stream
    for stream in out err; do
        [[ -s $log.$stream ]] || continue
        echo "    ---- std$stream, last $FAIL_TAIL lines ($log.$stream) ----"
        tail -n "$FAIL_TAIL" "$log.$stream" | sed 's/^/    | /'
    done
    echo "    ---- end of output ----"
}

# With WW_SHOW_OUTPUT=1, the whole output of passing tests too.
show_output() {
    if [[ ${WW_SHOW_OUTPUT:-0} == 1 ]]; then
        cat "$1.out" "$1.err" | sed 's/^/    | /'
    fi
}

# One-time environment report: which kernel, and the knobs the backends care
# about. Purely informational.
report_env() {
    local thp=/sys/kernel/mm/transparent_hugepage/enabled
    echo "== kernel: $(uname -r) ($(nproc) cpus)"
    [[ -r $thp ]] && echo "== THP enabled: $(cat "$thp")"
    [[ -r /proc/sys/vm/unprivileged_userfaultfd ]] &&
        echo "== vm.unprivileged_userfaultfd: $(cat /proc/sys/vm/unprivileged_userfaultfd)"
    if [[ -e /dev/userfaultfd ]]; then
        echo "== /dev/userfaultfd: present"
    else
        echo "== /dev/userfaultfd: absent"
    fi
    echo "== uid: $(id -u); tests: ${#RUST_TESTS[@]} rust, ${#C_TESTS[@]} C; logs: $LOG_DIR"
}

# Probe results, keyed by backend name.
declare -A PROBE_OK=() PROBE_REASON=()
PROBE_ERROR=""
run_probe() {
    local out rc=0 name ok reason
    if [[ ! -x $PROBE ]]; then
        PROBE_ERROR="probe $PROBE missing"
        return
    fi
    out=$("$PROBE" --porcelain 2>"$LOG_DIR/probe.stderr") || rc=$?
    if [[ $rc -ne 0 ]]; then
        PROBE_ERROR="probe exited with status $rc: $(head -c 300 "$LOG_DIR/probe.stderr" | tr '\n' ' ')"
        return
    fi
    while IFS=$'\t' read -r name ok reason; do
        [[ -z $name ]] && continue
        echo "WWPROBE $name $ok ${reason:-}"
        PROBE_OK[$name]=$ok
        PROBE_REASON[$name]=${reason:-}
    done <<<"$out"
}

# Run one Rust test executable for backend $1; updates the counters below.
# libtest prints "test result: ok. N passed; M failed; K ignored; ..." per run.
run_rust_test() {
    local backend=$1 exe=$2 name log rc=0 start secs counts p f i
    name=$(short_name "$exe")
    log=$LOG_DIR/$backend.rust.$name.log
    echo "  RUN  rust/$name" # so a hang is attributable from the console
    start=$SECONDS
    (
        cd "$WORK_DIR"
        # shellcheck disable=SC2030 # local to this test's subshell on purpose
        export WW_BACKEND=$backend WW_REQUIRE_BACKENDS=$backend RUST_BACKTRACE=1
        exec timeout -s KILL "$TEST_TIMEOUT" "$exe" --test-threads=2
    ) >"$log.out" 2>"$log.err" </dev/null || rc=$?
    secs=$((SECONDS - start))
    # Sum the counters over all "test result:" lines (normally exactly one).
    counts=$(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$log.out" |
        awk '{p+=$1; f+=$2; i+=$3} END {print p+0, f+0, i+0}')
    read -r p f i <<<"$counts"
    rust_passed=$((rust_passed + p))
    rust_failed=$((rust_failed + f))
    rust_ignored=$((rust_ignored + i))
    if [[ $rc -eq 0 ]]; then
        echo "  PASS rust/$name: $p passed, $i ignored [${secs}s]"
        show_output "$log"
    else
        local why="exit status $rc"
        [[ $rc -eq 137 ]] && why="killed (timeout ${TEST_TIMEOUT}s?)"
        echo "  FAIL rust/$name: $why; $p passed, $f failed [${secs}s]"
        # Name the failing tests explicitly (libtest lists them at the end).
        sed -n '/^failures:$/,/^test result/{/^    [^ ]/p}' "$log.out" | sort -u | sed 's/^    /    failed test: /'
        show_tail "$log"
        failed_bins+=("rust/$name")
    fi
}

# Run one C test executable for backend $1 (exit 0 pass, 77 skip, else fail).
run_c_test() {
    local backend=$1 exe=$2 name log rc=0 start secs
    name=$(basename "$exe")
    log=$LOG_DIR/$backend.c.$name.log
    echo "  RUN  c/$name"
    start=$SECONDS
    (
        cd "$WORK_DIR"
        # The library comes from $LIB_DIR via the loader's search path (the
        # tests' dlopen() honours $WW_LIB first: drop any stray host value).
        unset WW_LIB
        # shellcheck disable=SC2031
        export WW_BACKEND=$backend LD_LIBRARY_PATH=$LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        exec timeout -s KILL "$TEST_TIMEOUT" "$exe"
    ) >"$log.out" 2>"$log.err" </dev/null || rc=$?
    secs=$((SECONDS - start))
    case $rc in
    0)
        echo "  PASS c/$name [${secs}s]"
        show_output "$log"
        c_passed=$((c_passed + 1))
        ;;
    77)
        echo "  SKIP c/$name: $(cat "$log.out" "$log.err" | grep . | tail -n 1) [${secs}s]"
        c_skipped=$((c_skipped + 1))
        ;;
    *)
        local why="exit status $rc"
        [[ $rc -eq 137 ]] && why="killed (timeout ${TEST_TIMEOUT}s?)"
        echo "  FAIL c/$name: $why [${secs}s]"
        show_tail "$log"
        c_failed=$((c_failed + 1))
        failed_bins+=("c/$name")
        ;;
    esac
}

# Run the whole suite for one backend and print its WWRESULT line.
run_backend() {
    local backend=$1 exe start
    if [[ -n $PROBE_ERROR ]]; then
        echo "WWRESULT $backend failed $PROBE_ERROR"
        return 1
    fi
    case ${PROBE_OK[$backend]:-} in
    yes) ;;
    no)
        echo "WWRESULT $backend skipped ${PROBE_REASON[$backend]:-unavailable (no reason given)}"
        return 0
        ;;
    *)
        echo "WWRESULT $backend failed probe printed no usable line for $backend"
        return 1
        ;;
    esac

    rust_passed=0 rust_failed=0 rust_ignored=0
    c_passed=0 c_failed=0 c_skipped=0
    failed_bins=()
    start=$SECONDS
    echo "== backend $backend: ${#RUST_TESTS[@]} rust test executables, ${#C_TESTS[@]} C tests"
    for exe in "${RUST_TESTS[@]}"; do run_rust_test "$backend" "$exe"; done
    for exe in "${C_TESTS[@]}"; do run_c_test "$backend" "$exe"; done

    local detail="rust: $rust_passed passed, $rust_failed failed, $rust_ignored ignored;"
    detail+=" c: $c_passed passed, $c_failed failed, $c_skipped skipped; $((SECONDS - start))s"
    if [[ ${#failed_bins[@]} -gt 0 ]]; then
        echo "WWRESULT $backend failed $detail; failing: ${failed_bins[*]}"
        return 1
    fi
    if [[ $((rust_passed + c_passed)) -eq 0 ]]; then
        echo "WWRESULT $backend failed no test ran ($detail)"
        return 1
    fi
    echo "WWRESULT $backend passed $detail"
}

WORK_DIR=$LOG_DIR/cwd # tests run here, so stray files land in scratch space
mkdir -p "$WORK_DIR"

report_env
run_probe
status=0
for b in $BACKENDS; do
    run_backend "$b" || status=1
done
echo "WWDONE"
exit $status
