#!/usr/bin/env bash
# `make test-kernels`: run the test suite for every backend on several real
# kernels (Debian cloud kernels under qemu/TCG) and on the host kernel, and
# print a kernel x backend table.
#
# Steps:
#   1. scripts/ci-deps.sh installs qemu-system-x86, busybox-static, cpio if
#      missing (the only thing this script installs; skipped for host-only
#      runs, WW_KERNELS=none).
#   2. For every series in scripts/kernels.list (or $WW_KERNELS), find the
#      newest linux-image-<series>.*-cloud-amd64-unsigned package apt knows,
#      and `apt-get download` + `dpkg -x` its vmlinuz into .cache/kernels/.
#   3. Build on the host: the Rust test executables (cargo test --no-run),
#      the C tests + libwritewatch.so (make c-tests) and the probe (ww-probe).
#   4. Stage them, with every shared library they need, busybox and bash into
#      one initramfs whose /init is scripts/vm-init.sh.
#   5. Run scripts/run-backends.sh on the host ("host" row), then boot each
#      kernel in turn (qemu TCG; nested KVM is not available) and collect the
#      "WWRESULT <backend> <passed|failed|skipped> <detail>" lines from the
#      serial console.
#   6. Print the table; a backend that is expected on a kernel (kernels.list,
#      $WW_HOST_EXPECT) but skipped counts as failed. The last line is
#      "N passed, M failed" (N, M count table cells); exit 1 if M > 0.
#      A build or setup error exits 2 before any table is printed.
#
# Knobs (environment):
#   WW_KERNELS          kernels to test instead of kernels.list: space-separated
#                       "<series>[:<expected,backends>]", e.g. "6.12" or
#                       "6.1:soft-dirty,mprotect 6.12"; "none" = host only.
#                       Without ":...", the expectation comes from kernels.list.
#   WW_KERNEL_TIMEOUT   seconds per VM (boot + both passes of the suite),
#                       default 1800
#   WW_VM_BENCH         benchmark mode (`make bench-kernels`): instead of the
#                       tests, each VM runs ww-bench with these arguments
#                       (e.g. "--only softdirty --rounds 3"); its Markdown
#                       results are saved as .cache/test-kernels/bench-<series>.md
#                       and printed. No host row, no test table.
#   WW_UNPRIV           0 = skip the VMs' second, unprivileged pass (uid
#                       65534, vm.unprivileged_userfaultfd=0; its results form
#                       a "<series> as nobody" row). Default 1
#   WW_TEST_TIMEOUT     seconds per test executable, default 300 (VM and host;
#                       keep it below WW_KERNEL_TIMEOUT so a hung test is
#                       named in the log instead of the whole VM timing out)
#   WW_FAIL_TAIL        lines of a failing test's output to show, default 80
#   WW_SHOW_OUTPUT      1 = show the output of passing tests too
#   WW_BACKENDS         backends to run, default "written soft-dirty mprotect"
#   WW_EXCLUDE_TESTS    Rust test targets not to run (default: kernels.list's
#                       "exclude-tests" line)
#   WW_HOST             0 = skip the host row (default 1)
#   WW_HOST_EXPECT      backends expected on the host, default written,mprotect
#   WW_QEMU_MEM, WW_QEMU_SMP   VM size, default 3G and 2
#   WW_KERNEL_APPEND    extra kernel command line arguments
#   WW_KERNEL_CACHE     where kernels are cached, default <repo>/.cache/kernels
#   WW_STRIP            0 = keep debug info in the staged binaries (default:
#                       strip it; a smaller initramfs boots faster)
# Using prebuilt binaries instead of building (debugging, stand-ins):
#   WW_USE_RUST_TESTS="exe..."  WW_USE_C_TESTS="exe..."  WW_USE_PROBE=path  WW_USE_LIB=path.so
#   (each one given skips the corresponding build step; an empty WW_USE_C_TESTS
#   means "no C tests")
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPTS=$REPO/scripts
KERNEL_LIST=$SCRIPTS/kernels.list
CACHE=${WW_KERNEL_CACHE:-$REPO/.cache/kernels}
WORK=$REPO/.cache/test-kernels # initramfs, serial logs of the last run

KERNEL_TIMEOUT=${WW_KERNEL_TIMEOUT:-1800}
UNPRIV=${WW_UNPRIV:-1}
VM_BENCH=${WW_VM_BENCH:-}
if [[ -n $VM_BENCH ]]; then
    WW_HOST=0 UNPRIV=0
fi
TEST_TIMEOUT=${WW_TEST_TIMEOUT:-300}
HOST_EXPECT=${WW_HOST_EXPECT:-written,mprotect}
QEMU_MEM=${WW_QEMU_MEM:-3G}
QEMU_SMP=${WW_QEMU_SMP:-2}
read -r -a BACKENDS <<<"${WW_BACKENDS:-written soft-dirty mprotect}"

# WW_USE_* paths are relative to where we were started; we cd to $REPO later.
abs_paths() {
    local p out=()
    for p in $1; do out+=("$(realpath -m -- "$p")"); done
    echo "${out[*]}"
}
for v in WW_USE_RUST_TESTS WW_USE_C_TESTS WW_USE_PROBE WW_USE_LIB; do
    [[ -n ${!v:-} ]] && printf -v "$v" '%s' "$(abs_paths "${!v}")"
done

T0=$SECONDS
log() { printf '\n### [%4ss] %s\n' "$((SECONDS - T0))" "$*"; }
warn() { printf '### WARNING: %s\n' "$*" >&2; }
die() {
    printf '### ERROR: %s\n' "$*" >&2
    exit 2
}

# ---------------------------------------------------------------------------
# 1-2. Kernels: which series, expectations; host dependencies; download
# ---------------------------------------------------------------------------
# SERIES[i] / EXPECT[i]: kernel series and its comma-separated expected backends.
SERIES=() EXPECT=()

# Expected backends for a series according to kernels.list ("" if unlisted).
listed_expect() {
    awk -v s="$1" '!/^[[:space:]]*(#|$)/ && $1 == s {print $2; exit}' "$KERNEL_LIST"
}

# Rust test targets not to run here (kernels.list "exclude-tests" lines, or
# $WW_EXCLUDE_TESTS): they check the build, not the kernel.
if [[ -n ${WW_EXCLUDE_TESTS+set} ]]; then
    EXCLUDE_TESTS=" ${WW_EXCLUDE_TESTS//,/ } "
else
    EXCLUDE_TESTS=" $(awk '$1 == "exclude-tests" {$1 = ""; print}' "$KERNEL_LIST" | tr ',\n' '  ') "
fi

if [[ -n ${WW_KERNELS+set} ]]; then
    if [[ $WW_KERNELS != none ]]; then
        for entry in $WW_KERNELS; do
            s=${entry%%:*}
            if [[ $entry == *:* ]]; then e=${entry#*:}; else e=$(listed_expect "$s"); fi
            SERIES+=("$s") EXPECT+=("$e")
        done
    fi
else
    while read -r s e _; do
        [[ -z $s || $s == \#* || $s == exclude-tests ]] && continue
        SERIES+=("$s") EXPECT+=("${e:-}")
    done <"$KERNEL_LIST"
fi

# Regex (ERE) matching the cloud kernel image packages of one series. The dot
# after the series is literal, so "6.1" does not also match 6.12. Debian names
# them e.g. linux-image-6.1.0-56-cloud-amd64-unsigned and
# linux-image-6.12.117+deb12-cloud-amd64-unsigned.
series_regex() {
    printf '^linux-image-%s\\.[0-9]+[-+][^ ]*-cloud-amd64-unsigned$' "${1//./\\.}"
}

# Newest package of a series known to apt (empty if none).
newest_package() {
    local re
    re=$(series_regex "$1")
    apt-cache search --names-only "$re" | awk '{print $1}' | { grep -E "$re" || true; } | sort -V | tail -n 1
}

apt_updated=0
# Make sure vmlinuz of package $1 (of series $2) is in $CACHE/$1/. It runs as
# an `if` condition, where `set -e` does not apply: errors are checked by hand.
fetch_kernel() {
    local pkg=$1 dir=$CACHE/$1 tmp
    if [[ -s $dir/vmlinuz ]]; then
        echo "kernel cache: reusing $dir"
        return 0
    fi
    tmp=$(mktemp -d "$CACHE/.fetch.XXXXXX")
    # apt-get download drops privileges to _apt when it can; a world-writable
    # directory avoids its "unsandboxed" warning.
    chmod 0777 "$tmp"
    if ! (cd "$tmp" && apt-get -q download "$pkg" >&2); then
        # The lists can name a version the mirror no longer has: refresh once.
        if [[ $apt_updated -eq 0 ]]; then
            apt_updated=1
            bash "$SCRIPTS/ci-deps.sh" --update
        fi
        (cd "$tmp" && apt-get -q download "$pkg" >&2) || {
            rm -rf "$tmp"
            return 1
        }
    fi
    rm -rf "$dir.new"
    if ! { dpkg -x "$tmp"/*.deb "$tmp/x" && mkdir -p "$dir.new" &&
        cp "$tmp"/x/boot/vmlinuz-* "$dir.new/vmlinuz"; }; then
        echo "could not unpack vmlinuz from $pkg" >&2
        rm -rf "$tmp" "$dir.new"
        return 1
    fi
    cp "$tmp"/x/boot/config-* "$dir.new/config" 2>/dev/null || true
    rm -rf "$tmp" "$dir"
    mv "$dir.new" "$dir" # complete entries only: a cache hit is always whole
    # Drop older kernels of the same series, so the cache does not grow with
    # every Debian point release.
    local re old
    re=$(series_regex "$2")
    for old in "$CACHE"/linux-image-*; do
        if [[ $old != "$dir" ]] && basename "$old" | grep -qE "$re"; then
            echo "kernel cache: removing older $(basename "$old")"
            rm -rf "$old"
        fi
    done
    echo "kernel cache: fetched $dir"
}

mkdir -p "$CACHE" "$WORK"
# Host-only runs (WW_KERNELS=none, e.g. `make test`) need no qemu/busybox/cpio.
if [[ ${#SERIES[@]} -gt 0 ]]; then
    log "host dependencies (scripts/ci-deps.sh)"
    bash "$SCRIPTS/ci-deps.sh"
fi

# KPKG[i] / KDIR[i]: resolved package and its cache directory ("" = failed,
# with the reason in KERR[i]).
KPKG=() KDIR=() KERR=()
for i in "${!SERIES[@]}"; do
    s=${SERIES[i]}
    log "kernel $s: resolving"
    pkg=$(newest_package "$s")
    if [[ -z $pkg && $apt_updated -eq 0 ]]; then
        apt_updated=1
        bash "$SCRIPTS/ci-deps.sh" --update
        pkg=$(newest_package "$s")
    fi
    KPKG[i]=$pkg KDIR[i]="" KERR[i]=""
    if [[ -z $pkg ]]; then
        KERR[i]="no package matches $(series_regex "$s")"
        warn "kernel $s: ${KERR[i]}"
        continue
    fi
    if fetch_kernel "$pkg" "$s"; then
        dir=$CACHE/$pkg
        KDIR[i]=$dir
        echo "kernel $s: $pkg"
        # Show the kernel features the backends depend on.
        if [[ -r $dir/config ]]; then
            grep -E '^(# )?CONFIG_(MEM_SOFT_DIRTY|USERFAULTFD|HAVE_ARCH_USERFAULTFD_WP|PTE_MARKER_UFFD_WP|TRANSPARENT_HUGEPAGE_(ALWAYS|MADVISE))[ =]' "$dir/config" | sed 's/^/  /' || true
        fi
    else
        KERR[i]="could not download $pkg"
        warn "kernel $s: ${KERR[i]}"
    fi
done

# ---------------------------------------------------------------------------
# 3. Build the test executables, the library and the probe (on the host)
# ---------------------------------------------------------------------------
cd "$REPO"
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
C_NOTE="" # set when the C tests could not be built

# Executables of all artifacts in cargo's JSON messages (stdin) that are
# tests (profile.test; printed as "<target name> <executable>") or, with
# argument "bin NAME", the named binary.
cargo_executables() {
    python3 -c '
import json, sys
want = sys.argv[1:]
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if want[:1] == ["bin"]:
        ok = m["target"]["name"] == want[1] and "bin" in m["target"]["kind"]
    else:
        ok = m["profile"]["test"]
    if ok and want:
        print(m["executable"])
    elif ok:
        print(m["target"]["name"], m["executable"])
' "$@"
}

if [[ -n ${WW_USE_RUST_TESTS+set} ]]; then
    read -r -a RUST_TESTS <<<"$WW_USE_RUST_TESTS"
    log "Rust tests: using WW_USE_RUST_TESTS (${#RUST_TESTS[@]} executables)"
else
    log "building Rust tests: cargo test --release --no-run"
    json=$(cargo test --release --no-run --message-format=json) || die "cargo test --no-run failed"
    RUST_TESTS=()
    while read -r name exe; do
        if [[ $EXCLUDE_TESTS == *" $name "* ]]; then
            echo "  excluded (exclude-tests): $name"
        else
            RUST_TESTS+=("$exe")
        fi
    done < <(cargo_executables <<<"$json" | sort -u)
    [[ ${#RUST_TESTS[@]} -gt 0 ]] || die "cargo test --no-run produced no test executable"
fi
for t in "${RUST_TESTS[@]}"; do echo "  $t"; done

if [[ -n ${WW_USE_PROBE+set} ]]; then
    PROBE=$WW_USE_PROBE
    log "probe: using WW_USE_PROBE=$PROBE"
else
    log "building the probe: cargo build --release --bin ww-probe"
    if ! cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; sys.exit(not any(t["name"]=="ww-probe" and "bin" in t["kind"] for p in json.load(sys.stdin)["packages"] for t in p["targets"]))'; then
        die "the crate has no binary target 'ww-probe' yet: cannot tell which backends each kernel supports. (Set WW_USE_PROBE=/path/to/probe to use another one.)"
    fi
    json=$(cargo build --release --bin ww-probe --message-format=json) || die "cargo build --bin ww-probe failed"
    PROBE=$(cargo_executables bin ww-probe <<<"$json" | tail -n 1)
fi
[[ -x $PROBE ]] || die "probe $PROBE is not an executable"

BENCH_BIN=""
if [[ -n $VM_BENCH ]]; then
    log "building the benchmark: cargo build --release --bin ww-bench"
    json=$(cargo build --release --bin ww-bench --message-format=json) || die "cargo build --bin ww-bench failed"
    BENCH_BIN=$(cargo_executables bin ww-bench <<<"$json" | tail -n 1)
    [[ -x $BENCH_BIN ]] || die "no ww-bench executable"
fi

# Whether the top Makefile defines target $1. Reads make's database for a
# goal that does not exist, so that nothing gets built or run (unlike
# `make -n`, which still runs recursive $(MAKE) lines).
has_make_target() {
    local db
    [[ -f $REPO/Makefile ]] || return 1
    db=$(make -C "$REPO" -pq __ww_no_such_target__ 2>/dev/null || true)
    grep -q "^$1:" <<<"$db"
}

if [[ -n ${WW_USE_C_TESTS+set} ]]; then
    read -r -a C_TESTS <<<"$WW_USE_C_TESTS"
    log "C tests: using WW_USE_C_TESTS (${#C_TESTS[@]} executables)"
    LIB=${WW_USE_LIB:-}
elif has_make_target c-tests; then
    log "building C tests: make c-tests"
    make c-tests || die "make c-tests failed"
    mapfile -t C_TESTS < <(find "$REPO/target/ffi" -maxdepth 1 -type f -name 'test_*' -perm -u+x 2>/dev/null | sort)
    LIB=${WW_USE_LIB:-$TARGET_DIR/release/libwritewatch.so}
    [[ ${#C_TESTS[@]} -gt 0 ]] || warn "make c-tests produced no target/ffi/test_* executable"
    [[ -f $LIB ]] || die "make c-tests did not produce $LIB"
else
    C_TESTS=()
    LIB=${WW_USE_LIB:-}
    C_NOTE="C tests NOT RUN: no Makefile with a 'c-tests' target"
    warn "$C_NOTE"
fi
for t in "${C_TESTS[@]}" ${LIB:+"lib: $LIB"}; do echo "  $t"; done

# ---------------------------------------------------------------------------
# 4. Stage the binaries and build the initramfs
# ---------------------------------------------------------------------------
# Layout (also used directly by the host run):
#   /init                      scripts/vm-init.sh
#   /ww/scripts/run-backends.sh, /ww/env (forwarded knobs)
#   /ww/bin/ww-probe, /ww/rust/*, /ww/c/*, /ww/lib/libwritewatch.so
#   /bin/busybox + applet links, /bin/bash, shared libraries at their host paths
log "staging the binaries (and building the initramfs if there are kernels)"
ROOT=$WORK/root
rm -rf "$ROOT"
mkdir -p "$ROOT"/{ww/bin,ww/rust,ww/c,ww/lib,ww/scripts,bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc}
install -m 0755 "$SCRIPTS/vm-init.sh" "$ROOT/init"
install -m 0755 "$SCRIPTS/run-backends.sh" "$ROOT/ww/scripts/run-backends.sh"
cp "$PROBE" "$ROOT/ww/bin/ww-probe"
[[ -n $BENCH_BIN ]] && cp "$BENCH_BIN" "$ROOT/ww/bin/ww-bench"
# Integration tests may run the probe via env!("CARGO_BIN_EXE_ww-probe"), an
# absolute host path baked in at build time: make it resolve in the VM too.
mkdir -p "$ROOT$(dirname "$PROBE")"
ln -sf /ww/bin/ww-probe "$ROOT$PROBE"
for t in "${RUST_TESTS[@]}"; do cp "$t" "$ROOT/ww/rust/"; done
for t in "${C_TESTS[@]}"; do cp "$t" "$ROOT/ww/c/"; done
if [[ -n $LIB ]]; then
    cp "$LIB" "$ROOT/ww/lib/"
    # C tests linked with -lwritewatch look for the library's SONAME (e.g.
    # libwritewatch.so.0), which cargo does not create: add it as a link.
    soname=$(readelf -d "$LIB" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
    if [[ -n $soname && $soname != "$(basename "$LIB")" ]]; then
        ln -s "$(basename "$LIB")" "$ROOT/ww/lib/$soname"
    fi
fi
{
    printf 'export WW_TEST_TIMEOUT=%q\n' "$TEST_TIMEOUT"
    [[ -n ${WW_BACKENDS:-} ]] && printf 'export WW_BACKENDS=%q\n' "$WW_BACKENDS"
    [[ -n ${WW_FAIL_TAIL:-} ]] && printf 'export WW_FAIL_TAIL=%q\n' "$WW_FAIL_TAIL"
    [[ -n ${WW_SHOW_OUTPUT:-} ]] && printf 'export WW_SHOW_OUTPUT=%q\n' "$WW_SHOW_OUTPUT"
    printf 'export WW_UNPRIV=%q\n' "$UNPRIV"
    printf 'export WW_VM_BENCH=%q\n' "$VM_BENCH"
    true
} >"$ROOT/ww/env"

# The rest of the initramfs: only needed when there are VMs to boot.
build_initramfs() {
    local busybox applet f lib
    # Userland: busybox-static with a link per applet, and bash for the
    # scripts.
    busybox=$(command -v busybox) || die "busybox not found"
    cp "$busybox" "$ROOT/bin/busybox"
    # util-linux's setpriv for the VM's unprivileged pass (busybox's cannot
    # change uid); its libraries are collected below.
    cp "$(command -v setpriv)" "$ROOT/usr/bin/setpriv" || die "setpriv (util-linux) not found"
    while read -r applet; do
        [[ -e $ROOT/$applet || -L $ROOT/$applet ]] || ln -s /bin/busybox "$ROOT/$applet"
    done < <("$busybox" --list-full)
    cp "$(command -v bash)" "$ROOT/bin/bash"

    # Shared libraries (and the dynamic loader) of every ELF file we ship,
    # copied to the same path in the initramfs. libwritewatch.so is resolved
    # from /ww/lib, where it already is.
    local elves=()
    mapfile -t elves < <(find "$ROOT/bin/bash" "$ROOT/usr/bin/setpriv" "$ROOT/ww" -type f \
        -exec sh -c 'head -c 4 "$1" | grep -q ELF' _ {} \; -print)
    for f in "${elves[@]}"; do
        LD_LIBRARY_PATH=$ROOT/ww/lib ldd "$f" 2>/dev/null || true
    done | awk '
        $2 == "=>" && $3 ~ /^\// { print $3 }
        $1 ~ /^\// { print $1 }
        $2 == "=>" && $3 == "not" { print "### WARNING: shared library not found: " $1 > "/dev/stderr" }
    ' | sort -u | while read -r lib; do
        [[ $lib == "$ROOT"/* ]] && continue
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -L "$lib" "$ROOT$lib"
    done

    # Drop debug info from the staged copies (target/ is untouched): it is
    # most of their size, and every MiB of initramfs costs boot time under
    # TCG. Symbols stay, so backtraces still name functions, and panic
    # messages keep their file:line.
    if [[ ${WW_STRIP:-1} == 1 ]] && command -v strip >/dev/null; then
        for f in "${elves[@]}"; do
            if [[ $f == "$ROOT"/ww/* ]]; then strip --strip-debug "$f"; fi
        done
    fi

    (cd "$ROOT" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 >"$INITRD"
    echo "initramfs: $INITRD ($(du -h "$INITRD" | cut -f1), $(du -sh "$ROOT" | cut -f1) unpacked)"
}

INITRD=$WORK/initrd.gz
if [[ ${#SERIES[@]} -gt 0 ]]; then
    build_initramfs
fi

# ---------------------------------------------------------------------------
# 5. Run: host, then each kernel in a VM (one after another)
# ---------------------------------------------------------------------------
# ROWS: row labels; EXP[row]: expected backends; RESULT/DETAIL[row,backend].
ROWS=() BENCH_DONE=() BENCH_FAILED=()
declare -A EXP=() RESULT=() DETAIL=() LABEL=()

# A run's log as plain lines: no CRs from the serial console, no terminal
# escape sequences (SeaBIOS clears the screen without a newline).
clean_log() {
    tr -d '\r' <"$1" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1b[A-Za-z]//g'
}

# Parse the WWRESULT lines of a run's log into RESULT/DETAIL for row $1.
# $3: whether the run got to its final WWDONE line; $4: why not; $5: the tag
# of the result lines ("WWRESULT" by default; the VM's unprivileged pass
# prints "WWRESULT-NOBODY").
collect() {
    local row=$1 logf=$2 complete=$3 why=$4 tag=${5:-WWRESULT} b st rest
    while read -r _ b st rest; do
        RESULT[$row,$b]=$st DETAIL[$row,$b]=$rest
    done < <(clean_log "$logf" | grep -E "^$tag [a-z-]+ (passed|failed|skipped)( |\$)")
    for b in "${BACKENDS[@]}"; do
        if [[ -z ${RESULT[$row,$b]:-} ]]; then
            RESULT[$row,$b]=failed
            if [[ $complete -eq 1 ]]; then
                DETAIL[$row,$b]="no result reported"
            else
                DETAIL[$row,$b]="no result: $why (see $logf)"
            fi
        fi
    done
}

if [[ ${WW_HOST:-1} != 0 ]]; then
    row=host
    ROWS+=("$row")
    EXP[$row]=$HOST_EXPECT LABEL[$row]="host $(uname -r)"
    log "host ($(uname -r)): running the suite directly"
    hostlog=$WORK/host.log
    rm -rf "$WORK/host-logs"
    WW_ROOT=$ROOT/ww WW_LOG_DIR=$WORK/host-logs WW_TEST_TIMEOUT=$TEST_TIMEOUT \
        bash "$ROOT/ww/scripts/run-backends.sh" 2>&1 | tee "$hostlog" || true
    collect "$row" "$hostlog" "$(clean_log "$hostlog" | grep -c '^WWDONE' || true)" "runner did not finish"
fi

for i in "${!SERIES[@]}"; do
    row=${SERIES[i]}
    ROWS+=("$row")
    EXP[$row]=${EXPECT[i]} LABEL[$row]="${SERIES[i]} ${KPKG[i]:-(no package)}"
    # The unprivileged pass of the same VM (scripts/vm-init.sh) gets a row of
    # its own, with the same expectations.
    urow="${SERIES[i]}~nobody"
    if [[ $UNPRIV != 0 ]]; then
        ROWS+=("$urow")
        EXP[$urow]=${EXPECT[i]} LABEL[$urow]="${SERIES[i]} as nobody"
    fi
    if [[ -z ${KDIR[i]} ]]; then
        for r in "$row" "$urow"; do
            for b in "${BACKENDS[@]}"; do RESULT[$r,$b]=failed DETAIL[$r,$b]=${KERR[i]}; done
        done
        continue
    fi
    vmlog=$WORK/vm-${SERIES[i]}.log
    log "kernel ${SERIES[i]}: booting ${KPKG[i]} (qemu TCG, timeout ${KERNEL_TIMEOUT}s, log $vmlog)"
    start=$SECONDS
    rc=0
    # -no-reboot + panic=-1: a kernel panic (e.g. /init dying) ends qemu too.
    timeout -k 10 "$KERNEL_TIMEOUT" qemu-system-x86_64 \
        -accel tcg -cpu max -m "$QEMU_MEM" -smp "$QEMU_SMP" \
        -kernel "${KDIR[i]}/vmlinuz" -initrd "$INITRD" \
        -append "console=ttyS0 quiet panic=-1 rdinit=/init mitigations=off ${WW_KERNEL_APPEND:-}" \
        -nographic -no-reboot -nic none </dev/null 2>&1 | tee "$vmlog" || rc=$?
    echo "kernel ${SERIES[i]}: VM ran $((SECONDS - start))s"
    why="VM exited before finishing"
    [[ $rc -eq 124 || $rc -eq 137 ]] && why="VM timed out after ${KERNEL_TIMEOUT}s"
    last=$(clean_log "$vmlog" | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-100)
    why+=", last console line: '$last'"
    kver=$(clean_log "$vmlog" | sed -n 's/^WWUNAME //p' | head -n 1)
    [[ -n $kver ]] && LABEL[$row]="${SERIES[i]} $kver"
    if [[ -n $VM_BENCH ]]; then
        out=$WORK/bench-${SERIES[i]}.md
        clean_log "$vmlog" | sed -n 's/^WWBENCH //p' >"$out"
        if clean_log "$vmlog" | grep -q '^WWBENCHDONE 0$'; then
            echo "kernel ${SERIES[i]}: benchmark results in $out"
            BENCH_DONE+=("${SERIES[i]} ${kver:-?}: $out")
        else
            BENCH_FAILED+=("${SERIES[i]}: $why")
        fi
        continue
    fi
    collect "$row" "$vmlog" "$(clean_log "$vmlog" | grep -c '^WWDONE$' || true)" "$why"
    if [[ $UNPRIV != 0 ]]; then
        [[ -n $kver ]] && LABEL[$urow]="${SERIES[i]} $kver as nobody"
        collect "$urow" "$vmlog" "$(clean_log "$vmlog" | grep -c '^WWDONE-NOBODY' || true)" "$why" WWRESULT-NOBODY
    fi
done

# ---------------------------------------------------------------------------
# 6. Table
# ---------------------------------------------------------------------------
if [[ -n $VM_BENCH ]]; then
    log "benchmark results (total $((SECONDS - T0))s)"
    for f in "${BENCH_DONE[@]}"; do
        echo
        echo "## ${f%%:*}"
        cat "${f#*: }"
    done
    for f in "${BENCH_FAILED[@]}"; do echo "### benchmark FAILED on $f"; done
    echo
    echo "${#BENCH_DONE[@]} benchmarked, ${#BENCH_FAILED[@]} failed"
    [[ ${#BENCH_FAILED[@]} -eq 0 ]]
    exit
fi
# Final verdict of one cell: passed / failed / skipped (an expected backend
# that was skipped is a failure).
npass=0 nfail=0
declare -A CELL=()
for row in "${ROWS[@]}"; do
    for b in "${BACKENDS[@]}"; do
        st=${RESULT[$row,$b]} d=${DETAIL[$row,$b]}
        if [[ $st == skipped && ,${EXP[$row]}, == *,$b,* ]]; then
            st=failed d="expected, but skipped: $d"
        fi
        case $st in
        passed) CELL[$row,$b]="passed"; npass=$((npass + 1)) ;;
        failed) CELL[$row,$b]="FAILED"; nfail=$((nfail + 1)) ;;
        skipped) CELL[$row,$b]="skipped: $d" ;;
        esac
        RESULT[$row,$b]=$st DETAIL[$row,$b]=$d
    done
done

# Column widths; skip reasons are cut to 40 characters in the table (they are
# printed in full below it).
cut40() { local s=$1; ((${#s} > 40)) && s="${s:0:37}..."; printf '%s' "$s"; }
w0=6
for row in "${ROWS[@]}"; do ((${#LABEL[$row]} > w0)) && w0=${#LABEL[$row]}; done
declare -A W=()
for b in "${BACKENDS[@]}"; do
    W[$b]=${#b}
    for row in "${ROWS[@]}"; do
        c=$(cut40 "${CELL[$row,$b]}")
        ((${#c} > W[$b])) && W[$b]=${#c}
    done
done

log "results (total $((SECONDS - T0))s)"
echo
printf '%-*s' "$w0" kernel
for b in "${BACKENDS[@]}"; do printf ' | %-*s' "${W[$b]}" "$b"; done
echo
printf '%s' "$(printf '%*s' "$w0" '' | tr ' ' -)"
for b in "${BACKENDS[@]}"; do printf -- '-+-%s' "$(printf '%*s' "${W[$b]}" '' | tr ' ' -)"; done
echo
for row in "${ROWS[@]}"; do
    printf '%-*s' "$w0" "${LABEL[$row]}"
    for b in "${BACKENDS[@]}"; do printf ' | %-*s' "${W[$b]}" "$(cut40 "${CELL[$row,$b]}")"; done
    echo
done
echo
echo "details (expected backends in brackets):"
for row in "${ROWS[@]}"; do
    echo "  ${LABEL[$row]} [${EXP[$row]:-none}]"
    for b in "${BACKENDS[@]}"; do
        printf '    %-10s %-7s %s\n' "$b" "${RESULT[$row,$b]}" "${DETAIL[$row,$b]}"
    done
done
[[ -n $C_NOTE ]] && echo "note: $C_NOTE"
echo "logs: $WORK"
echo
echo "$npass passed, $nfail failed"
[[ $nfail -eq 0 ]]
