#!/usr/bin/env bash
# The main job, end to end on a fresh Debian 12 machine:
#   install missing packages -> build -> mount real nydus images made by
#   upstream nydus-image (RAFS v6 and v5) from a local blob directory ->
#   list and read them -> unmount.
# Needs root (FUSE mount with allow_other); re-runs itself with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || exec sudo -E "$0" "$@"

fixtures=${NYDUS_FIXTURES:-$(cd .. && pwd)/shared/fixtures/nydus}
test/install-deps.sh
[[ -f build/build.ninja ]] || meson setup build >/dev/null
ninja -C build daemon/nydusd >/dev/null
nydusd=build/daemon/nydusd

work=$(mktemp -d)
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
  [[ -n ${pid:-} ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  mountpoint -q "$mnt" && umount -l "$mnt" || true
  rm -rf "$work"
}
trap cleanup EXIT

demo_count=0

wait_mounted() {
  for _ in $(seq 200); do
    mountpoint -q "$mnt" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "nydusd exited:"; cat "$work/nydusd.log"; return 1; }
    sleep 0.05
  done
  echo "nydusd did not mount"; return 1
}

demo() {  # bootstrap, blob dir, title
  echo "== $3"
  # --localfs-dir keeps the blob cache (<id>.blob.data, .chunk_map) next to
  # the blobs, as upstream does: link the fixture blobs into a scratch
  # directory so the shared fixtures stay untouched.
  local blobs=$work/blobs-$((++demo_count))
  mkdir -p "$blobs"
  ln -s "$2"/* "$blobs"/
  echo "   $nydusd fuse --bootstrap $1 --localfs-dir $blobs --mountpoint $mnt"
  "$nydusd" fuse --bootstrap "$1" --localfs-dir "$blobs" --mountpoint "$mnt" --log-file "$work/nydusd.log" &
  pid=$!
  wait_mounted
  grep -E "mounted|RAFS v" "$work/nydusd.log" | sed 's/^/   log: /'
  echo "-- tree (first 25 entries)"
  (cd "$mnt" && find . -printf '%M %5s %u:%g %p%l\n' | head -25)
  echo "-- sha256 of every regular file (read through FUSE, chunk by chunk from the blob)"
  (cd "$mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum | head -30)
  kill -TERM "$pid"; wait "$pid"; pid=
  mountpoint -q "$mnt" && { echo "mount still present"; exit 1; }
  echo "-- unmounted cleanly"
}

demo "$fixtures/bootstrap/rafs-v6-2.2.boot" "$fixtures/blobs" "RAFS v6 image (zstd chunks, blake3) by upstream nydus-image 2.2"
demo "$fixtures/repeatable/sha256-nocompress-repeatable" "$fixtures/repeatable/blobs" "RAFS v5 image (sha256, hardlinks, symlinks, holes)"
