#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (+ASan/UBSan) and runs each for a
# bounded time, seeded with the upstream fixtures. Usage:
#   test/run_fuzz.sh [seconds-per-target]   (default 60)
# Exit status is non-zero if any target finds a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
fixtures=${NYDUS_FIXTURES:-$(cd .. && pwd)/shared/fixtures/nydus}
build=build-fuzz

if [[ ! -f $build/build.ninja ]]; then
  CC=clang CXX=clang++ meson setup "$build" -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false \
    -Dcpp_args=-fsanitize=fuzzer-no-link -Dc_args=-fsanitize=fuzzer-no-link >/dev/null
fi
ninja -C "$build" test/fuzz_bootstrap test/fuzz_blob_meta test/fuzz_config test/fuzz_www_authenticate \
  test/fuzz_chunk_map test/fuzz_saved_state >/dev/null

corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
mkdir -p "$corpus"/{bootstrap,blob_meta,config,www_authenticate,chunk_map,saved_state}
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

status=0
for target in bootstrap blob_meta config www_authenticate chunk_map saved_state; do
  echo "fuzz_$target: ${seconds}s"
  if ! UBSAN_OPTIONS=halt_on_error=1 "$build/test/fuzz_$target" -max_total_time="$seconds" -rss_limit_mb=4096 \
      -max_len=262144 -print_final_stats=0 "$corpus/$target" >"$corpus/$target.log" 2>&1; then
    echo "fuzz_$target FAILED:"; tail -50 "$corpus/$target.log"; status=1
  else
    grep -E "^#[0-9]+.*(DONE|pulse)" "$corpus/$target.log" | tail -1 || true
  fi
done
exit $status
