#!/usr/bin/env bash
# Install the host packages that `make test-kernels` needs, and nothing else.
#
#   qemu-system-x86   qemu-system-x86_64 (TCG only; nested KVM is not available)
#   busybox-static    the userland of the test VM's initramfs
#   cpio              to pack the initramfs
#
# Idempotent: packages that are already installed are not touched, and
# `apt-get update` runs at most once, and only when apt needs it.
#
# Usage: scripts/ci-deps.sh            install what is missing
#        scripts/ci-deps.sh --update   only make sure the apt lists are fresh
#                                      (used by test-kernels.sh when the kernel
#                                      packages cannot be found)
set -euo pipefail

PACKAGES=(qemu-system-x86 busybox-static cpio)

# Run apt as root: directly when we are root (CI, dev machines), else via sudo.
if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
else
    SUDO=(sudo)
fi

# Another apt/dpkg run (e.g. a provisioning install started in the background)
# may hold the dpkg lock; wait for it instead of failing.
APT_OPTS=(-o DPkg::Lock::Timeout=900 -o Acquire::Retries=3)

log() { printf 'ci-deps: %s\n' "$*" >&2; }

updated=0
apt_update() {
    if [[ $updated -eq 0 ]]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get "${APT_OPTS[@]}" update -qq
        updated=1
    fi
}

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

# True when apt knows an installable candidate for the package.
has_candidate() {
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [[ -n $cand && $cand != "(none)" ]]
}

if [[ ${1:-} == --update ]]; then
    apt_update
    exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    log "all present: ${PACKAGES[*]}"
    exit 0
fi

# The lists may be empty (fresh container) or stale; refresh them once.
for p in "${missing[@]}"; do
    has_candidate "$p" || { apt_update; break; }
done

log "installing: ${missing[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${missing[@]}"
