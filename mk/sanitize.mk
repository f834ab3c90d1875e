# mk/sanitize.mk -- sanitizers and dynamic-analysis tools.
#
# Included by the top Makefile (after mk/c.mk); also usable on its own:
# `make -f mk/sanitize.mk test-asan`.  Targets:
#
#   test-asan      the C tests (ffi/tests/test_*.c) and the dlopen host
#                  (ffi/dlopen_host.c) built with -fsanitize=address,undefined
#                  against the release library, run once per backend in
#                  WW_BACKENDS by ffi/run_tests.sh (skips stay skips)
#   test-valgrind  valgrind memcheck (--error-exitcode=1 --leak-check=full) on
#                  ww-probe, the C tests, the dlopen host (its dlopen/dlclose
#                  cycles included) and the C examples, per backend that works
#                  under valgrind (scripts/test-valgrind.sh); suppressions in
#                  mk/valgrind.supp, each with the reason it is not ours
#   test-miri      Miri on the pure-Rust parts: page, bitmap, the /proc/maps
#                  parser, the uapi constants, backend::Sink (tests/sink.rs).
#                  Prints "SKIP miri: <reason>" and succeeds when nightly or
#                  its miri component is missing
#   sanitize       all three
#
# Prerequisites: scripts/sanitize-deps.sh (libasan/libubsan, valgrind, and a
# best-effort nightly + miri).  ASan and valgrind need ffi/ in the tree; if
# it is absent they say so and fail.  Outputs go to $(SAN_OUT).

SAN_SAVED_DEFAULT_GOAL := $(.DEFAULT_GOAL)

CARGO       ?= cargo
LIBDIR      ?= target/release
WW_BACKENDS ?= written soft-dirty mprotect
FFI_DIR     ?= ffi
SAN_OUT     ?= target/sanitize
SAN_CC      ?= $(CC)

SAN_WARN     := -std=c11 -Wall -Wextra -Wpedantic -Werror
# _GNU_SOURCE for MAP_ANONYMOUS, RTLD_NOLOAD & co. under -std=c11 (as mk/c.mk).
SAN_CPPFLAGS := -Iinclude -I$(FFI_DIR) -D_GNU_SOURCE
# -O1 keeps stack traces useful; no recovery, so any report fails the test.
SAN_FLAGS    := -fsanitize=address,undefined -fno-omit-frame-pointer \
                -fno-sanitize-recover=all -O1 -g
# Valgrind wants the code as written: no sanitizer, little optimisation.
VG_FLAGS     := -O1 -g

# Programs linked with -lwritewatch look for its soname; cargo writes only
# libwritewatch.so, so keep a libwritewatch.so.0 symlink on the run path.
SAN_SONAME_DIR := $(SAN_OUT)/lib
SAN_LINK_LIB   := -L$(LIBDIR) -lwritewatch \
                  -Wl,-rpath,$(abspath $(LIBDIR)) \
                  -Wl,-rpath,$(abspath $(SAN_SONAME_DIR))

SAN_TEST_SRCS := $(sort $(wildcard $(FFI_DIR)/tests/test_*.c))
SAN_EX_SRCS   := $(sort $(wildcard $(FFI_DIR)/examples/*.c))
ASAN_TESTS    := $(patsubst $(FFI_DIR)/tests/%.c,$(SAN_OUT)/asan/%,$(SAN_TEST_SRCS)) \
                 $(SAN_OUT)/asan/test_dlopen_host
VG_TESTS      := $(patsubst $(FFI_DIR)/tests/%.c,$(SAN_OUT)/vg/%,$(SAN_TEST_SRCS)) \
                 $(SAN_OUT)/vg/test_dlopen_host
VG_EXAMPLES   := $(patsubst $(FFI_DIR)/examples/%.c,$(SAN_OUT)/vg/examples/%,$(SAN_EX_SRCS))

# halt_on_error with no recovery: the first report ends the run with 1.
# allow_user_segv_handler: the mprotect backend installs its own SIGSEGV
# handler (and chains to ASan's).  Leak checking stays on (detect_leaks).
# handle_segv=0: SIGSEGV belongs to the program under test (the mprotect
# backend's handler, and the sigchain tests that expect a real crash to die
# by SIGSEGV); ASan's own SEGV report would turn that death into exit 1.
# Memory-error detection does not depend on it.
SAN_ASAN_OPTIONS  ?= detect_leaks=1:halt_on_error=1:handle_segv=0:allow_user_segv_handler=1:abort_on_error=0
SAN_UBSAN_OPTIONS ?= print_stacktrace=1:halt_on_error=1

VALGRIND ?= valgrind

.PHONY: sanitize test-asan test-valgrind test-miri san-lib san-need-ffi

sanitize: test-asan test-valgrind test-miri

# cargo decides whether anything needs rebuilding.
san-lib:
	$(CARGO) build --release --lib --bin ww-probe

san-need-ffi:
	@[ -f $(FFI_DIR)/run_tests.sh ] || { \
	  echo "sanitize: $(FFI_DIR)/ (C tests, examples, dlopen host) is not in this tree"; \
	  exit 1; }

$(SAN_SONAME_DIR)/libwritewatch.so.0: | san-lib
	@mkdir -p $(@D)
	ln -sfn $(abspath $(LIBDIR))/libwritewatch.so $@

# --- AddressSanitizer + UndefinedBehaviorSanitizer ------------------------

test-asan: san-need-ffi
	@$(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) san-asan-build
	ASAN_OPTIONS=$(SAN_ASAN_OPTIONS) UBSAN_OPTIONS=$(SAN_UBSAN_OPTIONS) \
	WW_BACKENDS="$(WW_BACKENDS)" $(FFI_DIR)/run_tests.sh $(LIBDIR) \
	    $(SAN_OUT)/asan/logs $(ASAN_TESTS)

.PHONY: san-asan-build
san-asan-build: $(ASAN_TESTS)

$(SAN_OUT)/asan/test_%: $(FFI_DIR)/tests/test_%.c $(FFI_DIR)/tests/ww_test.h \
		include/writewatch.h | san-lib $(SAN_SONAME_DIR)/libwritewatch.so.0
	@mkdir -p $(@D)
	$(SAN_CC) $(SAN_WARN) $(SAN_FLAGS) $(SAN_CPPFLAGS) -pthread -o $@ $< $(SAN_LINK_LIB)

$(SAN_OUT)/asan/test_dlopen_host: $(FFI_DIR)/dlopen_host.c $(FFI_DIR)/ww_dl.h \
		include/writewatch.h | san-lib
	@mkdir -p $(@D)
	$(SAN_CC) $(SAN_WARN) $(SAN_FLAGS) $(SAN_CPPFLAGS) -o $@ $< -ldl

# --- valgrind memcheck -----------------------------------------------------

# scripts/test-valgrind.sh: ww-probe under memcheck, then the C tests and the
# dlopen host per backend that works *under valgrind* (valgrind 3.19 lacks
# userfaultfd(2): the written backend is skipped there, out loud), then the
# examples once with AUTO.
test-valgrind: san-need-ffi
	@command -v $(VALGRIND) >/dev/null || { echo "test-valgrind: no valgrind (scripts/sanitize-deps.sh)"; exit 1; }
	@$(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) san-vg-build
	VALGRIND=$(VALGRIND) WW_BACKENDS="$(WW_BACKENDS)" scripts/test-valgrind.sh \
	    $(LIBDIR) $(SAN_OUT)/vg $(FFI_DIR) $(LIBDIR)/ww-probe -- $(VG_TESTS) -- $(VG_EXAMPLES)

.PHONY: san-vg-build
san-vg-build: $(VG_TESTS) $(VG_EXAMPLES)

$(SAN_OUT)/vg/test_%: $(FFI_DIR)/tests/test_%.c $(FFI_DIR)/tests/ww_test.h \
		include/writewatch.h | san-lib $(SAN_SONAME_DIR)/libwritewatch.so.0
	@mkdir -p $(@D)
	$(SAN_CC) $(SAN_WARN) $(VG_FLAGS) $(SAN_CPPFLAGS) -pthread -o $@ $< $(SAN_LINK_LIB)

$(SAN_OUT)/vg/test_dlopen_host: $(FFI_DIR)/dlopen_host.c $(FFI_DIR)/ww_dl.h \
		include/writewatch.h | san-lib
	@mkdir -p $(@D)
	$(SAN_CC) $(SAN_WARN) $(VG_FLAGS) $(SAN_CPPFLAGS) -o $@ $< -ldl

$(SAN_OUT)/vg/examples/%: $(FFI_DIR)/examples/%.c include/writewatch.h \
		| san-lib $(SAN_SONAME_DIR)/libwritewatch.so.0
	@mkdir -p $(@D)
	$(SAN_CC) $(SAN_WARN) $(VG_FLAGS) $(SAN_CPPFLAGS) -o $@ $< $(SAN_LINK_LIB)

# --- Miri --------------------------------------------------------------------

# Only code that makes no syscalls Miri lacks (mmap of our kinds, ioctl,
# userfaultfd): the unit tests named here and tests/sink.rs.
MIRI_LIB_FILTERS := page:: bitmap:: sys::mm::tests sys::uapi::tests::constants_match_mainline
MIRI_TOOLCHAIN   ?= nightly

test-miri:
	@if ! $(CARGO) +$(MIRI_TOOLCHAIN) miri --version >/dev/null 2>&1; then \
	  if ! rustup run $(MIRI_TOOLCHAIN) rustc --version >/dev/null 2>&1; then \
	    echo "SKIP miri: no $(MIRI_TOOLCHAIN) toolchain (Miri needs nightly; scripts/sanitize-deps.sh tries to install it)"; \
	  else \
	    echo "SKIP miri: the $(MIRI_TOOLCHAIN) toolchain has no miri component (rustup component add --toolchain $(MIRI_TOOLCHAIN) miri rust-src)"; \
	  fi; \
	  exit 0; \
	fi; \
	set -e; \
	$(CARGO) +$(MIRI_TOOLCHAIN) miri setup >/dev/null 2>&1 || { \
	  echo "SKIP miri: 'cargo miri setup' failed (no rust-src, or crates.io unreachable)"; exit 0; }; \
	MIRIFLAGS="$${MIRIFLAGS:--Zmiri-strict-provenance}" \
	  $(CARGO) +$(MIRI_TOOLCHAIN) miri test --lib -- $(MIRI_LIB_FILTERS); \
	MIRIFLAGS="$${MIRIFLAGS:--Zmiri-strict-provenance}" \
	  $(CARGO) +$(MIRI_TOOLCHAIN) miri test --test sink

.DEFAULT_GOAL := $(SAN_SAVED_DEFAULT_GOAL)
