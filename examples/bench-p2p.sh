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

BENCH_DIR=${BENCH_DIR:-/var/tmp/nydus-bench-registry}
BUILD_DIR=${BUILD_DIR:-build}
ROOTFS=${ROOTFS:-}
export OUT_DIR=${OUT_DIR:-/tmp/bench-p2p}
mkdir -p "$BENCH_DIR" "$OUT_DIR"
log=$OUT_DIR/setup.log
: >"$log"

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v curl >/dev/null || need+=(curl)
command -v tc >/dev/null || need+=(iproute2)
command -v nginx >/dev/null || need+=(nginx-light)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
command -v zstd >/dev/null || need+=(zstd)
[[ -x /usr/bin/python3 ]] || need+=(python3)
/usr/bin/python3 -c 'import pytest' 2>/dev/null || need+=(python3-pytest)  # p2p_harness imports it
[[ -n $ROOTFS ]] || command -v debootstrap >/dev/null || need+=(debootstrap)
command -v meson >/dev/null || need+=(meson ninja-build)
if ((${#need[@]})); then
  apt-get install -y "${need[@]}" >>"$log" 2>&1 || { echo "could not install ${need[*]}; see $log" >&2; exit 1; }
fi

[[ -f $BUILD_DIR/build.ninja ]] || meson setup "$BUILD_DIR" --buildtype=release >>"$log"
ninja -C "$BUILD_DIR" builder/nydus-image daemon/nydusd >>"$log" || { echo "build failed; see $log" >&2; exit 1; }
# A private copy of the binaries, so that a rebuild of $BUILD_DIR during the run (someone else's
# ninja) cannot pull them away mid-measurement.
mkdir -p "$OUT_DIR/bin"
for pair in "NYDUSD:$BUILD_DIR/daemon/nydusd" "NYDUS_IMAGE:$BUILD_DIR/builder/nydus-image"; do
  var=${pair%%:*} src=${pair#*:}
  [[ -n ${!var:-} ]] && continue
  for _ in $(seq 240); do [[ -x $src ]] && break; sleep 0.5; done  # a concurrent build may be relinking it
  cp "$src" "$OUT_DIR/bin/" || { echo "no $src" >&2; exit 1; }
  export "$var=$OUT_DIR/bin/$(basename "$src")"
done

# The tree: bench-registry.sh's recipe and cache (examples/bench-rootfs.sh).
source examples/bench-rootfs.sh
if [[ -z $ROOTFS ]]; then
  ensure_bench_rootfs
  tree=$BENCH_DIR/rootfs
  export ROOTFS=$tree
else
  ROOTFS=$(cd "$ROOTFS" && pwd)
  export ROOTFS
fi
export BENCH_DIR
exec /usr/bin/python3 examples/bench_p2p.py
