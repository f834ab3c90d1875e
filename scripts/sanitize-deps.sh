#!/usr/bin/env bash
# Installs what `make test-asan test-valgrind test-miri` (mk/sanitize.mk)
# need, on Debian/Ubuntu, as root. Idempotent: installs only what is missing.
#
#   - ASan/UBSan runtimes for gcc: libasan8, libubsan1 (and libgcc-12-dev,
#     which holds the libasan.so link gcc uses) -- checked by compiling and
#     running a sanitized program, not by package name
#   - valgrind
#   - best effort: a nightly Rust toolchain with the miri and rust-src
#     components. `make test-miri` prints "SKIP miri: <reason>" without them,
#     so a failure here is reported, not fatal.
set -euo pipefail

cc=${CC:-cc}
missing=()

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo 'int main(void) { return 0; }' >"$tmp/t.c"
if ! { "$cc" -fsanitize=address,undefined "$tmp/t.c" -o "$tmp/t" 2>/dev/null && "$tmp/t"; }; then
    missing+=(libasan8 libubsan1 libgcc-12-dev)
fi
command -v valgrind >/dev/null || missing+=(valgrind)

if [[ ${#missing[@]} -gt 0 ]]; then
    echo "sanitize-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if ! { "$cc" -fsanitize=address,undefined "$tmp/t.c" -o "$tmp/t" && "$tmp/t"; }; then
        echo "sanitize-deps: $cc still cannot build a sanitized program" >&2
        exit 1
    fi
fi
echo "sanitize-deps: ASan/UBSan ok ($("$cc" --version | head -n1)), $(valgrind --version)"

# Miri: nightly only. Bounded, and never fatal.
if command -v rustup >/dev/null; then
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        timeout 180 rustup toolchain install nightly --profile minimal \
            || echo "sanitize-deps: no nightly toolchain (test-miri will SKIP)"
    fi
    if rustup run nightly rustc --version >/dev/null 2>&1 \
        && ! cargo +nightly miri --version >/dev/null 2>&1; then
        timeout 180 rustup component add --toolchain nightly miri rust-src \
            || echo "sanitize-deps: no miri component for nightly (test-miri will SKIP)"
    fi
    if cargo +nightly miri --version >/dev/null 2>&1; then
        echo "sanitize-deps: $(cargo +nightly miri --version)"
    fi
else
    echo "sanitize-deps: no rustup, so no nightly/miri (test-miri will SKIP)"
fi
