#!/usr/bin/env bash
# Every test: set-up (idempotent), the installed-package consumer examples, the notebook, C++ (CTest), the
# fuzz targets over their seeds and regressions and a short fixed-seed run (scripts/fuzz.sh --short), Python
# (pytest).
#   scripts/test.sh --sanitize   instead: the library, CLI and C++ tests built with AddressSanitizer (with
#                                LeakSanitizer) and UndefinedBehaviorSanitizer in build-sanitize/, then CTest
#                                and an analysis by the CLI there (docs/reliability.md "Sanitizers")
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  --sanitize) SANITIZE=1 ;;
  "") SANITIZE=0 ;;
  *) echo "usage: scripts/test.sh [--sanitize]" >&2; exit 2 ;;
esac
scripts/setup.sh
export MPLBACKEND=Agg
JOBS=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

if ((SANITIZE)); then
  echo "== sanitizers: build-sanitize/ (ASan + LSan, UBSan)"
  SANITIZE_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
  # Exported for the build too: catch_discover_tests runs the test program to list its tests. No leak
  # needs suppressing (LibTorch, OpenMP and OpenCV included), so none is.
  export ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS="$SANITIZE_FLAGS" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DBLOODCV_BUILD_PYTHON=OFF -DBLOODCV_BUILD_BENCHMARKS=OFF -DPython_EXECUTABLE="$PWD/.venv/bin/python" >/dev/null
  cmake --build build-sanitize -j "$JOBS"
  .venv/bin/python tests/models/make_test_models.py build-sanitize/test_models
  ctest --test-dir build-sanitize --output-on-failure -j "$JOBS"
  # The whole chain with the shipped models (LibTorch inference, tiling, merging, classification, reports),
  # and its reports read back by eval.
  rm -rf build-sanitize/analyze
  BCCD=../shared/datasets/bccd/BCCD
  build-sanitize/bloodcv analyze $BCCD/JPEGImages/BloodImage_00001.jpg --out build-sanitize/analyze
  build-sanitize/bloodcv eval --gt $BCCD/Annotations/BloodImage_00001.xml --pred build-sanitize/analyze --out build-sanitize/eval >/dev/null
  echo "sanitizers: no report"
  exit 0
fi

echo "== test models (tests/models/make_test_models.py)"
.venv/bin/python tests/models/make_test_models.py build/test_models

echo "== consumer examples: find_package(bloodcv) against build/install"
cmake -S examples/consumer -B build/consumer -DCMAKE_PREFIX_PATH="$PWD/build/install" >/dev/null
cmake --build build/consumer -j "$JOBS" >/dev/null
build/consumer/consumer
build/consumer/analyze models/cell_detector.pt models/wbc_classifier.pt examples/data/bccd_BloodImage_00001.jpg
build/consumer/assign

echo "== notebook: examples/analyze_sample.ipynb"
.venv/bin/python -m nbconvert --to notebook --execute --output-dir build/notebooks examples/analyze_sample.ipynb

echo "== C++ tests"
ctest --test-dir build --output-on-failure -j "$(nproc)"

echo "== fuzz targets: seeds, regressions, 2000 runs each (build-fuzz/, clang)"
scripts/fuzz.sh --short

echo "== Python tests"
.venv/bin/python -m pytest -q tests/python
