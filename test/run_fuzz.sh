#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (+ASan/UBSan) and runs each for a
# bounded time, seeded with the upstream fixtures. Usage:
#   test/run_fuzz.sh [seconds-per-target]   (default 60)
#   test/run_fuzz.sh --build-only           (set up and build, run nothing)
# Environment:
#   FUZZ_BUILD  build directory (default build-fuzz; set up here if missing)
#   FUZZ_JOBS   targets run at the same time (default 2)
# Every target the build defines (test/meson.build's fuzz_targets) is run.
# Exit status is non-zero if any target finds a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
jobs=${FUZZ_JOBS:-2}
fixtures=${NYDUS_FIXTURES:-$(cd .. && pwd)/shared/fixtures/nydus}
build=${FUZZ_BUILD:-build-fuzz}

if [[ ! -f $build/build.ninja ]]; then
  CC=clang CXX=clang++ meson setup "$build" -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false \
    -Dcpp_args=-fsanitize=fuzzer-no-link -Dc_args=-fsanitize=fuzzer-no-link >/dev/null
fi
mapfile -t targets < <(ninja -C "$build" -t targets all | sed -n 's,^test/\(fuzz_[a-z0-9_]*\): .*LINKER.*,\1,p' | sort -u)
if ((${#targets[@]} == 0)); then
  echo "no fuzz targets in $build (configure it with -Dfuzz=true and clang)"; exit 1
fi
ninja -C "$build" "${targets[@]/#/test/}" >/dev/null
[[ $seconds == --build-only ]] && exit 0

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
for target in "${targets[@]}"; do mkdir -p "$corpus/${target#fuzz_}"; done
mkdir -p "$corpus"/{bootstrap,blob_meta,config,www_authenticate,chunk_map}
cp "$fixtures"/bootstrap/rafs-v6-2.2.boot "$fixtures"/repeatable/sha256-nocompress-repeatable "$corpus/bootstrap/"
cp "$fixtures"/blobs/* "$fixtures"/zran/*.blob.meta "$fixtures"/toc/* "$corpus/blob_meta/"
cp examples/*.json "$corpus/config/" 2>/dev/null || true
printf '{"device":{"backend":{"type":"localfs","config":{"dir":"/x"}}},"mode":"direct"}' >"$corpus/config/v1.json"
printf 'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"' \
  >"$corpus/www_authenticate/bearer"
printf 'Basic realm="harbor"' >"$corpus/www_authenticate/basic"
# chunk count 17 (0x0010 + 1), then a valid 4096-byte header and 3 bitmap bytes.
{ printf '\x00\x10'; printf 'PAMB\x01\x00\x00\x00PAMC\x00\x00\x00\x00'; head -c 4080 /dev/zero; printf '\xff\x00\x80'; } \
  >"$corpus/chunk_map/seventeen"
printf 'version = 2\n[backend]\ntype = "localfs"\n[backend.localfs]\ndir = "/x"\n' >"$corpus/config/v2.toml"

echo "${#targets[@]} targets, ${seconds}s each, $jobs at a time: ${targets[*]}"
run_one() {  # target
  local name=${1#fuzz_}
  if UBSAN_OPTIONS=halt_on_error=1 "$build/test/$1" -max_total_time="$seconds" -rss_limit_mb=4096 \
      -max_len=262144 -print_final_stats=0 "$corpus/$name" >"$corpus/$name.log" 2>&1; then
    echo "$1: ok, $(grep -E "^#[0-9]+.*(DONE|pulse)" "$corpus/$name.log" | tail -1 || true)"
  else
    echo "$1 FAILED:"; tail -50 "$corpus/$name.log"; return 1
  fi
}

status=0
running=0
for target in "${targets[@]}"; do
  if ((running >= jobs)); then
    wait -n || status=1
    running=$((running - 1))
  fi
  run_one "$target" &
  running=$((running + 1))
done
while ((running > 0)); do
  wait -n || status=1
  running=$((running - 1))
done
exit $status
