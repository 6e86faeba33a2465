#!/usr/bin/env bash
# Every test: set-up (idempotent), the installed-package consumer example, C++ (CTest), Python (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== consumer example: find_package(bloodcv) against build/install"
cmake -S examples/consumer -B build/consumer -DCMAKE_PREFIX_PATH="$PWD/build/install" >/dev/null
cmake --build build/consumer -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" >/dev/null
build/consumer/consumer

echo "== C++ tests"
ctest --test-dir build --output-on-failure -j "$(nproc)"

echo "== Python tests"
.venv/bin/python -m pytest -q tests/python
