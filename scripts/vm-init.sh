#!/bin/bash
# /init of the test VM's initramfs (built by scripts/test-kernels.sh).
#
# Runs as PID 1 on the kernel under test: sets up the minimal mounts the
# tests need, runs scripts/run-backends.sh over the staged binaries in /ww
# (as root, then again as an unprivileged user), and powers the VM off. Everything it prints goes to the serial console
# (ttyS0), which the host records and parses for "WWRESULT ..." lines.
#
# Never exit: PID 1 exiting panics the kernel. Whatever happens, we end with
# `poweroff -f` (and the kernel's panic=-1 + qemu's -no-reboot are the
# backstop if even that fails).
set -euo pipefail

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root TMPDIR=/tmp TERM=dumb

shutdown() {
    echo "WWINIT uptime $(cut -d' ' -f1 /proc/uptime 2>/dev/null || echo '?')s, powering off"
    sync
    poweroff -f
    sleep 10 # poweroff -f does not return; just in case
}
trap shutdown EXIT

# Mounts:
#   /proc   soft-dirty's clear_refs and pagemap, the probe's checks
#   /sys    THP settings (/sys/kernel/mm/transparent_hugepage)
#   /dev    devtmpfs: /dev/null, /dev/userfaultfd (6.1+), ...; devpts
#   /tmp, /dev/shm  tmpfs scratch space (the rootfs is an initramfs anyway)
mkdir -p /proc /sys /dev /tmp /root
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid devtmpfs /dev 2>/dev/null || true # may be automounted
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
mount -t devpts -o nosuid,noexec devpts /dev/pts 2>/dev/null || true
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
ln -sf /proc/self/fd /dev/fd 2>/dev/null || true

# Start on a fresh line: the firmware leaves escape sequences on the console.
echo
echo "WWUNAME $(uname -r)"
echo "WWINIT booted in $(cut -d' ' -f1 /proc/uptime)s"

# Knobs forwarded from the host (WW_TEST_TIMEOUT, WW_BACKENDS, ...).
# shellcheck source=/dev/null
[[ -r /ww/env ]] && source /ww/env

export WW_ROOT=/ww WW_LOG_DIR=/tmp/ww-logs

# Benchmark mode (`make bench-kernels`): ww-bench instead of the tests; its
# Markdown results go to the console as WWBENCH lines.
if [[ -n ${WW_VM_BENCH:-} ]]; then
    rc=0
    # shellcheck disable=SC2086 # the arguments are a word list on purpose
    /ww/bin/ww-bench --out /tmp/bench $WW_VM_BENCH || rc=$?
    [[ -r /tmp/bench/results.md ]] && sed 's/^/WWBENCH /' /tmp/bench/results.md
    echo "WWBENCHDONE $rc"
    exit 0 # the EXIT trap powers off
fi

/ww/scripts/run-backends.sh || echo "WWINIT run-backends.sh exited with status $?"

# The same suite again as an unprivileged user (uid/gid 65534, "nobody"; the
# initramfs has no passwd file, numeric ids do), with
# vm.unprivileged_userfaultfd=0 and /dev/userfaultfd root-only: the written
# backend must get its userfaultfd in UFFD_USER_MODE_ONLY form, soft-dirty
# must need nothing beyond the process's own /proc/self files. Its result
# lines are renamed (WWRESULT-NOBODY, WWDONE-NOBODY) so that the host files
# them under a row of their own. WW_UNPRIV=0 skips this pass.
if [[ ${WW_UNPRIV:-1} != 0 ]]; then
    echo 0 >/proc/sys/vm/unprivileged_userfaultfd 2>/dev/null || true
    [[ -e /dev/userfaultfd ]] && chmod 0600 /dev/userfaultfd
    echo "WWINIT unprivileged pass: uid 65534, vm.unprivileged_userfaultfd=$(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null || echo '?')"
    set +o pipefail
    HOME=/tmp WW_LOG_DIR=/tmp/ww-logs-nobody \
        /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs \
        /bin/bash /ww/scripts/run-backends.sh 2>&1 |
        while IFS= read -r line; do
            case $line in
            "WWRESULT "*) line="WWRESULT-NOBODY ${line#WWRESULT }" ;;
            WWDONE*) line="WWDONE-NOBODY${line#WWDONE}" ;;
            esac
            printf '%s\n' "$line"
        done
    set -o pipefail
fi

# "quiet" hides kernel warnings from the console; the tests poke at page-table
# code, so show any the kernel logged (informational: not a test verdict).
kmsg=$(dmesg | grep -A 20 -E 'WARNING:|BUG:|Oops' || true)
if [[ -n $kmsg ]]; then
    echo "WWINIT the kernel logged warnings during the run:"
    head -n 200 <<<"$kmsg" | sed 's/^/WWKMSG /'
fi
