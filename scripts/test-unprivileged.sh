#!/usr/bin/env bash
# Runs the staged suite (built by the last `make test`, staged under
# .cache/test-kernels/root/ww) as an unprivileged user, to show the library
# needs no privilege: the written backend opens userfaultfd in
# UFFD_USER_MODE_ONLY form (works with vm.unprivileged_userfaultfd=0) and
# soft-dirty needs only the process's own /proc/self files.
#
# Knobs: WW_UNPRIV_USER (default nobody), WW_UNPRIV_EXPECT (backends that
# must pass, default written,mprotect).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAGE=$REPO/.cache/test-kernels/root/ww
USER_NAME=${WW_UNPRIV_USER:-nobody}
EXPECT=${WW_UNPRIV_EXPECT:-written,mprotect}

[[ -x $STAGE/bin/ww-probe ]] || { echo "unprivileged: run 'make test' first (no staged suite)"; exit 2; }
if [[ $(id -u) -ne 0 ]]; then
    echo "unprivileged: already unprivileged (uid $(id -u)); 'make test' is the unprivileged run"
    exit 0
fi

# A world-readable copy: the clone itself may live in a private directory.
copy=$(mktemp -d /tmp/ww-unpriv.XXXXXX)
trap 'rm -rf "$copy"' EXIT
cp -a "$STAGE" "$copy/ww"
chmod -R a+rX "$copy"
chmod 1777 "$copy"

echo "### unprivileged run as $USER_NAME (vm.unprivileged_userfaultfd=$(cat /proc/sys/vm/unprivileged_userfaultfd 2>/dev/null || echo ?))"
out=$copy/out.txt
setpriv --reuid="$USER_NAME" --regid="$(id -g "$USER_NAME")" --clear-groups --no-new-privs \
    env -i PATH=/usr/bin:/bin HOME=/tmp TMPDIR=/tmp WW_ROOT="$copy/ww" WW_LOG_DIR="$copy/logs" \
    bash "$copy/ww/scripts/run-backends.sh" 2>&1 | tee "$out" || true

passed=0 failed=0
for b in written soft-dirty mprotect; do
    line=$(grep "^WWRESULT $b " "$out" || echo "WWRESULT $b failed no result")
    status=$(awk '{print $3}' <<<"$line")
    if [[ $status == passed ]]; then
        passed=$((passed + 1))
    elif [[ $status == skipped && ",$EXPECT," != *",$b,"* ]]; then
        echo "unprivileged: $b skipped (not expected here): ${line#* * * }"
    else
        echo "unprivileged: $b $status: ${line#* * * }"
        failed=$((failed + 1))
    fi
done
echo "unprivileged: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
