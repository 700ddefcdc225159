#!/usr/bin/env bash
# The sanitizer build and what runs on it (README: "Fuzzing").
#
#   fuzz/run.sh fuzz        build, then run each fuzz target for $FUZZ_SECONDS (default 60)
#   fuzz/run.sh asan-test   build, then the CAR and golden test modules once
#   fuzz/run.sh fuzz asan-test   both, on one build (CI)
#
# The compiled core is built with clang, AddressSanitizer, UBSan (every check but
# pointer-overflow, which Cython's generated argument parsing trips by computing NULL + 0)
# and libFuzzer's coverage instrumentation, into its own venv (.fuzz-venv) and
# build directory (build/asan), never touching the normal build.  Python runs with
# atheris's ASan+libFuzzer runtime preloaded.  Any sanitizer report, crash or timeout
# fails the run (non-zero exit); a crashing input is left in .fuzz/ as crash-*: add it
# to fuzz/regressions/ and a test, then fix it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- fuzz
seconds=${FUZZ_SECONDS:-60}

if ! command -v clang >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang
fi
if [ ! -x .fuzz-venv/bin/python ]; then
  python3 -m venv .fuzz-venv
fi
. .fuzz-venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q 'atheris==3.0.0'

san="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize=pointer-overflow -fno-sanitize-recover=undefined"
CC=clang CFLAGS="-g -O1 -fno-omit-frame-pointer $san" LDFLAGS="$san" \
  python -m pip install -q '.[test]' -Cbuild-dir=build/asan -Ccmake.build-type=RelWithDebInfo

runtime=$(python -c 'import atheris, os; print(os.path.join(atheris.path(), "asan_with_fuzzer.so"))')
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:symbolize=1
export PYTHONMALLOC=malloc            # every Python allocation under ASan's eyes
export SKYEXPORT_SANITIZED=1          # tests: peak-RSS bounds do not apply under ASan

for mode in "$@"; do
case "$mode" in
  fuzz)
    rm -rf .fuzz && mkdir -p .fuzz
    LD_PRELOAD="$runtime" python fuzz/seeds.py .fuzz/seeds
    for target in car json; do
      mkdir -p ".fuzz/work-$target"
      echo "fuzz: $target for ${seconds}s"
      LD_PRELOAD="$runtime" python "fuzz/fuzz_$target.py" -max_total_time="$seconds" \
        -timeout=20 -rss_limit_mb=3072 -max_len=262144 -print_final_stats=1 \
        -artifact_prefix=".fuzz/crash-$target-" ".fuzz/work-$target" ".fuzz/seeds/$target" \
        2>".fuzz/$target.log" || { tail -60 ".fuzz/$target.log"; exit 1; }
      grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" ".fuzz/$target.log" || true
    done
    ;;
  asan-test)
    LD_PRELOAD="$runtime" python -m pytest -q -n 2 --dist loadfile -p no:cacheprovider \
      tests/unit/test_car_decoding.py tests/unit/test_car_block_index.py tests/unit/test_car_import.py \
      tests/unit/test_car_info.py tests/cli/test_export_car.py tests/system/test_car_hostile.py \
      tests/system/test_fuzz_regressions.py tests/system/test_golden.py \
      tests/system/test_fetch_check.py
    ;;
  *)
    echo "usage: fuzz/run.sh fuzz|asan-test ..." >&2
    exit 2
    ;;
esac
done
