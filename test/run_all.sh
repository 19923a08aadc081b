#!/usr/bin/env bash
# Runs every test suite: installs missing Debian packages, then
#   1. release build (gcc, -O2): Catch2 unit tests, mount tests (pytest, real
#      FUSE mounts; needs root and /dev/fuse)
#   2. ASan+UBSan build (gcc -O1; built in the background during 1): the unit
#      tests and the mount tests again, except those marked `once`
#      (test/mount/conftest.py: they run no daemon or builder code, or only
#      time it)
#   3. every libFuzzer target (clang ASan+UBSan build-fuzz, also built during
#      1) for FUZZ_SECONDS (default 30), FUZZ_JOBS (default 2) at a time
# prints each stage's wall time, and one closing line "total: N passed, N failed".
# Environment: FUZZ_SECONDS, FUZZ_JOBS; MOUNT_WORKERS (pytest-xdist workers
# for the release and ASan mount tests, default 2; 0 = no xdist).
set -uo pipefail
cd "$(dirname "$0")/.."
export NYDUS_FIXTURES=${NYDUS_FIXTURES:-$(cd .. && pwd)/shared/fixtures/nydus}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
export FUZZ_JOBS=${FUZZ_JOBS:-2}
MOUNT_WORKERS=${MOUNT_WORKERS:-2}
# Debian's python3 (with python3-pytest), not whatever python3 comes first in PATH.
PYTHON=${PYTHON:-/usr/bin/python3}

passed=0
failed=0
stage_times=()
# Runs one stage, prints and records its wall time.
stage() {  # name, command...
  local name=$1; shift
  echo "=== $name"
  local start=$SECONDS rc=0
  "$@" || rc=$?
  local took=$((SECONDS - start))
  stage_times+=("$(printf '%-28s %4d s%s' "$name" "$took" "$( ((rc)) && echo "  (failed)")")")
  echo "--- $name: ${took} s"
  return $rc
}

stage "install deps" test/install-deps.sh || exit 1

count_meson() {  # build dir
  local log=$1/meson-logs/testlog.json
  local ok fail
  ok=$(grep -c '"result": "OK"' "$log" 2>/dev/null || true)
  fail=$(grep -Ec '"result": "(FAIL|TIMEOUT|ERROR)"' "$log" 2>/dev/null || true)
  passed=$((passed + ok)); failed=$((failed + fail))
}
count_pytest() {  # junit xml
  local xml=$1
  if [[ ! -f $xml ]]; then failed=$((failed + 1)); return; fi
  read -r tests failures errors skipped < <("$PYTHON" - "$xml" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) for s in suites)
e = sum(int(s.get("errors", 0)) for s in suites)
k = sum(int(s.get("skipped", 0)) for s in suites)
print(t, f, e, k)
PY
)
  passed=$((passed + tests - failures - errors - skipped)); failed=$((failed + failures + errors))
}

build() {  # build dir, meson setup args...
  local dir=$1; shift
  if [[ ! -f $dir/build.ninja ]]; then
    meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { tail -40 "$dir.setup.log"; return 1; }
  fi
  ninja -C "$dir" >"$dir.ninja.log" 2>&1 || { tail -40 "$dir.ninja.log"; return 1; }
}
unit_tests() {  # build dir
  meson test -C "$1" --suite unit --print-errorlogs --num-processes 2
  count_meson "$1"
}
mount_tests() {  # build dir, pytest args...
  local dir=$1; shift
  rm -f "$dir/pytest.xml"
  # A short --basetemp: tests put unix sockets under tmp_path (at most 107
  # bytes), and xdist adds a popen-gwN level to pytest's default
  # /tmp/pytest-of-root/pytest-N/.
  local tmp
  tmp=$(mktemp -d /tmp/ntXXXX)
  NYDUSD="$PWD/$dir/daemon/nydusd" NYDUS_IMAGE="$PWD/$dir/builder/nydus-image" \
    "$PYTHON" -m pytest -q -p no:cacheprovider --durations=15 --junitxml="$dir/pytest.xml" --basetemp="$tmp" \
    "$@" test/mount
  local rc=$?
  rm -rf "$tmp"
  count_pytest "$dir/pytest.xml"
  return $rc
}

# 1. Release: gcc -O2 without debug info (what the demo and users run; debug
# info only slows the build here).
# 2. ASan+UBSan (gcc) for the unit and mount tests, and the libFuzzer targets
# (clang, ASan+UBSan, -fsanitize=fuzzer-no-link; only the fuzz targets and
# what they link), both -O1 -g1: sanitizer reports with file:line, at a
# fraction of -O2 -g's compile time. (One clang build for both would save a
# build, but clang 14 cannot compile the unit tests: lambdas capturing
# structured bindings.) Both are built at nice 19 while the release tests
# run (they mostly wait on mounts, daemons and sockets) and take the CPU
# time those leave.
sanitize=(-Db_sanitize=address,undefined -Db_lundef=false -Doptimization=1 -Ddebug=false
          -Dcpp_args=-g1 -Dc_args=-g1)
fuzz=(-Db_sanitize=address,undefined -Db_lundef=false -Dfuzz=true -Doptimization=1 -Ddebug=false
      "-Dcpp_args=-g1 -fsanitize=fuzzer-no-link" "-Dc_args=-g1 -fsanitize=fuzzer-no-link")
build_sanitized() {
  local rc=0
  build build-asan "${sanitize[@]}" || rc=1
  if [[ ! -f build-fuzz/build.ninja ]]; then
    CC=clang CXX=clang++ meson setup build-fuzz "${fuzz[@]}" >build-fuzz.setup.log 2>&1 \
      || { tail -40 build-fuzz.setup.log; return 1; }
  fi
  FUZZ_BUILD=build-fuzz test/run_fuzz.sh --build-only >build-fuzz.ninja.log 2>&1 || { tail -40 build-fuzz.ninja.log; rc=1; }
  return $rc
}
xdist=()
if ((MOUNT_WORKERS > 0)) && "$PYTHON" -c 'import xdist' 2>/dev/null; then
  xdist=(-n "$MOUNT_WORKERS")
fi
bg_pid=
if stage "release: build" build build -Ddebug=false; then
  bg_start=$SECONDS
  (renice -n 19 -p $BASHPID >/dev/null; build_sanitized) &
  bg_pid=$!
  echo "(asan+ubsan and fuzz builds started in the background, nice 19)"
  stage "release: unit tests" unit_tests build
  stage "release: mount tests" mount_tests build "${xdist[@]}"
else
  failed=$((failed + 1))
fi

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
if [[ -n $bg_pid ]]; then
  stage "asan+ubsan, fuzz: builds (rest)" wait "$bg_pid"
  sanitized_ok=$?
  echo "(asan+ubsan and fuzz builds took $((SECONDS - bg_start)) s from their start)"
else
  stage "asan+ubsan, fuzz: builds" build_sanitized
  sanitized_ok=$?
fi
if [[ -f build-asan/daemon/nydusd ]]; then
  stage "asan+ubsan: unit tests" unit_tests build-asan
  stage "asan+ubsan: mount tests" mount_tests build-asan -m "not once" "${xdist[@]}"
fi
if ((sanitized_ok != 0)); then
  failed=$((failed + 1))
fi
if FUZZ_BUILD=build-fuzz stage "fuzz (${FUZZ_SECONDS}s per target)" test/run_fuzz.sh "$FUZZ_SECONDS"; then
  passed=$((passed + 1))
else
  failed=$((failed + 1))
fi

echo "=== stage times"
printf '  %s\n' "${stage_times[@]}"
echo "total: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
