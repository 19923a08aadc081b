#!/usr/bin/env bash
# Build throughput of `nydus-image create` beside mksquashfs and mkfs.erofs
# on the same large real tree (issue 3, "Benchmarks in examples/").
#
#   sudo examples/bench-build.sh [TREE]
#
# TREE defaults to a Debian 12 root filesystem made once with debootstrap
# (minbase + a toolchain, Python with numpy/scipy, OpenJDK 17, clang/llvm:
# about 2.0 GiB in 45k entries), cached in $BENCH_DIR/rootfs. If debootstrap
# cannot run (offline), the fallback is a copy of /usr/lib/x86_64-linux-gnu,
# /usr/share and /usr/include. The script prints which tree it used.
#
# Every run starts with the page cache dropped (sync; echo 3 >
# /proc/sys/vm/drop_caches). The time of a run is the wall time of the tool
# plus an fsync of its outputs (nydus-image fsyncs before renaming its
# outputs into place; mksquashfs and mkfs.erofs do not, so their outputs are
# synced inside the timed region too). Each configuration runs $REPS times
# (default 3); the table shows the median, and ratios against
# `mksquashfs -comp zstd` (its default level, 15) measured in the same run.
#
# Environment: BENCH_DIR (default /var/tmp/nydus-bench), REPS (3),
# BUILD_DIR (build-bench, a release build of this project), MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || exec sudo -E "$0" "$@"

BENCH_DIR=${BENCH_DIR:-/var/tmp/nydus-bench}
REPS=${REPS:-3}
BUILD_DIR=${BUILD_DIR:-build-bench}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS_PACKAGES=build-essential,git,python3,python3-numpy,python3-scipy,perl,openjdk-17-jdk-headless,clang,llvm,vim,curl,locales,man-db
mkdir -p "$BENCH_DIR"
log=$BENCH_DIR/bench-build.log
: >"$log"

need=()
command -v mksquashfs >/dev/null || need+=(squashfs-tools)
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
[[ -x /usr/bin/time ]] || need+=(time)
command -v meson >/dev/null || need+=(meson ninja-build)
[[ $# -gt 0 ]] || command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  apt-get install -y "${need[@]}" >>"$log" 2>&1 || echo "warning: could not install ${need[*]}" >&2
fi

# --- the build under test: a release build in its own directory ----------
[[ -f $BUILD_DIR/build.ninja ]] || meson setup "$BUILD_DIR" --buildtype=release >>"$log"
ninja -C "$BUILD_DIR" builder/nydus-image >>"$log"
nydus_image=$PWD/$BUILD_DIR/builder/nydus-image

# --- the tree ----------------------------------------------------------
make_tree() {
  if [[ $# -gt 0 ]]; then
    tree=$(cd "$1" && pwd)
    tree_desc="$tree (given on the command line)"
    return
  fi
  tree=$BENCH_DIR/rootfs
  tree_desc="Debian 12 (bookworm) rootfs by debootstrap --variant=minbase --include=$ROOTFS_PACKAGES"
  [[ -f $BENCH_DIR/rootfs.done ]] && return
  rm -rf "$tree" "$tree.tmp"
  echo "making the tree with debootstrap (a few minutes, once) ..."
  if command -v debootstrap >/dev/null &&
    timeout 1800 debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$tree.tmp" "$MIRROR" \
      >"$BENCH_DIR/debootstrap.log" 2>&1; then
    mv "$tree.tmp" "$tree"
    touch "$BENCH_DIR/rootfs.done"
    return
  fi
  echo "debootstrap failed (see $BENCH_DIR/debootstrap.log); falling back to a copy of /usr subsets" >&2
  rm -rf "$tree.tmp"
  tree=$BENCH_DIR/usr-subset
  tree_desc="copy of /usr/lib/x86_64-linux-gnu, /usr/share and /usr/include"
  if [[ ! -f $BENCH_DIR/usr-subset.done ]]; then
    rm -rf "$tree"
    mkdir -p "$tree/lib"
    cp -a /usr/lib/x86_64-linux-gnu "$tree/lib/"
    cp -a /usr/share /usr/include "$tree/"
    touch "$BENCH_DIR/usr-subset.done"
  fi
}
make_tree "$@"

tree_bytes=$(find "$tree" -type f -printf '%s\n' | awk '{s += $1} END {printf "%d", s}')
tree_entries=$(find "$tree" | wc -l)
tree_files=$(find "$tree" -type f | wc -l)
tree_mb=$(awk -v b="$tree_bytes" 'BEGIN {printf "%.1f", b / 1048576}')

out=$BENCH_DIR/build-out
cleanup() { rm -rf "$out"; }
trap cleanup EXIT

loadavg() { cut -d' ' -f1 /proc/loadavg; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; sleep 0.5; }
median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# run NAME -- COMMAND...: $out is emptied before each repetition; the
# command writes its image into $out; size = every byte left in $out.
names=() ; declare -A secs cpu rss size load
run() {
  local name=$1
  shift 2
  local walls=() cpus=() rsss=() loads=()
  for ((r = 1; r <= REPS; r++)); do
    rm -rf "$out"
    mkdir -p "$out"
    drop_caches
    loads+=("$(loadavg)")
    echo "  $name, run $r/$REPS (load $(loadavg)) ..." >&2
    # %e wall, %U+%S CPU, %M max RSS (KiB) of the tool; sync(1) with file
    # arguments fsyncs exactly the outputs.
    /usr/bin/time -o "$BENCH_DIR/time.txt" -f '%e %U %S %M' \
      sh -c '"$@" >>"'"$log"'" 2>&1 && find "'"$out"'" -type f -exec sync {} +' sh "$@" ||
      { echo "$name failed; see $log" >&2; tail -5 "$log" >&2; exit 1; }
    read -r w u s m <"$BENCH_DIR/time.txt"
    walls+=("$w"); cpus+=("$(awk -v u="$u" -v s="$s" 'BEGIN {print u + s}')"); rsss+=("$m")
  done
  names+=("$name")
  secs[$name]=$(printf '%s\n' "${walls[@]}" | median)
  cpu[$name]=$(printf '%s\n' "${cpus[@]}" | median)
  rss[$name]=$(printf '%s\n' "${rsss[@]}" | median)
  load[$name]=$(printf '%s\n' "${loads[@]}" | sort -g | tail -1)
  size[$name]=$(du -sb --apparent-size "$out" | cut -f1)
  # all runs of the configuration, for the record
  echo "$name: wall ${walls[*]} s; cpu ${cpus[*]} s; load ${loads[*]}" >>"$BENCH_DIR/bench-build.runs"
}

: >"$BENCH_DIR/bench-build.runs"
echo "tree: $tree_desc"
echo "      $tree: $tree_entries entries, $tree_files regular files, $tree_mb MiB of file data"
echo "cpus: $(nproc); load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $REPS runs each"
pkgver() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo "?"; }
echo "versions: nydus-image $("$nydus_image" --version 2>&1 | head -1 | awk '{print $NF}'), squashfs-tools $(pkgver squashfs-tools), erofs-utils $(pkgver erofs-utils)"

sq_base="mksquashfs zstd (level 15, default)"
run "nydus-image v6 zstd" -- "$nydus_image" create "$tree" --bootstrap "$out/bootstrap" --blob-dir "$out" \
  --fs-version 6 --compressor zstd --digester blake3 --chunk-size 0x100000 --log-level warn
run "nydus-image v6 lz4_block" -- "$nydus_image" create "$tree" --bootstrap "$out/bootstrap" --blob-dir "$out" \
  --fs-version 6 --compressor lz4_block --digester blake3 --chunk-size 0x100000 --log-level warn
run "nydus-image v6 none" -- "$nydus_image" create "$tree" --bootstrap "$out/bootstrap" --blob-dir "$out" \
  --fs-version 6 --compressor none --digester blake3 --chunk-size 0x100000 --log-level warn
run "$sq_base" -- mksquashfs "$tree" "$out/image.sqfs" -comp zstd -noappend -no-progress -quiet
run "mksquashfs zstd level 3" -- mksquashfs "$tree" "$out/image.sqfs" -comp zstd -Xcompression-level 3 \
  -noappend -no-progress -quiet
run "mkfs.erofs (uncompressed)" -- mkfs.erofs --quiet "$out/image.erofs" "$tree"
if mkfs.erofs --help 2>&1 | grep -q lz4hc; then
  run "mkfs.erofs -zlz4hc" -- mkfs.erofs --quiet -zlz4hc "$out/image.erofs" "$tree"
fi

echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-36s %8s %8s %9s %8s %10s %7s %9s %7s %5s\n' tool seconds MiB/s vs_sqfs cpu_s "size_MiB" "%tree" vs_sqfs rss_MiB load
base_t=${secs[$sq_base]}
base_s=${size[$sq_base]}
for n in "${names[@]}"; do
  awk -v n="$n" -v t="${secs[$n]}" -v c="${cpu[$n]}" -v s="${size[$n]}" -v m="${rss[$n]}" -v l="${load[$n]}" \
    -v b="$tree_bytes" -v bt="$base_t" -v bs="$base_s" 'BEGIN {
      printf "%-36s %8.2f %8.1f %8.2fx %8.1f %10.1f %6.1f%% %8.2fx %7.0f %5s\n",
        n, t, b / 1048576 / t, bt / t, c, s / 1048576, 100 * s / b, s / bs, m / 1024, l }'
done
echo
echo "seconds: median wall time incl. fsync of the outputs; MiB/s: tree file bytes / seconds;"
echo "vs_sqfs (speed): mksquashfs-zstd seconds / this seconds (>1 = faster than mksquashfs);"
echo "size: every output byte (nydus: bootstrap + blob); vs_sqfs (size): this size / mksquashfs-zstd size;"
echo "rss: max RSS of the tool; load: highest 1-min load average at the start of a run (it includes"
echo "the previous run's own load: mksquashfs alone keeps both cores busy)."
echo "every run: $BENCH_DIR/bench-build.runs"
