#!/usr/bin/env bash
# Every test: set-up (idempotent), the installed-package consumer examples, the notebook, C++ (CTest),
# Python (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export MPLBACKEND=Agg

echo "== test models (tests/models/make_test_models.py)"
.venv/bin/python tests/models/make_test_models.py build/test_models

echo "== consumer examples: find_package(bloodcv) against build/install"
cmake -S examples/consumer -B build/consumer -DCMAKE_PREFIX_PATH="$PWD/build/install" >/dev/null
cmake --build build/consumer -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" >/dev/null
build/consumer/consumer
build/consumer/analyze models/cell_detector.pt models/wbc_classifier.pt examples/data/bccd_BloodImage_00001.jpg
build/consumer/assign

echo "== notebook: examples/analyze_sample.ipynb"
.venv/bin/python -m nbconvert --to notebook --execute --output-dir build/notebooks examples/analyze_sample.ipynb

echo "== C++ tests"
ctest --test-dir build --output-on-failure -j "$(nproc)"

echo "== Python tests"
.venv/bin/python -m pytest -q tests/python
