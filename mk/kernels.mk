# mk/kernels.mk -- included by the top-level Makefile.
#
#   make test-kernels        run the suite for every backend on the host kernel
#                            and on the Debian kernels of scripts/kernels.list
#                            (qemu/TCG VMs); see scripts/test-kernels.sh for the
#                            knobs (WW_KERNELS, WW_KERNEL_TIMEOUT, ...)
#   make bench-kernels       ww-bench's soft-dirty partial-reset case inside each
#                            VM (soft-dirty exists only there); results in
#                            .cache/test-kernels/bench-<series>.md
#   make clean-kernel-cache  forget the downloaded kernels and the last run

# Directory of this file, resolved when it is included (MAKEFILE_LIST changes
# with every later include).
WW_KERNELS_MK_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)

.PHONY: test-kernels bench-kernels clean-kernel-cache

# The script runs `make c-tests` (and cargo) itself. No "+" prefix on
# purpose: `make -n test-kernels` must not boot VMs; the price is a harmless
# "jobserver unavailable" warning from the inner make under `make -jN`.
test-kernels:
	bash $(WW_KERNELS_MK_ROOT)/scripts/test-kernels.sh

bench-kernels:
	WW_VM_BENCH="$${WW_VM_BENCH:---only softdirty --rounds 1 --child-timeout 1500}" bash $(WW_KERNELS_MK_ROOT)/scripts/test-kernels.sh

clean-kernel-cache:
	rm -rf $(WW_KERNELS_MK_ROOT)/.cache/kernels $(WW_KERNELS_MK_ROOT)/.cache/test-kernels
