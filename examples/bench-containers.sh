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

BENCH_DIR=${BENCH_DIR:-/var/tmp/nydus-bench-registry}
BUILD_DIR=${BUILD_DIR:-build}
ROOTFS=${ROOTFS:-}
export OUT_DIR=${OUT_DIR:-/tmp/bench-containers}
mkdir -p "$BENCH_DIR" "$OUT_DIR"
log=$OUT_DIR/setup.log
: >"$log"

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v tc >/dev/null || need+=(iproute2)
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v skopeo >/dev/null || need+=(skopeo)
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
mkdir -p "$OUT_DIR/bin"
for pair in "NYDUSD:$BUILD_DIR/daemon/nydusd" "NYDUS_IMAGE:$BUILD_DIR/builder/nydus-image"; do
  var=${pair%%:*} src=${pair#*:}
  [[ -n ${!var:-} ]] && continue
  cp "$src" "$OUT_DIR/bin/" || { echo "no $src" >&2; exit 1; }
  export "$var=$OUT_DIR/bin/$(basename "$src")"
done

source examples/bench-rootfs.sh
if [[ -z $ROOTFS ]]; then
  ensure_bench_rootfs
  export ROOTFS=$BENCH_DIR/rootfs
else
  ROOTFS=$(cd "$ROOTFS" && pwd)
  export ROOTFS
fi
export BENCH_DIR
exec /usr/bin/python3 examples/bench_containers.py
