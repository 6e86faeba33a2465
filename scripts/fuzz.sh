#!/usr/bin/env bash
# libFuzzer over every parser of untrusted input (tests/fuzz/, docs/reliability.md "Fuzzing").
#   scripts/fuzz.sh [SECONDS] [TARGET…]   configure and build build-fuzz/ (clang, BLOODCV_BUILD_FUZZERS), then
#                              fuzz each target (default: all) for SECONDS (default 60), one after the other,
#                              from its seed corpus
#   scripts/fuzz.sh --runs N [TARGET…]    the same, each target for N executions instead
#   scripts/fuzz.sh --short    build, then run each target over its seeds and tests/fuzz/regressions/, and
#                              on for 2,000 inputs in all, mutated with a fixed random seed (scripts/test.sh)
# New inputs are kept in build-fuzz/corpus/<target>/ (so a later run goes on from them), crashing ones in
# build-fuzz/crashes/<target>/. Exits non-zero when any target crashed, leaked, hung or ran out of memory.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(fuzz_voc fuzz_yolo fuzz_coco fuzz_report fuzz_model_metadata fuzz_pipeline_config fuzz_image fuzz_tiler_merge)
usage() { echo "usage: scripts/fuzz.sh [SECONDS | --runs N] [TARGET…] | --short (targets: ${TARGETS[*]})" >&2; exit 2; }
MODE=fuzz LIMIT=(-max_total_time=60) LIMIT_TEXT="60 s"
case "${1:-}" in
  --short) MODE=short; shift ;;
  --runs)
    [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || usage
    LIMIT=(-runs="$2") LIMIT_TEXT="$2 executions"; shift 2 ;;
  "" | fuzz_*) ;;
  *[!0-9]* | 0) usage ;;
  *) LIMIT=(-max_total_time="$1") LIMIT_TEXT="$1 s"; shift ;;
esac
if (($#)); then
  for target in "$@"; do [[ " ${TARGETS[*]} " == *" $target "* ]] || usage; done
  TARGETS=("$@")
fi
JOBS=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

cmake -S . -B build-fuzz -DBLOODCV_BUILD_FUZZERS=ON -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-fuzz -j "$JOBS" >/dev/null

# -timeout: one input running longer is a hang; -rss_limit_mb: libFuzzer's default, said here.
COMMON=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
failed=()
summary=()
for target in "${TARGETS[@]}"; do
  binary=build-fuzz/tests/fuzz/$target
  seeds=tests/fuzz/corpus/$target
  regressions=tests/fuzz/regressions/$target
  log=build-fuzz/logs/$target.log
  mkdir -p build-fuzz/logs "build-fuzz/crashes/$target"
  if [ "$MODE" = short ]; then
    # The first directory receives the new inputs: a scratch one, so the seeds stay as they are.
    rm -rf "build-fuzz/short-corpus/$target" && mkdir -p "build-fuzz/short-corpus/$target"
    inputs=("build-fuzz/short-corpus/$target" "$seeds")
    [ -d "$regressions" ] && inputs+=("$regressions")
    if "$binary" "${COMMON[@]}" -seed=15 -runs=2000 -artifact_prefix="build-fuzz/crashes/$target/" "${inputs[@]}" >"$log" 2>&1; then
      echo "fuzz: $target ok ($(find "${inputs[@]:1}" -type f | wc -l) seeds and regressions, 2000 runs)"
    else
      echo "fuzz: $target FAILED (log: $log)"; tail -n 40 "$log"; failed+=("$target")
    fi
    continue
  fi
  mkdir -p "build-fuzz/corpus/$target"
  echo "== $target: $LIMIT_TEXT"
  # The first corpus directory receives the new inputs; the seeds are only read.
  if "$binary" "${COMMON[@]}" "${LIMIT[@]}" -artifact_prefix="build-fuzz/crashes/$target/" \
      "build-fuzz/corpus/$target" "$seeds" >"$log" 2>&1; then
    status=ok
  else
    status=FAILED; failed+=("$target"); tail -n 40 "$log"
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  summary+=("$(printf '%-22s %-6s %12s executions %8s exec/s' "$target" "$status" "${runs:-?}" "${rate:-?}")")
done

if [ "$MODE" = fuzz ]; then
  echo "== summary ($LIMIT_TEXT per target)"
  printf '%s\n' "${summary[@]}"
fi
if ((${#failed[@]})); then
  echo "fuzz: failed: ${failed[*]} (inputs in build-fuzz/crashes/, logs in build-fuzz/logs/)" >&2
  exit 1
fi
