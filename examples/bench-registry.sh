#!/usr/bin/env bash
# Lazy pulling from a registry over a slow link against pulling and
# unpacking the whole layer (issue 4's benchmark, "Must show").
#
#   sudo examples/bench-registry.sh
#   sudo RATE=1gbit RUNS=5 examples/bench-registry.sh
#
# The image: a Debian 12 root filesystem with python3 (debootstrap
# --variant=minbase --include=python3 bookworm, cached in $BENCH_DIR/rootfs;
# ROOTFS=DIR uses another tree, e.g. /work/bench/rootfs), built by this
# project's `nydus-image create --fs-version 6 --compressor zstd` (1 MiB
# chunks), and the same tree as one OCI layer, `tar --numeric-owner -cz`
# (gzip -6, what docker pushes). Both, and the bootstrap as nydusify pushes
# it (a tar.gz of image/image.boot), are blobs of one repository of Debian's
# docker-registry, served over plain HTTP from a network namespace:
#
#   root namespace 10.213.47.1 (nbr0) <--veth--> (nbr1) 10.213.47.2:5000 registry
#
# The registry's side of the veth shapes what it sends: a tbf of rate $RATE
# and, when RTT is set, a netem delay of $RTT (the round trip) in front of it
# (the kernel needs sch_netem; without RTT the veth's round trip is ~50 us).
# Requests go the other way unshaped. nydusd and curl run in the root
# namespace. The bytes over the link are the veth's rx+tx byte counters
# (headers and requests included).
#
# Each run, with the page cache dropped (sync; echo 3 > drop_caches) first:
#   (1) pull + unpack: curl the layer | tar -xz into an empty directory,
#       then `chroot DIR python3 -V`; timed from the start to python's output.
#   (2) nydus cold: an empty blob cache work_dir. Timed from the exec of
#       nydusd (config v1, registry backend, blobcache, amplify_io, no
#       prefetch) to python's output from `chroot MNT python3 -V`; mounting
#       is inside the timed region. Also shown: the same with the bootstrap
#       layer pulled over the link first (curl | tar -xz), as
#       nydus-snapshotter does before it starts nydusd.
#   (3) nydus warm: nydusd restarted on the work_dir that (2) filled; same
#       measurement (the bootstrap is local). Link bytes should be ~0.
#   For scale, not a target: `chroot ROOTFS python3 -V` on the local tree
#   with the page cache dropped, the floor no image format can beat here.
# Dropping the page cache also drops nydusd's own binary and libraries, so
# each nydus run pays for loading them from disk, as a first start would.
# After each nydus run nydusd gets SIGTERM and its exit lines give the bytes
# read through FUSE, chunk reads, cache hits and backend requests; the
# registry's access log gives the blob GETs it served.
#
# Targets (issue 4): cold <= 0.10x pull+unpack (the Dragonfly guide measured
# 0.18x for upstream nydus), warm <= 0.02x, and link bytes <= 1.5x the bytes
# the command read through FUSE. The table shows medians of $RUNS runs.
#
# Environment: RATE (tbf rate, default 100mbit), RTT (netem delay, e.g. 10ms;
# default 0: none), RUNS (3), BENCH_DIR (/var/tmp/nydus-bench-registry: the
# rootfs, the layer tarball and the work files), ROOTFS (a tree to use
# instead of the debootstrap one), MIRROR (default: the Debian mirror of
# /etc/apt/sources.list*), AMPLIFY_IO (nydusd's amplify_io, 1048576),
# BUILD_DIR (build; configured as a release build if it does not exist),
# NYDUSD and NYDUS_IMAGE (other binaries to measure).
# Everything the script starts (registry, nydusd, mount, netns and veth) is
# removed on exit; a leftover of an interrupted run is removed at the start.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || exec sudo -E "$0" "$@"

BENCH_DIR=${BENCH_DIR:-/var/tmp/nydus-bench-registry}
RATE=${RATE:-100mbit}
RTT=${RTT:-0}
RUNS=${RUNS:-3}
AMPLIFY_IO=${AMPLIFY_IO:-1048576}
BUILD_DIR=${BUILD_DIR:-build}
ROOTFS=${ROOTFS:-}
script_start=$EPOCHREALTIME

NS=nydus-bench-reg
VETH_HOST=nbr0
VETH_REG=nbr1
HOST_IP=10.213.47.1
REG_IP=10.213.47.2
REG_PORT=5000
REPO=bench/debian

mkdir -p "$BENCH_DIR"
log=$BENCH_DIR/bench-registry.log
: >"$log"
work=$BENCH_DIR/work
mnt=$work/mnt

source examples/bench-rootfs.sh

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v curl >/dev/null || need+=(curl)
command -v tc >/dev/null || need+=(iproute2)
[[ -n $ROOTFS ]] || command -v debootstrap >/dev/null || need+=(debootstrap)
command -v meson >/dev/null || need+=(meson ninja-build)
if ((${#need[@]})); then
  apt-get install -y "${need[@]}" >>"$log" 2>&1 || { echo "could not install ${need[*]}; see $log" >&2; exit 1; }
fi

# --- leftovers and cleanup -------------------------------------------------
nydusd_pid=
reg_pid=
teardown_net() {
  if ip netns list 2>/dev/null | grep -qw "^$NS"; then
    local pids
    pids=$(ip netns pids "$NS" 2>/dev/null || true)  # only ours: the namespace is this script's
    if [[ -n $pids ]]; then
      kill -TERM $pids 2>/dev/null || true
      sleep 0.5
      kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$NS" 2>/dev/null || true
  fi
  ip link del "$VETH_HOST" 2>/dev/null || true
}
unmount() {
  # /proc/self/mounts too: a mount whose daemon died (ENOTCONN) fails mountpoint's stat
  if grep -qs " $mnt fuse" /proc/self/mounts || mountpoint -q "$mnt" 2>/dev/null; then
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  fi
}
cleanup() {
  set +e
  if [[ -n $nydusd_pid ]]; then kill -TERM "$nydusd_pid" 2>/dev/null; wait "$nydusd_pid" 2>/dev/null; fi
  unmount
  if [[ -n $reg_pid ]]; then kill -TERM "$reg_pid" 2>/dev/null; wait "$reg_pid" 2>/dev/null; fi
  teardown_net
  # keep the logs (nydusd's, the registry's) in $work; drop the bulk
  rm -rf "$work/unpack" "$work/registry/storage" "$work/cache" "$work/run" "$work/image"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
unmount
teardown_net

# --- binaries --------------------------------------------------------------
[[ -f $BUILD_DIR/build.ninja ]] || meson setup "$BUILD_DIR" --buildtype=release >>"$log"
ninja -C "$BUILD_DIR" builder/nydus-image daemon/nydusd >>"$log" ||
  { echo "build failed; see $log" >&2; exit 1; }
nydus_image=${NYDUS_IMAGE:-$PWD/$BUILD_DIR/builder/nydus-image}
nydusd=${NYDUSD:-$PWD/$BUILD_DIR/daemon/nydusd}

# --- the tree --------------------------------------------------------------
if [[ -n $ROOTFS ]]; then
  tree=$(cd "$ROOTFS" && pwd)
  tree_desc="$tree (ROOTFS)"
else
  tree=$BENCH_DIR/rootfs
  tree_desc="Debian 12 rootfs by debootstrap --variant=minbase --include=python3 bookworm"
  ensure_bench_rootfs
fi
chroot_python() {  # DIR: python3 -V in DIR with a clean environment; prints its output
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin chroot "$1" python3 -V 2>&1
}
python_version=$(chroot_python "$tree") || { echo "python3 -V fails in $tree: $python_version" >&2; exit 1; }

# The layer tarball, made once per tree.
layer=$BENCH_DIR/layer.tar.gz
if [[ ! -f $layer || $(cat "$layer.src" 2>/dev/null) != "$tree" ]]; then
  echo "making the OCI layer (tar | gzip -6) of $tree, once ..."
  rm -f "$layer" "$layer.src"
  tar -C "$tree" --numeric-owner -cf - . | gzip -6 >"$layer.tmp"
  mv "$layer.tmp" "$layer"
  echo "$tree" >"$layer.src"
fi

rm -rf "$work"
mkdir -p "$work" "$mnt"

# --- the nydus image, built now by the builder under test ---------------------
img=$work/image
mkdir -p "$img/blobs" "$img/layer/image"
t0=$EPOCHREALTIME
"$nydus_image" create --fs-version 6 --compressor zstd --bootstrap "$img/bootstrap" --blob-dir "$img/blobs" \
  --log-level warn "$tree" >>"$log" 2>&1 || { echo "nydus-image create failed; see $log" >&2; exit 1; }
build_secs=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')
blob=$(find "$img/blobs" -maxdepth 1 -type f -regextype egrep -regex '.*/[0-9a-f]{64}' | head -1)
[[ -n $blob ]] || { echo "no blob in $img/blobs" >&2; exit 1; }
blob_id=$(basename "$blob")
cp "$img/bootstrap" "$img/layer/image/image.boot"
tar -C "$img/layer" --numeric-owner --owner=0 --group=0 -czf "$img/bootstrap.tar.gz" image/image.boot

# --- the registry, in its namespace behind a shaped veth ----------------------
reg=$work/registry
place_blob() {  # FILE HEX: docker-registry's filesystem layout, any digest (the v6 blob id is not a sha256 of the file)
  local root=$reg/storage/docker/registry/v2
  mkdir -p "$root/blobs/sha256/${2:0:2}/$2" "$root/repositories/$REPO/_layers/sha256/$2"
  ln -f "$1" "$root/blobs/sha256/${2:0:2}/$2/data" 2>/dev/null || cp "$1" "$root/blobs/sha256/${2:0:2}/$2/data"
  printf 'sha256:%s' "$2" >"$root/repositories/$REPO/_layers/sha256/$2/link"
}
layer_digest=$(sha256sum "$layer" | cut -d' ' -f1)
boot_digest=$(sha256sum "$img/bootstrap.tar.gz" | cut -d' ' -f1)
place_blob "$layer" "$layer_digest"
place_blob "$img/bootstrap.tar.gz" "$boot_digest"
place_blob "$blob" "$blob_id"
cat >"$reg/config.yml" <<EOF
{"version": "0.1",
 "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": false}},
 "storage": {"filesystem": {"rootdirectory": "$reg/storage"}, "maintenance": {"uploadpurging": {"enabled": false}}},
 "http": {"addr": "$REG_IP:$REG_PORT", "secret": "nydus-bench"}}
EOF

ip netns add "$NS"
ip link add "$VETH_HOST" type veth peer name "$VETH_REG"
ip link set "$VETH_REG" netns "$NS"
ip addr add "$HOST_IP/30" dev "$VETH_HOST"
ip link set "$VETH_HOST" up
ip netns exec "$NS" ip addr add "$REG_IP/30" dev "$VETH_REG"
ip netns exec "$NS" ip link set "$VETH_REG" up
ip netns exec "$NS" ip link set lo up
# tbf burst: 4 ms at the rate, at least 64 KiB (a GSO packet)
rate_bytes=$(awk -v r="$RATE" 'BEGIN {
  n = r + 0; u = tolower(r); sub(/^[0-9.]+/, "", u)
  m = (u == "gbit") ? 1e9 : (u == "mbit") ? 1e6 : (u == "kbit") ? 1e3 : (u == "bit" || u == "") ? 1 : -1
  if (m < 0) exit 1
  printf "%d", n * m / 8 }') || { echo "RATE must be like 100mbit, 1gbit, 500kbit" >&2; exit 2; }
burst=$(awk -v b="$rate_bytes" 'BEGIN {v = b * 0.004; if (v < 65536) v = 65536; printf "%d", v}')
if [[ $RTT == 0 || $RTT == 0ms ]]; then
  ip netns exec "$NS" tc qdisc add dev "$VETH_REG" root handle 1: tbf rate "$RATE" burst "$burst" latency 100ms
else
  ip netns exec "$NS" tc qdisc add dev "$VETH_REG" root handle 1: netem delay "$RTT" limit 100000 ||
    { echo "RTT=$RTT needs tc netem (sch_netem), which this kernel lacks; run with RTT=0" >&2; exit 2; }
  ip netns exec "$NS" tc qdisc add dev "$VETH_REG" parent 1:1 handle 10: tbf rate "$RATE" burst "$burst" latency 100ms
fi
ip netns exec "$NS" docker-registry serve "$reg/config.yml" >"$reg/registry.log" 2>&1 &
reg_pid=$!
reg_url=http://$REG_IP:$REG_PORT
for _ in $(seq 200); do
  curl -sf -o /dev/null "$reg_url/v2/" && break
  kill -0 "$reg_pid" 2>/dev/null || { echo "docker-registry exited:" >&2; tail "$reg/registry.log" >&2; exit 1; }
  sleep 0.05
done
curl -sf -o /dev/null "$reg_url/v2/" || { echo "docker-registry does not answer on $reg_url" >&2; exit 1; }
curl -sf -o /dev/null -r 0-0 "$reg_url/v2/$REPO/blobs/sha256:$blob_id" ||
  { echo "the registry does not serve the nydus blob" >&2; exit 1; }

# --- helpers -------------------------------------------------------------------
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; sleep 0.5; }
median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
link_bytes() {
  echo $(($(<"/sys/class/net/$VETH_HOST/statistics/rx_bytes") + $(<"/sys/class/net/$VETH_HOST/statistics/tx_bytes")))
}
since() { awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN {printf "%.4f", b - a}'; }
# blob GETs the registry served (its access log; a line is written just after the response)
blob_gets() { grep -c "\"GET /v2/$REPO/blobs/sha256:$1 " "$reg/registry.log" || true; }
settle_registry_log() {
  local n
  n=$(stat -c %s "$reg/registry.log")
  while sleep 0.2; [[ $(stat -c %s "$reg/registry.log") != "$n" ]]; do n=$(stat -c %s "$reg/registry.log"); done
}

cache_dir=$work/cache
cat >"$work/nydusd.json" <<EOF
{
  "device": {
    "backend": {"type": "registry", "config": {"scheme": "http", "host": "$REG_IP:$REG_PORT", "repo": "$REPO",
                "timeout": 60, "connect_timeout": 10, "retry_limit": 2}},
    "cache": {"type": "blobcache", "config": {"work_dir": "$cache_dir"}}
  },
  "mode": "direct",
  "digest_validate": false,
  "iostats_files": false,
  "enable_xattr": true,
  "amplify_io": $AMPLIFY_IO,
  "fs_prefetch": {"enable": false}
}
EOF

# start_nydusd BOOTSTRAP LOG: returns once the mount is there
start_nydusd() {
  "$nydusd" fuse --bootstrap "$1" --config "$work/nydusd.json" --mountpoint "$mnt" --log-file "$2" \
    --log-level info &
  nydusd_pid=$!
  local i
  for ((i = 0; i < 6000; i++)); do
    mountpoint -q "$mnt" && return 0
    kill -0 "$nydusd_pid" 2>/dev/null || { echo "nydusd exited before mounting:" >&2; tail "$2" >&2; exit 1; }
    sleep 0.005
  done
  echo "nydusd did not mount in 30 s:" >&2
  tail "$2" >&2
  exit 1
}
stop_nydusd() {  # LOG
  kill -TERM "$nydusd_pid"
  local rc=0
  wait "$nydusd_pid" || rc=$?
  nydusd_pid=
  ((rc == 0)) || { echo "nydusd exited with $rc:" >&2; tail "$1" >&2; exit 1; }
  ! mountpoint -q "$mnt" || { echo "the mount is still there after nydusd exited" >&2; exit 1; }
}
check_python() {  # OUTPUT LABEL
  [[ $1 == "$python_version" ]] || { echo "$2: python3 -V printed '$1', expected '$python_version'" >&2; exit 1; }
}
# metric LOG FIELD: one number from nydusd's exit lines
metric() {
  awk -v f="$2" '
    {sub(/metrics [^ ]+: /, "metrics: ")}  # "metrics <mountpoint>: ..."
    /metrics: [0-9]+ bytes read through FUSE/ {for (i = 1; i <= NF; i++) if ($i == "metrics:") v["fuse"] = $(i + 1)}
    /metrics: [0-9]+ chunk reads/ {
      line = $0; sub(/.*metrics: /, "", line); gsub(/[(),]/, " ", line); n = split(line, w, " ")
      for (i = 1; i <= n; i++) {
        if (w[i + 1] == "chunk" && w[i + 2] == "reads") v["chunk_reads"] = w[i]
        if (w[i + 1] == "cache" && w[i + 2] == "hits") v["cache_hits"] = w[i]
        if (w[i + 1] == "backend" && w[i + 2] == "requests") { v["backend_requests"] = w[i]; v["backend_chunks"] = w[i + 4] }
        if (w[i + 1] == "MiB" && w[i + 2] == "raw") v["backend_mib"] = w[i]
      }
    }
    /metrics: source / {
      line = $0; sub(/.*metrics: source /, "", line); gsub(/[:,]/, " ", line); n = split(line, w, " ")
      v["src_" w[1] "_requests"] = w[2]; v["src_" w[1] "_errors"] = w[4]; v["src_" w[1] "_mib"] = w[6]
    }
    END {print (f in v) ? v[f] : "?"}' "$1"
}

declare -A R  # R[key] = space-separated values, one per run
add() { R[$1]="${R[$1]:-} $2"; }
med() { printf '%s\n' ${R[$1]} | median; }
loads=()

layer_mib=$(awk -v b="$(stat -c %s "$layer")" 'BEGIN {printf "%.1f", b / 1048576}')
blob_mib=$(awk -v b="$(stat -c %s "$blob")" 'BEGIN {printf "%.1f", b / 1048576}')
boot_kib=$(awk -v b="$(stat -c %s "$img/bootstrap")" 'BEGIN {printf "%.0f", b / 1024}')
tree_mib=$(du -sm --apparent-size "$tree" | cut -f1)
echo "tree: $tree_desc"
echo "      $tree: $(find "$tree" | wc -l) entries, $tree_mib MiB; $python_version"
echo "layer: $layer_mib MiB tar.gz; nydus: blob $blob_mib MiB (v6 zstd, built in $build_secs s), bootstrap $boot_kib KiB"
echo "link: $RATE (tbf burst $burst), added RTT ${RTT} (netem), registry $reg_url in netns $NS"
echo "nydusd: $("$nydusd" --version 2>&1 | awk '/Version/ {print $NF}'), amplify_io $AMPLIFY_IO; cpus: $(nproc); load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $RUNS runs"

for ((r = 1; r <= RUNS; r++)); do
  loads+=("$(cut -d' ' -f1 /proc/loadavg)")
  # (1) pull + unpack
  echo "  run $r/$RUNS: pull + unpack (load $(cut -d' ' -f1 /proc/loadavg)) ..." >&2
  rm -rf "$work/unpack"
  mkdir -p "$work/unpack"
  drop_caches
  b0=$(link_bytes)
  t0=$EPOCHREALTIME
  curl -sSf "$reg_url/v2/$REPO/blobs/sha256:$layer_digest" | tar -xz --numeric-owner -C "$work/unpack"
  tp=$EPOCHREALTIME
  out=$(chroot_python "$work/unpack") || true
  t1=$EPOCHREALTIME
  check_python "$out" "pull + unpack"
  add pull_secs "$(since "$t0" "$t1")"
  add pull_dl_secs "$(since "$t0" "$tp")"
  add pull_bytes $(($(link_bytes) - b0))
  rm -rf "$work/unpack"

  # for scale: python3 -V from the local tree, cold page cache
  drop_caches
  t0=$EPOCHREALTIME
  out=$(chroot_python "$tree") || true
  add local_secs "$(since "$t0")"
  check_python "$out" "local tree"

  # (2) nydus cold: empty cache; the bootstrap layer pulled first (timed separately)
  echo "  run $r/$RUNS: nydus cold ..." >&2
  rm -rf "$cache_dir" "$work/run"
  mkdir -p "$cache_dir" "$work/run"
  drop_caches
  settle_registry_log
  gets0=$(blob_gets "$blob_id")
  b0=$(link_bytes)
  t0=$EPOCHREALTIME
  curl -sSf "$reg_url/v2/$REPO/blobs/sha256:$boot_digest" | tar -xz -C "$work/run"
  tb=$EPOCHREALTIME
  bb=$(link_bytes)
  cold_log=$work/nydusd-cold-$r.log
  start_nydusd "$work/run/image/image.boot" "$cold_log"
  tm=$EPOCHREALTIME
  out=$(chroot_python "$mnt") || true
  t1=$EPOCHREALTIME
  check_python "$out" "nydus cold"
  stop_nydusd "$cold_log"
  settle_registry_log
  add cold_secs "$(since "$tb" "$t1")"
  add cold_mount_secs "$(since "$tb" "$tm")"
  add cold_boot_secs "$(since "$t0" "$t1")"
  add boot_pull_secs "$(since "$t0" "$tb")"
  add cold_bytes $(($(link_bytes) - bb))
  add boot_bytes $((bb - b0))
  add cold_fuse "$(metric "$cold_log" fuse)"
  add cold_gets $(($(blob_gets "$blob_id") - gets0))
  for k in chunk_reads cache_hits backend_requests backend_chunks backend_mib src_origin_requests src_origin_errors \
    src_origin_mib; do add "cold_$k" "$(metric "$cold_log" "$k")"; done

  # (3) nydus warm: the same work_dir, nydusd restarted
  echo "  run $r/$RUNS: nydus warm ..." >&2
  drop_caches
  settle_registry_log
  gets0=$(blob_gets "$blob_id")
  b0=$(link_bytes)
  warm_log=$work/nydusd-warm-$r.log
  t0=$EPOCHREALTIME
  start_nydusd "$work/run/image/image.boot" "$warm_log"
  tm=$EPOCHREALTIME
  out=$(chroot_python "$mnt") || true
  t1=$EPOCHREALTIME
  check_python "$out" "nydus warm"
  stop_nydusd "$warm_log"
  settle_registry_log
  add warm_secs "$(since "$t0" "$t1")"
  add warm_mount_secs "$(since "$t0" "$tm")"
  add warm_bytes $(($(link_bytes) - b0))
  add warm_fuse "$(metric "$warm_log" fuse)"
  add warm_gets $(($(blob_gets "$blob_id") - gets0))
  for k in chunk_reads cache_hits backend_requests backend_chunks; do add "warm_$k" "$(metric "$warm_log" "$k")"; done
done

# --- the table -------------------------------------------------------------------
pull=$(med pull_secs)
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); highest 1-min load at a run start: $(printf '%s\n' "${loads[@]}" | sort -g | tail -1)"
printf '%-50s %9s %10s %10s %10s %10s\n' "measure (median of $RUNS)" seconds "vs pull" "link MiB" "FUSE MiB" "link/FUSE"
row() {  # label seconds link_bytes fuse_bytes
  awk -v l="$1" -v s="$2" -v p="$pull" -v lb="$3" -v fb="$4" 'BEGIN {
    ls = (lb == "") ? "-" : sprintf("%.2f", lb / 1048576)
    fs = (fb == "") ? "-" : sprintf("%.2f", fb / 1048576)
    rs = (lb == "" || fb == "" || fb == 0) ? "-" : sprintf("%.2fx", lb / fb)
    printf "%-50s %9.3f %9.3fx %10s %10s %10s\n", l, s, s / p, ls, fs, rs }'
}
row "(1) pull + unpack (curl | tar -xz), python3 -V" "$pull" "$(med pull_bytes)" ""
row "    of which download + unpack" "$(med pull_dl_secs)" "" ""
row "(2) nydus cold: nydusd exec -> python3 -V output" "$(med cold_secs)" "$(med cold_bytes)" "$(med cold_fuse)"
row "    of which exec -> mount" "$(med cold_mount_secs)" "" ""
row "    bootstrap layer pull (curl | tar -xz)" "$(med boot_pull_secs)" "$(med boot_bytes)" ""
row "    cold incl. the bootstrap layer pull" "$(med cold_boot_secs)" "" ""
row "(3) nydus warm cache: exec -> python3 -V output" "$(med warm_secs)" "$(med warm_bytes)" "$(med warm_fuse)"
row "    of which exec -> mount" "$(med warm_mount_secs)" "" ""
row "for scale: python3 -V on the local tree, cold" "$(med local_secs)" "" ""
echo
printf '%-50s %10s %10s %s\n' target value target met
target() {  # label value limit
  awk -v l="$1" -v v="$2" -v t="$3" 'BEGIN {printf "%-50s %9.4fx %4s %4.2fx %s\n", l, v, "<=", t, (v <= t) ? "yes" : "NO"}'
}
target "cold / (pull + unpack)" "$(awk -v a="$(med cold_secs)" -v b="$pull" 'BEGIN {print a / b}')" 0.10
target "  (cold incl. bootstrap pull) / (pull + unpack)" \
  "$(awk -v a="$(med cold_boot_secs)" -v b="$pull" 'BEGIN {print a / b}')" 0.10
target "warm / (pull + unpack)" "$(awk -v a="$(med warm_secs)" -v b="$pull" 'BEGIN {print a / b}')" 0.02
target "cold link bytes / bytes read through FUSE" \
  "$(awk -v a="$(med cold_bytes)" -v b="$(med cold_fuse)" 'BEGIN {print a / b}')" 1.5
echo
echo "nydusd counters (every run; cold | warm):"
for k in chunk_reads cache_hits backend_requests backend_chunks; do
  printf '  %-22s %s |%s\n' "$k" "${R[cold_$k]}" "${R[warm_$k]}"
done
printf '  %-22s %s\n' "backend MiB raw" "${R[cold_backend_mib]}"
printf '  %-22s %s (errors:%s; MiB:%s)\n' "origin requests" "${R[cold_src_origin_requests]}" \
  "${R[cold_src_origin_errors]}" "${R[cold_src_origin_mib]}"
printf '  %-22s %s |%s\n' "registry blob GETs" "${R[cold_gets]}" "${R[warm_gets]}"
echo "every run (seconds; bytes):"
for k in local_secs pull_secs pull_bytes cold_secs cold_mount_secs boot_pull_secs cold_bytes cold_fuse warm_secs warm_bytes \
  warm_fuse; do
  printf '  %-18s %s\n' "$k" "${R[$k]}"
done
echo "logs: $work/nydusd-{cold,warm}-N.log, $work/registry/registry.log; build and setup: $log"
echo "total time: $(since "$script_start") s"
