#!/usr/bin/env bash
# The P2P simulator against real daemons (issue 15's calibration): 32 real
# nydusd in network namespaces read a fixed file list of the P2P test image
# at once through a shaped registry and shaped node links, and p2p-sim runs
# the same N, the trace one lone node recorded, the same rates and the
# latencies measured on the test bed. Prints real vs simulated figures (origin
# bytes, single-node time, p50 and p99 completion, upload balance) and fails
# when they differ beyond the issue's bounds (origin 2 %, times 20 %).
#
#   sudo examples/bench-sim-calibration.sh
#   sudo SIM_CALIBRATION_NODE_QUEUE=300ms examples/bench-sim-calibration.sh
#
# Environment: OUT_DIR (default /tmp/bench-sim-calibration: calibration.json,
# the pytest log), BUILD_DIR, SIM_CALIBRATION_PEER_TIMEOUT_MS,
# SIM_CALIBRATION_NODE_QUEUE (see test/mount/test_sim_calibration.py).
# About a minute; run it on an otherwise idle machine (it compares times).
set -euo pipefail
cd "$(dirname "$0")/.."
source examples/bench-testbed.sh
export BENCH_DIR=${BENCH_DIR:-/var/tmp/nydus-bench-registry}
BUILD_DIR=${BUILD_DIR:-build}
export OUT_DIR=${OUT_DIR:-/tmp/bench-sim-calibration}
mkdir -p "$OUT_DIR"
: >"$OUT_DIR/setup.log"
bench_install docker-registry:docker-registry tc:iproute2 /usr/bin/python3:python3 -:python3-pytest \
  meson:meson ninja:ninja-build
bench_binaries
ninja -C "$BUILD_DIR" test/sim/p2p-sim >>"$OUT_DIR/setup.log"
cp "$BUILD_DIR/test/sim/p2p-sim" "$OUT_DIR/bin/"
SIM_CALIBRATION=1 P2P_SIM="$OUT_DIR/bin/p2p-sim" SIM_CALIBRATION_OUT="$OUT_DIR/calibration.json" \
  /usr/bin/python3 -m pytest -q -s -p no:cacheprovider test/mount/test_sim_calibration.py 2>&1 |
  tee "$OUT_DIR/pytest.log"
