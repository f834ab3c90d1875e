# `make bench`: the library against the raw kernel mechanisms, one run,
# side by side (src/bin/ww-bench). Included by the top Makefile; also works
# alone (`make -f mk/bench.mk bench`).
#
#   make bench                      full run (5 rounds, a few minutes on 2 cores)
#   make bench BENCH_ARGS=--quick   3 rounds, no 1 GiB rows
#   make bench-quick                the same
#
# Output: a table on stdout, $(BENCH_OUT)/results.{md,json} and chart.svg.
# Take final figures when the machine is otherwise idle (`uptime`): the
# load average at start and end is recorded in the results.

CARGO     ?= cargo
BENCH_OUT ?= target/bench
BENCH_ARGS ?=

.PHONY: bench bench-quick

bench:
	$(CARGO) build --release --bin ww-bench
	target/release/ww-bench --out $(BENCH_OUT) $(BENCH_ARGS)

bench-quick:
	$(MAKE) -f $(firstword $(MAKEFILE_LIST)) bench BENCH_ARGS=--quick
