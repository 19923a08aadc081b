#!/usr/bin/env bash
# The main job, end to end on a fresh Debian 12 machine:
#   install missing packages -> build nydusd -> mount real nydus images made by
#   upstream nydus-image (RAFS v6 and v5) from a local blob directory -> show
#   what was mounted, list it, read every file and check it against digests
#   known from upstream -> stop the daemon (its "metrics" summary of what it
#   fetched) -> check the mount is gone.
# Needs root (FUSE mount with allow_other); re-runs itself with sudo.
# Per-image logs stay in build/demo/<image>/nydusd.log after the run. Mounts
# and daemons left by an earlier run (killed, or interrupted with Ctrl-C) are
# cleaned up first. Exit status 0 only if every check passed.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || exec sudo -E "$0" "$@"
root=$PWD

fixtures=${NYDUS_FIXTURES:-$(cd .. && pwd)/shared/fixtures/nydus}
[[ -f $fixtures/bootstrap/rafs-v6-2.2.boot ]] || {
  echo "demo: no fixtures at $fixtures (set NYDUS_FIXTURES)" >&2; exit 1; }

test/install-deps.sh
[[ -f build/build.ninja ]] || meson setup build >/dev/null
echo "== building build/daemon/nydusd"
if ! ninja -C build daemon/nydusd >build/demo-ninja.log 2>&1; then
  tail -40 build/demo-ninja.log; exit 1
fi
nydusd=$root/build/daemon/nydusd

state=$root/build/demo
mkdir -p "$state"
exec 9>"$state/lock"
flock -n 9 || { echo "demo: another examples/demo.sh is running in this checkout" >&2; exit 1; }

# Stops the daemon of one image directory (recorded in nydusd.pid, checked to
# be our nydusd serving that mountpoint) and removes its mount, if any.
stop_image() {  # image dir
  local dir=$1 p
  if [[ -f $dir/nydusd.pid ]]; then
    p=$(<"$dir/nydusd.pid")
    if [[ -r /proc/$p/cmdline ]] && tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF -- "--mountpoint $dir/mnt "; then
      kill -TERM "$p" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
      kill -KILL "$p" 2>/dev/null || true
    fi
    rm -f "$dir/nydusd.pid"
  fi
  if mountpoint -q "$dir/mnt" 2>/dev/null || ! stat "$dir/mnt" >/dev/null 2>&1; then
    # A mount whose daemon died answers ENOTCONN, which `mountpoint` and
    # `stat` report as an error: detach it either way.
    umount -l "$dir/mnt" 2>/dev/null || true
  fi
}

# Leftovers from an earlier run.
for dir in "$state"/*/; do
  [[ -d $dir ]] || continue
  dir=${dir%/}
  if [[ -f $dir/nydusd.pid ]] || grep -qF " $dir/mnt " /proc/self/mountinfo; then
    echo "demo: cleaning up after an earlier run in $dir"
  fi
  stop_image "$dir"
done

current=
on_exit() {
  local rc=$?
  [[ -n $current ]] && stop_image "$current"
  exit "$rc"
}
trap on_exit EXIT
trap 'echo; echo "demo: interrupted"; exit 130' INT TERM HUP

wait_mounted() {  # dir, pid
  for _ in $(seq 400); do
    mountpoint -q "$1/mnt" && return 0
    kill -0 "$2" 2>/dev/null || { echo "nydusd exited before mounting:"; cat "$1/nydusd.log"; return 1; }
    sleep 0.05
  done
  echo "nydusd did not mount within 20 s:"; cat "$1/nydusd.log"; return 1
}

failures=0
fail() { echo "   FAIL: $*"; failures=$((failures + 1)); }

# Mounts one image, shows it, runs a check, unmounts.
demo() {  # name, bootstrap, blob dir, title, check function
  local name=$1 boot=$2 blobsrc=$3 title=$4 check=$5
  local dir=$state/$name
  echo
  echo "== $title"
  current=$dir
  stop_image "$dir"
  rm -rf "$dir"
  mkdir -p "$dir/mnt" "$dir/blobs"
  # --localfs-dir keeps the blob cache (<id>.blob.data, .chunk_map) next to
  # the blobs, as upstream does: link the fixture blobs into a scratch
  # directory so the shared fixtures stay untouched and each run starts cold.
  ln -s "$blobsrc"/* "$dir/blobs/"
  local cmd=("$nydusd" fuse --bootstrap "$boot" --localfs-dir "$dir/blobs" --mountpoint "$dir/mnt"
             --log-file "$dir/nydusd.log")
  echo "\$ ${cmd[*]#$root/}"
  "${cmd[@]}" 9>&- &   # the daemon must not hold the run's lock
  local pid=$!
  echo "$pid" >"$dir/nydusd.pid"
  wait_mounted "$dir" "$pid"

  echo "-- mounted"
  findmnt -n -o SOURCE,FSTYPE,OPTIONS "$dir/mnt" | sed 's/^/   /'
  grep -E "bootstrap .*RAFS v" "$dir/nydusd.log" | sed 's/^.*bootstrap /   bootstrap /'
  for blob in "$blobsrc"/*; do
    printf '   in the blob directory: %s (%s bytes)\n' "$(basename "$blob")" "$(stat -L -c %s "$blob")"
  done

  echo "-- listing (first 15 of $(cd "$dir/mnt" && find . | wc -l) entries)"
  # Not `find | head`: under pipefail, head closing the pipe early kills
  # find with SIGPIPE and the script with it.
  local listing
  listing=$(cd "$dir/mnt" && find . -printf '%M %8s  %p%l\n' | LC_ALL=C sort -k3)
  sed -n '1,15p' <<<"$listing" | sed 's/^/   /'

  echo "-- contents, read through FUSE (chunks fetched from the blob on first read)"
  "$check" "$dir/mnt" "$boot"

  echo "-- stopping nydusd (SIGTERM): its summary of what it fetched"
  kill -TERM "$pid"
  local rc=0
  wait "$pid" || rc=$?
  rm -f "$dir/nydusd.pid"
  grep -E "metrics " "$dir/nydusd.log" | sed 's/^.*metrics [^:]*: /   /' || fail "no metrics lines in the log"
  [[ $rc -eq 0 ]] || fail "nydusd exited $rc"
  if grep -qF " $dir/mnt " /proc/self/mountinfo; then
    fail "mount still present"
  else
    echo "-- unmounted cleanly (nydusd exit $rc); log: ${dir#$root/}/nydusd.log"
  fi
  current=
}

# RAFS v6: the two files' sha256 as given by the fixtures' README.
check_v6() {  # mountpoint
  (cd "$1" && sha256sum -c --strict) <<'EOF' | sed 's/^/   /' || fail "sha256 mismatch"
1810eba864521293bb0d6b55a3c82318d4d89f294ed761c456d9088a17de0c69  lib.rs
e629ab260ff0dc02a24648a3e0dd8c13a5daf233d535c330e3201925f5eeff96  sync_io.rs
EOF
  local n
  n=$(cd "$1" && find . -type f | wc -l)
  [[ $n -eq 2 ]] || fail "expected 2 regular files, found $n"
}

# RAFS v5: the tree (names, types, symlink targets) and every regular file's
# md5, against the .result file upstream recorded next to the bootstrap
# (`tree -J` JSON followed by md5sum lines).
check_v5() {  # mountpoint, bootstrap
  /usr/bin/python3 - "$1" "$2.result" <<'PY' || fail "v5 tree or contents differ from the .result file"
import hashlib, json, os, stat, sys
mnt, result = sys.argv[1], open(sys.argv[2]).read()
end = result.index("\n]\n") + 3
expected, md5 = {}, {}
def visit(node, prefix):
    for child in node.get("contents", []):
        path = prefix + "/" + child["name"]
        expected[path] = (child["type"], child.get("target"))
        if child["type"] == "directory":
            visit(child, path)
visit(json.loads(result[:end])[0], "")
for line in result[end:].splitlines():
    if line.strip():
        digest, path = line.split(None, 1)
        md5[path.strip()] = digest
actual = {}
for dirpath, dirs, files in os.walk(mnt):
    for name in dirs + files:
        full = os.path.join(dirpath, name)
        st = os.lstat(full)
        kind = ("directory" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode)
                else "file" if stat.S_ISREG(st.st_mode) else "other")
        actual["/" + os.path.relpath(full, mnt)] = (kind, os.readlink(full) if kind == "link" else None)
bad = 0
for path in sorted(set(expected) | set(actual)):
    if expected.get(path) != actual.get(path):
        print(f"   tree differs at {path}: expected {expected.get(path)}, mounted {actual.get(path)}")
        bad += 1
files = sorted(p for p, (kind, _) in actual.items() if kind == "file")
ok = 0
for path in files:
    with open(mnt + path, "rb") as f:
        got = hashlib.md5(f.read()).hexdigest()
    if got == md5.get(path):
        ok += 1
    else:
        print(f"   {path}: md5 {got}, expected {md5.get(path)}")
        bad += 1
kinds = [k for k, _ in actual.values()]
print(f"   tree: {kinds.count('directory')} directories, {kinds.count('file')} files, "
      f"{kinds.count('link')} symlinks: {'same as' if not bad else 'DIFFERENT from'} {os.path.basename(sys.argv[2])}")
print(f"   md5 of {ok} of {len(files)} files equal to upstream's ({len(md5)} recorded)")
sys.exit(1 if bad or not files or ok != len(md5) else 0)
PY
}

demo v6 "$fixtures/bootstrap/rafs-v6-2.2.boot" "$fixtures/blobs" \
  "RAFS v6 image (zstd chunks, blake3) made by upstream nydus-image 2.2" check_v6
demo v5 "$fixtures/repeatable/sha256-nocompress-repeatable" "$fixtures/repeatable/blobs" \
  "RAFS v5 image (sha256, hardlinks, symlinks, holes) made by upstream nydus-image" check_v5

echo
if ((failures)); then
  echo "demo: $failures check(s) FAILED"
  exit 1
fi
echo "demo: both images mounted, read, verified and unmounted cleanly"
