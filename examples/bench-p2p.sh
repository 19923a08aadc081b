#!/usr/bin/env bash
# The Dragonfly + Nydus integration guide's six scenarios with the embedded
# P2P backend (issue 11, "Benchmark"), plus peer-port throughput on loopback
# for a 1 GiB blob against nginx. The measuring is examples/bench_p2p.py
# (its docstring says what each row times); this wrapper installs what is
# missing, builds the binaries and the Debian 12 + python3 root filesystem
# (debootstrap, cached in $BENCH_DIR/rootfs exactly as bench-registry.sh
# caches it, so the two scripts share it), then runs it as root.
#
#   sudo examples/bench-p2p.sh
#   sudo RUNS=1 examples/bench-p2p.sh          # quick: one run per row
#   sudo OUT_DIR=/tmp/x RATE=1gbit examples/bench-p2p.sh
#
# Output: the table on stdout (and $OUT_DIR/table.txt), $OUT_DIR/results.csv,
# $OUT_DIR/bench-p2p.png (gnuplot: ours beside the guide's figures, as
# fractions of OCIv1), nydusd and registry logs in $OUT_DIR/logs.
# Environment: RUNS (3), RATE (100mbit), OUT_DIR (/tmp/bench-p2p), NODES (8),
# LOOPBACK_MIB (1024, 0 skips), BENCH_DIR (/var/tmp/nydus-bench-registry),
# ROOTFS (another tree), MIRROR (Debian mirror for debootstrap), BUILD_DIR
# (build), NYDUSD and NYDUS_IMAGE (other binaries). 3 runs take ~5 minutes
# here once the rootfs exists. Everything started is stopped on exit;
# leftovers of a killed run are removed by the next one (p2p_harness).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || exec sudo -E "$0" "$@"

source examples/bench-testbed.sh
bench_setup /tmp/bench-p2p curl:curl nginx:nginx-light gnuplot:gnuplot-nox
exec /usr/bin/python3 examples/bench_p2p.py
