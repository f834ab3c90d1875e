# writewatch — see README.md. `make demo` runs the main job, `make test` the tests.

PREFIX  ?= /usr/local
DESTDIR ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
CARGO   ?= cargo
LIBDIR  ?= target/release
FFI_OUT ?= target/ffi

.DEFAULT_GOAL := all
.PHONY: all lib demo probe test check fmt-check clippy exports-check install uninstall clean

all: lib

include mk/c.mk
include mk/kernels.mk
include mk/sanitize.mk
include mk/bench.mk

lib:
	$(CARGO) build --release --lib --bin ww-probe

# The main job: a C program that dlopens the library as a Wine-like runtime
# would, shows the backends and tracking at work, and times it.
demo: lib $(FFI_OUT)/demo
	WW_LIB=$(abspath $(LIBDIR))/libwritewatch.so $(FFI_OUT)/demo

# Why each backend is (not) available on this machine.
probe: lib
	$(LIBDIR)/ww-probe

# The whole suite (Rust and C tests, once per backend) on this kernel.
# WW_HOST_EXPECT names the backends that must not be skipped here.
test:
	WW_KERNELS=none WW_HOST_EXPECT=$${WW_HOST_EXPECT:-mprotect} bash scripts/test-kernels.sh

# Formatting, lints, the ABI checks and the tests.
check: fmt-check clippy abi-check exports-check test

# The header's functions are exactly the library's exported symbols
# (tests/header.rs needs the build tree, so it runs here, not in the VMs).
exports-check: lib
	$(CARGO) test --release --test header

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

install: lib
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 0755 $(LIBDIR)/libwritewatch.so $(DESTDIR)$(PREFIX)/lib/libwritewatch.so.$(VERSION)
	ln -sfn libwritewatch.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libwritewatch.so.0
	ln -sfn libwritewatch.so.0 $(DESTDIR)$(PREFIX)/lib/libwritewatch.so
	install -m 0644 include/writewatch.h $(DESTDIR)$(PREFIX)/include/writewatch.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' writewatch.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/writewatch.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/lib/libwritewatch.so* $(DESTDIR)$(PREFIX)/include/writewatch.h \
	      $(DESTDIR)$(PREFIX)/lib/pkgconfig/writewatch.pc

clean: clean-c
	$(CARGO) clean
