#!/usr/bin/env bash
# nydusd against the kernel's erofs driver on the same uncompressed RAFS v6
# image (issue 3, "Benchmarks in examples/").
#
#   sudo examples/bench-read.sh [TREE]
#
# One image, `nydus-image create --fs-version 6 --compressor none`, mounted
# twice at once: by the kernel (`mount -t erofs -o loop,ro,device=<loop of
# the blob> BOOTSTRAP`) and by our nydusd (`--localfs-dir`). Measured:
#   (a) cold sequential read of every regular file, page cache dropped
#       before each run (target: nydusd >= 0.8x the kernel's MiB/s);
#   (b) re-read of every file from the page cache (target >= 0.95x);
#   (c) cold metadata walk, `find MNT -printf '%s %m\n'` (readdir + lstat of
#       every entry) after dropping caches (target: <= 1.5x the kernel's time);
#   (d) nydusd VmHWM / VmRSS after walking and reading every file of a
#       generated image of 100,000 small files (target <= 64 MiB).
# Files are read by a small C reader (openat + 1 MiB read() calls, one file
# after another) so that the tool itself costs little, in two ways: walking
# the tree itself (readdir, then each regular file in readdir order, as tar,
# cp -r or `find | xargs cat` do), and opening the paths of a list made
# beforehand (one path lookup per file, as a program that knows its paths).
# The re-read (b) follows its cold read (a) at once. Kernel and nydusd runs
# alternate; each part runs $REPS times (default 3); the table shows medians
# and the ratio nydusd / kernel. Only one image of 2 GiB is read: no part of
# its blob is in the page cache at the start of a cold run on either side.
#
# TREE defaults to the Debian rootfs that examples/bench-build.sh makes
# (debootstrap, cached in $BENCH_DIR/rootfs); run that first, or pass a tree.
# Environment: BENCH_DIR (default /var/tmp/nydus-bench), REPS (3),
# BUILD_DIR (build-bench, a release build), NYDUSD (a nydusd binary to use
# instead of BUILD_DIR's), NYDUSD_THREADS (--thread-num; default: nydusd's).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || exec sudo -E "$0" "$@"

BENCH_DIR=${BENCH_DIR:-/var/tmp/nydus-bench}
REPS=${REPS:-3}
BUILD_DIR=${BUILD_DIR:-build-bench}
mkdir -p "$BENCH_DIR"
log=$BENCH_DIR/bench-read.log
: >"$log"

command -v cc >/dev/null || apt-get install -y gcc >>"$log" 2>&1
command -v meson >/dev/null || apt-get install -y meson ninja-build >>"$log" 2>&1
grep -qw erofs /proc/filesystems || modprobe erofs 2>/dev/null || true
grep -qw erofs /proc/filesystems || { echo "this kernel has no erofs driver" >&2; exit 1; }

[[ -f $BUILD_DIR/build.ninja ]] || meson setup "$BUILD_DIR" --buildtype=release >>"$log"
ninja -C "$BUILD_DIR" builder/nydus-image daemon/nydusd >>"$log"
nydus_image=$PWD/$BUILD_DIR/builder/nydus-image
nydusd=${NYDUSD:-$PWD/$BUILD_DIR/daemon/nydusd}  # NYDUSD: another nydusd to measure

if [[ $# -gt 0 ]]; then
  tree=$(cd "$1" && pwd)
elif [[ -f $BENCH_DIR/rootfs.done ]]; then
  tree=$BENCH_DIR/rootfs
elif [[ -f $BENCH_DIR/usr-subset.done ]]; then
  tree=$BENCH_DIR/usr-subset
else
  echo "no tree: run examples/bench-build.sh first (it makes one) or pass a directory" >&2
  exit 2
fi

work=$BENCH_DIR/read
kmnt=$work/kernel
nmnt=$work/nydusd
mkdir -p "$kmnt" "$nmnt"
pid=
loopdev=
cleanup() {
  if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; fi
  for m in "$kmnt" "$nmnt"; do mountpoint -q "$m" && umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  [[ -n $loopdev ]] && losetup -d "$loopdev" 2>/dev/null || true
  rm -rf "$work/img" "$work/img100k"
}
trap cleanup EXIT

loadavg() { cut -d' ' -f1 /proc/loadavg; }
# sync, drop, and let the writeback/reclaim that follows settle
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; sleep 0.5; }
median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
now() { date +%s.%N; }

# --- the reader -----------------------------------------------------------
cat >"$work/readall.c" <<'EOF'
// readall ROOT [LIST]: reads every regular file start to end with 1 MiB
// read() calls, one file after another, and prints
// "<bytes> <files> <seconds>"; exit 1 if any file fails.
//   without LIST: walks the tree itself (opendir/readdir, openat of each
//     regular file in readdir order, like tar, cp -r or find | xargs cat);
//   with LIST: opens each NUL-separated path of LIST relative to ROOT (a
//     path lookup per file, like a program that opens known paths).
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static char* buf;
static const size_t kBuf = 1 << 20;
static unsigned long long bytes, files, errors;
static void read_file(int dir, const char* name) {
  int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) { if (errors++ < 5) perror(name); return; }
  ssize_t r;
  while ((r = read(fd, buf, kBuf)) > 0) bytes += r;
  if (r < 0 && errors++ < 5) perror(name);
  close(fd);
  files++;
}
static void walk(int dirfd) {  // takes ownership of dirfd
  DIR* d = fdopendir(dirfd);
  if (!d) { errors++; close(dirfd); return; }
  struct dirent* e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if (e->d_type == DT_REG) {
      read_file(dirfd, e->d_name);
    } else if (e->d_type == DT_DIR) {
      int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) { if (errors++ < 5) perror(e->d_name); continue; }
      walk(sub);
    } else if (e->d_type == DT_UNKNOWN) {
      errors++;  // both file systems fill d_type
    }
  }
  closedir(d);
}
int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) return 2;
  int root = open(argv[1], O_RDONLY | O_DIRECTORY);
  if (root < 0) { perror(argv[1]); return 2; }
  char* list = NULL;
  long n = 0;
  if (argc == 3) {
    FILE* f = fopen(argv[2], "rb");
    if (!f) { perror(argv[2]); return 2; }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    list = malloc(n + 1);
    if (fread(list, 1, n, f) != (size_t)n) return 2;
    list[n] = 0;
  }
  buf = aligned_alloc(4096, kBuf);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (list) {
    for (char* p = list; p < list + n; p += strlen(p) + 1)
      if (*p) read_file(root, p);
  } else {
    walk(root);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("%llu %llu %.6f\n", bytes, files,
         (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
  return errors ? 1 : 0;
}
EOF
cc -O2 -o "$work/readall" "$work/readall.c"

# --- mounts ---------------------------------------------------------------
# build_image SRC DIR [create flags...]: DIR/bootstrap + DIR/<blob id>
build_image() {
  local src=$1 dir=$2
  shift 2
  rm -rf "$dir"
  mkdir -p "$dir"
  "$nydus_image" create "$src" --bootstrap "$dir/bootstrap" --blob-dir "$dir" --fs-version 6 \
    --output-json "$dir/build.json" --log-level warn "$@" >>"$log" 2>&1
  blob=$(find "$dir" -maxdepth 1 -type f -regextype egrep -regex '.*/[0-9a-f]{64}' | head -1)
  [[ -n $blob ]] || { echo "no blob in $dir" >&2; exit 1; }
}
mount_nydusd() {  # DIR
  "$nydusd" fuse --bootstrap "$1/bootstrap" --localfs-dir "$1" --mountpoint "$nmnt" \
    ${NYDUSD_THREADS:+--thread-num "$NYDUSD_THREADS"} --log-file "$work/nydusd.log" &
  pid=$!
  for _ in $(seq 400); do
    mountpoint -q "$nmnt" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "nydusd exited:" >&2; tail "$work/nydusd.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "nydusd did not mount" >&2
  exit 1
}
umount_nydusd() {
  kill -TERM "$pid"
  wait "$pid" || true
  pid=
}
mount_kernel() {  # DIR
  loopdev=$(losetup -f --show -r "$blob" 2>>"$log")
  mount -t erofs -o "loop,ro,device=$loopdev" "$1/bootstrap" "$kmnt"
}
umount_kernel() {
  umount "$kmnt"
  losetup -d "$loopdev"
  loopdev=
}
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

echo "tree: $tree"
echo "cpus: $(nproc); load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $REPS runs of each part"
echo "building the uncompressed v6 image ..."
build_image "$tree" "$work/img" --compressor none --digester blake3
img_bytes=$(du -sb --apparent-size "$work/img" | cut -f1)
mount_kernel "$work/img"
mount_nydusd "$work/img"
(cd "$kmnt" && find . -type f -printf '%P\0') >"$work/files.list"
nfiles=$(tr -cd '\0' <"$work/files.list" | wc -c)
echo "image: $(awk -v b="$img_bytes" 'BEGIN {printf "%.1f MiB", b / 1048576}') (bootstrap + blob), $nfiles regular files"

declare -A R  # R[part,side] = space-separated values
add() { R[$1,$2]="${R[$1,$2]:-} $3"; }
expected_bytes=
# read_into PART-PREFIX SIDE MNT [LIST]: cold read then page-cache re-read
read_into() {
  local part=$1 side=$2 m=$3 bytes files secs
  shift 3
  drop_caches
  read -r bytes files secs < <("$work/readall" "$m" "$@" || echo "0 0 1")
  check_bytes "$bytes"
  add "cold-$part" "$side" "$(awk -v b="$bytes" -v s="$secs" 'BEGIN {print b / 1048576 / s}')"
  # at once: the page cache of an idle file may be reclaimed within a minute
  read -r bytes files secs < <("$work/readall" "$m" "$@" || echo "0 0 1")
  check_bytes "$bytes"
  add "warm-$part" "$side" "$(awk -v b="$bytes" -v s="$secs" 'BEGIN {print b / 1048576 / s}')"
}
check_bytes() {
  if [[ -z $expected_bytes ]]; then expected_bytes=$1
  elif [[ $1 != "$expected_bytes" ]]; then echo "read $1 bytes, expected $expected_bytes" >&2; exit 1; fi
}

loads=()
for ((r = 1; r <= REPS; r++)); do
  for side in kernel nydusd; do
    m=$kmnt; [[ $side == nydusd ]] && m=$nmnt
    echo "  run $r/$REPS, $side (load $(loadavg)) ..." >&2
    loads+=("$(loadavg)")
    # (c) cold metadata walk
    drop_caches
    t0=$(now); find "$m" -printf '%s %m\n' >/dev/null; t1=$(now)
    add meta "$side" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
    # (a) + (b), the reader walking the tree itself
    read_into walk "$side" "$m"
    # (a) + (b), the reader opening the paths of a list (one lookup per file)
    read_into list "$side" "$m" "$work/files.list"
  done
done
rss_big_hwm=$(status_kib "$pid" VmHWM)
rss_big_rss=$(status_kib "$pid" VmRSS)
umount_nydusd
umount_kernel

# --- (d) RSS with 100,000 files ---------------------------------------------
t100k=$BENCH_DIR/tree100k
if [[ ! -f $BENCH_DIR/tree100k.done ]]; then
  echo "generating $t100k (100 directories x 1000 files, 0..4 KiB each) ..."
  rm -rf "$t100k"
  python3 - "$t100k" <<'EOF'
import os, sys
root = sys.argv[1]
for d in range(100):
    dd = os.path.join(root, f"dir{d:03d}")
    os.makedirs(dd)
    for i in range(1000):
        n = d * 1000 + i
        size = (n * 2654435761) % 4097
        with open(os.path.join(dd, f"file-{n:06d}.txt"), "wb") as f:
            f.write((f"{n:06d} " * (size // 7 + 1)).encode()[:size])
EOF
  touch "$BENCH_DIR/tree100k.done"
fi
declare -A H S B
for comp in none zstd; do
  build_image "$t100k" "$work/img100k" --compressor "$comp"
  B[$comp]=$(stat -c %s "$work/img100k/bootstrap")
  mount_nydusd "$work/img100k"
  S[$comp,start]=$(status_kib "$pid" VmRSS)
  drop_caches
  find "$nmnt" -printf '%s %m\n' >/dev/null
  "$work/readall" "$nmnt" >/dev/null
  H[$comp]=$(status_kib "$pid" VmHWM)
  S[$comp]=$(status_kib "$pid" VmRSS)
  umount_nydusd
done

# --- the table ----------------------------------------------------------------
med() { printf '%s\n' ${R[$1,$2]} | median; }
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); highest 1-min load at a run start: $(printf '%s\n' "${loads[@]}" | sort -g | tail -1)"
printf '%-44s %12s %12s %8s %10s %s\n' measure kernel nydusd ratio target met
row() {  # label kernel nydusd higher|lower target-ratio
  awk -v l="$1" -v k="$2" -v n="$3" -v mode="$4" -v t="$5" 'BEGIN {
    r = n / k
    ok = (mode == "higher") ? (r >= t) : (r <= t)
    printf "%-44s %12.2f %12.2f %7.2fx %4s %4.2fx %s\n", l, k, n, r, (mode == "higher" ? ">=" : "<="), t, ok ? "yes" : "NO"
  }'
}
row "(a) cold read, walking the tree, MiB/s" "$(med cold-walk kernel)" "$(med cold-walk nydusd)" higher 0.8
row "(a) cold read, by path list, MiB/s" "$(med cold-list kernel)" "$(med cold-list nydusd)" higher 0.8
row "(b) page-cache re-read, walking, MiB/s" "$(med warm-walk kernel)" "$(med warm-walk nydusd)" higher 0.95
row "(b) page-cache re-read, by path list, MiB/s" "$(med warm-list kernel)" "$(med warm-list nydusd)" higher 0.95
row "(c) cold metadata walk, seconds (median)" "$(med meta kernel)" "$(med meta nydusd)" lower 1.5
for comp in none zstd; do
  awk -v c="$comp" -v h="${H[$comp]}" -v s="${S[$comp]}" -v s0="${S[$comp,start]}" -v b="${B[$comp]}" 'BEGIN {
    printf "%-44s %12s %12.1f %8s %10s %s\n", "(d) nydusd VmHWM, 100k files, " c ", MiB", "-", h / 1024, "",
      "<= 64 MiB", (h / 1024 <= 64 ? "yes" : "NO")
    printf "      VmRSS after %.1f MiB, at mount %.1f MiB; bootstrap %.1f MiB\n", s / 1024, s0 / 1024, b / 1048576 }'
done
awk -v h="$rss_big_hwm" -v s="$rss_big_rss" 'BEGIN {
  printf "    nydusd after (a)-(c) on the big image: VmHWM %.1f MiB, VmRSS %.1f MiB\n", h / 1024, s / 1024 }'
echo
echo "every run (kernel | nydusd):"
for part in cold-walk warm-walk cold-list warm-list meta; do echo "  $part: ${R[$part,kernel]} | ${R[$part,nydusd]}"; done
