# mk/c.mk -- the C side of writewatch: ABI check, demo, examples, C tests.
#
# Included by the top Makefile, which defines `lib` (cargo build --release,
# producing $(LIBDIR)/libwritewatch.so) and `demo` (which builds and runs
# $(FFI_OUT)/demo).  Targets defined here:
#
#   c           build demo, dlopen_host, examples and C tests into $(FFI_OUT)
#   abi-check   compile-only check that include/writewatch.h still declares
#               the pinned ABI (ffi/abi_check.c); needs no library
#   c-tests     abi-check + everything `c` builds (tests are $(FFI_OUT)/test_*)
#   test-c      run every $(FFI_OUT)/test_* once per backend in WW_BACKENDS
#               (exit 77 = skipped on this kernel; logs in $(FFI_OUT)/logs)
#   clean-c     remove $(FFI_OUT)
#
# Programs linked with -lwritewatch record its soname (libwritewatch.so.0)
# if the library sets one, but cargo only writes libwritewatch.so.  So they
# get two run paths: $(LIBDIR) and $(FFI_OUT)/lib, where we keep a
# libwritewatch.so.0 -> $(LIBDIR)/libwritewatch.so symlink.  The demo and
# dlopen_host are not linked with the library at all (they dlopen it, via
# $WW_LIB or the dynamic linker's search path, e.g. LD_LIBRARY_PATH).

# Defining targets here must not steal the including Makefile's default
# goal; restored at the end of this file.
FFI_SAVED_DEFAULT_GOAL := $(.DEFAULT_GOAL)

FFI_OUT     ?= target/ffi
LIBDIR      ?= target/release
WW_BACKENDS ?= written soft-dirty mprotect

FFI_CC      ?= $(CC)
FFI_WARN    := -std=c11 -Wall -Wextra -Wpedantic -Werror
FFI_CFLAGS  ?= -O2 -g
# _GNU_SOURCE for MAP_ANONYMOUS, RTLD_NOLOAD, socketpair & co. under -std=c11.
FFI_CPPFLAGS := -Iinclude -Iffi -D_GNU_SOURCE
FFI_SONAME_DIR := $(FFI_OUT)/lib
FFI_LINK_LIB := -L$(LIBDIR) -lwritewatch \
                -Wl,-rpath,$(abspath $(LIBDIR)) \
                -Wl,-rpath,$(abspath $(FFI_SONAME_DIR))

FFI_HEADER    := include/writewatch.h
FFI_TEST_SRCS := $(sort $(wildcard ffi/tests/test_*.c))
FFI_TESTS     := $(patsubst ffi/tests/%.c,$(FFI_OUT)/%,$(FFI_TEST_SRCS)) \
                 $(FFI_OUT)/test_dlopen_host
FFI_EXAMPLES  := $(patsubst ffi/examples/%.c,$(FFI_OUT)/examples/%, \
                   $(sort $(wildcard ffi/examples/*.c)))
FFI_SONAME_LINK := $(FFI_SONAME_DIR)/libwritewatch.so.0

.PHONY: c abi-check c-tests test-c clean-c

c: $(FFI_OUT)/demo $(FFI_OUT)/dlopen_host $(FFI_TESTS) $(FFI_EXAMPLES)

c-tests: abi-check c

test-c: c-tests
	WW_BACKENDS="$(WW_BACKENDS)" ffi/run_tests.sh $(LIBDIR) $(FFI_OUT)/logs \
	    $(FFI_TESTS)

clean-c:
	rm -rf $(FFI_OUT)

# Compile-only.  Also: every function the header declares must have a slot
# in ffi/ww_dl.h (the dlsym table) and a pin in ffi/abi_check.c, and the
# header must stay valid C++ (its extern "C" block).
abi-check:
	@mkdir -p $(FFI_OUT)
	$(FFI_CC) $(FFI_WARN) -Iinclude -c ffi/abi_check.c -o $(FFI_OUT)/abi_check.o
	@fns=$$(grep -v '^[[:space:]]*/\{0,1\}\*' $(FFI_HEADER) | \
	        grep -o 'ww_[a-z_]*(' | tr -d '(' | sort -u); \
	 [ -n "$$fns" ] || { echo "abi-check: no functions found in $(FFI_HEADER)"; exit 1; }; \
	 for f in $$fns; do \
	   grep -q "WW_PIN($$f)" ffi/ww_dl.h || { echo "abi-check: $$f has no slot in ffi/ww_dl.h"; exit 1; }; \
	   grep -qw "$$f;" ffi/abi_check.c || { echo "abi-check: $$f not pinned in ffi/abi_check.c"; exit 1; }; \
	 done; \
	 echo "abi-check: $$(echo $$fns | wc -w) functions pinned"
	@if command -v c++ >/dev/null 2>&1; then \
	   echo '#include "writewatch.h"' | \
	   c++ -std=c++11 -Wall -Wextra -Wpedantic -Werror -Iinclude -x c++ -fsyntax-only - \
	   && echo "abi-check: header compiles as C++"; \
	 fi

# The soname symlink (see the top of this file).
$(FFI_SONAME_LINK): | lib
	@mkdir -p $(@D)
	ln -sfn $(abspath $(LIBDIR))/libwritewatch.so $@

# dlopen users: no -lwritewatch, only libdl.
$(FFI_OUT)/demo: ffi/demo.c ffi/ww_dl.h $(FFI_HEADER) | lib
	@mkdir -p $(@D)
	$(FFI_CC) $(FFI_WARN) $(FFI_CFLAGS) $(FFI_CPPFLAGS) -o $@ $< -ldl

# Built under two names: the program, and the test that runs it.
$(FFI_OUT)/dlopen_host $(FFI_OUT)/test_dlopen_host: ffi/dlopen_host.c \
		ffi/ww_dl.h $(FFI_HEADER) | lib
	@mkdir -p $(@D)
	$(FFI_CC) $(FFI_WARN) $(FFI_CFLAGS) $(FFI_CPPFLAGS) -o $@ $< -ldl

$(FFI_OUT)/test_%: ffi/tests/test_%.c ffi/tests/ww_test.h $(FFI_HEADER) \
		| lib $(FFI_SONAME_LINK)
	@mkdir -p $(@D)
	$(FFI_CC) $(FFI_WARN) $(FFI_CFLAGS) $(FFI_CPPFLAGS) -pthread -o $@ $< \
	    $(FFI_LINK_LIB)

$(FFI_OUT)/examples/%: ffi/examples/%.c $(FFI_HEADER) | lib $(FFI_SONAME_LINK)
	@mkdir -p $(@D)
	$(FFI_CC) $(FFI_WARN) $(FFI_CFLAGS) $(FFI_CPPFLAGS) -o $@ $< $(FFI_LINK_LIB)

.DEFAULT_GOAL := $(FFI_SAVED_DEFAULT_GOAL)
