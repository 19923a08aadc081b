# Set-up shared by the benchmark wrappers that run on the P2P test bed
# (bench-p2p.sh, bench-containers.sh); sourced from the repository root, as
# root.
#
#   bench_setup OUT_DIR_DEFAULT CMD:PACKAGE...
#                                 all of it: BENCH_DIR, BUILD_DIR, ROOTFS and OUT_DIR
#                                 (exported; OUT_DIR defaults to the first argument),
#                                 $OUT_DIR/setup.log emptied, the test bed's tools and
#                                 the given ones installed, bench_binaries, bench_tree
#   bench_install CMD:PACKAGE...  installs the packages of the commands that are missing
#                                 (CMD may be a path; "-:PACKAGE" always installs PACKAGE
#                                 when dpkg does not have it)
#   bench_binaries                builds nydusd and nydus-image, exports NYDUSD and
#                                 NYDUS_IMAGE as private copies in $OUT_DIR/bin (a rebuild
#                                 during the run cannot pull them away mid-measurement)
#   bench_tree                    exports ROOTFS: the given tree, else the Debian 12 +
#                                 python3 tree bench-registry.sh makes and caches
source "$(dirname "${BASH_SOURCE[0]}")/bench-rootfs.sh"

bench_install() {
  local need=() pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*} pkg=${pair#*:}
    if [[ $cmd == - ]]; then
      dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
    elif [[ $cmd == /* ]]; then
      [[ -x $cmd ]] || need+=("$pkg")
    else
      command -v "$cmd" >/dev/null || need+=("$pkg")
    fi
  done
  ((${#need[@]})) || return 0
  apt-get install -y "${need[@]}" >>"$OUT_DIR/setup.log" 2>&1 ||
    { echo "could not install ${need[*]}; see $OUT_DIR/setup.log" >&2; exit 1; }
}

bench_binaries() {
  [[ -f $BUILD_DIR/build.ninja ]] || meson setup "$BUILD_DIR" --buildtype=release >>"$OUT_DIR/setup.log"
  ninja -C "$BUILD_DIR" builder/nydus-image daemon/nydusd >>"$OUT_DIR/setup.log" ||
    { echo "build failed; see $OUT_DIR/setup.log" >&2; exit 1; }
  mkdir -p "$OUT_DIR/bin"
  local pair var src
  for pair in "NYDUSD:$BUILD_DIR/daemon/nydusd" "NYDUS_IMAGE:$BUILD_DIR/builder/nydus-image"; do
    var=${pair%%:*} src=${pair#*:}
    [[ -n ${!var:-} ]] && continue
    for _ in $(seq 240); do [[ -x $src ]] && break; sleep 0.5; done  # a concurrent build may be relinking it
    cp "$src" "$OUT_DIR/bin/" || { echo "no $src" >&2; exit 1; }
    export "$var=$OUT_DIR/bin/$(basename "$src")"
  done
}

bench_tree() {
  if [[ -z ${ROOTFS:-} ]]; then
    ensure_bench_rootfs
    export ROOTFS=$BENCH_DIR/rootfs
  else
    ROOTFS=$(cd "$ROOTFS" && pwd)
    export ROOTFS
  fi
  export BENCH_DIR
}

bench_setup() {
  export BENCH_DIR=${BENCH_DIR:-/var/tmp/nydus-bench-registry}
  BUILD_DIR=${BUILD_DIR:-build}
  ROOTFS=${ROOTFS:-}
  export OUT_DIR=${OUT_DIR:-$1}
  shift
  mkdir -p "$BENCH_DIR" "$OUT_DIR"
  : >"$OUT_DIR/setup.log"
  # p2p_harness imports pytest
  bench_install docker-registry:docker-registry tc:iproute2 zstd:zstd /usr/bin/python3:python3 -:python3-pytest \
    meson:meson ninja:ninja-build "$@"
  [[ -n $ROOTFS ]] || bench_install debootstrap:debootstrap
  bench_binaries
  bench_tree  # bench-registry.sh's recipe and cache (examples/bench-rootfs.sh)
}
