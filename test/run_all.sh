#!/usr/bin/env bash
# Runs every test suite: installs missing Debian packages, builds, then
#   1. Catch2 unit tests (meson test --suite unit)
#   2. mount tests (pytest, real FUSE mounts; needs root and /dev/fuse)
#   3. both again on an ASan+UBSan build
#   4. libFuzzer targets for FUZZ_SECONDS each (default 60)
# and prints one closing line "total: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export NYDUS_FIXTURES=${NYDUS_FIXTURES:-$(cd .. && pwd)/shared/fixtures/nydus}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
# Debian's python3 (with python3-pytest), not whatever python3 comes first in PATH.
PYTHON=${PYTHON:-/usr/bin/python3}

test/install-deps.sh || exit 1

passed=0
failed=0
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

run_suites() {  # build dir, label, extra meson setup args...
  local build=$1 label=$2; shift 2
  echo "=== [$label] build ($build)"
  if [[ ! -f $build/build.ninja ]]; then
    meson setup "$build" "$@" >/dev/null || { failed=$((failed + 1)); return; }
  fi
  if ! ninja -C "$build" >"$build.ninja.log" 2>&1; then
    tail -40 "$build.ninja.log"; failed=$((failed + 1)); return
  fi
  echo "=== [$label] unit tests"
  meson test -C "$build" --suite unit --print-errorlogs --num-processes 2
  count_meson "$build"
  echo "=== [$label] mount tests"
  NYDUSD="$PWD/$build/daemon/nydusd" NYDUS_IMAGE="$PWD/$build/builder/nydus-image" "$PYTHON" -m pytest -q -p no:cacheprovider test/mount \
    --junitxml="$build/pytest.xml"
  count_pytest "$build/pytest.xml"
}

run_suites build release
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  run_suites build-asan asan+ubsan -Db_sanitize=address,undefined -Db_lundef=false

echo "=== fuzz (${FUZZ_SECONDS}s per target)"
if test/run_fuzz.sh "$FUZZ_SECONDS"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi

echo "total: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
