# Sourced by the benchmark scripts (bench-registry.sh, bench-p2p.sh): the
# Debian 12 + python3 root filesystem they share, made once with debootstrap
# and cached in $BENCH_DIR/rootfs (marked done by $BENCH_DIR/rootfs.done).

# The Debian mirror apt uses here (sources.list or deb822 .sources), else
# deb.debian.org.
detect_mirror() {
  local u
  u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '$1 == "URIs:" {for (i = 2; i <= NF; i++) print $i}
         $1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; break}}' |
    grep -E '/debian/?$' | head -1 || true)
  echo "${u:-http://deb.debian.org/debian}"
}

# Makes $BENCH_DIR/rootfs unless it is there already (a few minutes, once;
# MIRROR overrides the mirror). Exits the script when debootstrap fails.
ensure_bench_rootfs() {
  local tree=$BENCH_DIR/rootfs
  [[ -f $BENCH_DIR/rootfs.done ]] && return 0
  MIRROR=${MIRROR:-$(detect_mirror)}
  echo "making the rootfs with debootstrap from $MIRROR (a few minutes, once) ..." >&2
  rm -rf "$tree" "$tree.tmp"
  timeout 1800 debootstrap --variant=minbase --include=python3 bookworm "$tree.tmp" "$MIRROR" \
    >"$BENCH_DIR/debootstrap.log" 2>&1 ||
    { echo "debootstrap failed; see $BENCH_DIR/debootstrap.log" >&2; rm -rf "$tree.tmp"; exit 1; }
  mv "$tree.tmp" "$tree"
  echo "debootstrap --variant=minbase --include=python3 bookworm" >"$BENCH_DIR/rootfs.done"
}
