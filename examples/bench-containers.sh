#!/usr/bin/env bash
# Container start with a real runtime (issue 14, "Benchmark"): podman pulls,
# unpacks and runs python3 -V from the registry (OCIv1), against podman
# running it from our lazy mount, without and with P2P. The measuring is
# examples/bench_containers.py (its docstring says what each row times);
# this wrapper installs what is missing, builds the binaries and the Debian
# 12 + python3 root filesystem (cached in $BENCH_DIR/rootfs, shared with
# bench-registry.sh and bench-p2p.sh), then runs it as root.
#
#   sudo examples/bench-containers.sh
#   sudo RUNS=1 examples/bench-containers.sh
#
# Output: the table on stdout and in $OUT_DIR/table.txt, runs in
# $OUT_DIR/results.json. Environment: RUNS (3), RATE (100mbit), OUT_DIR
# (/tmp/bench-containers), BENCH_DIR (/var/tmp/nydus-bench-registry), ROOTFS,
# MIRROR (Debian mirror for debootstrap), BUILD_DIR (build), NYDUSD, NYDUS_IMAGE.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || exec sudo -E "$0" "$@"

source examples/bench-testbed.sh
bench_setup /tmp/bench-containers podman:podman runc:runc skopeo:skopeo
exec /usr/bin/python3 examples/bench_containers.py
