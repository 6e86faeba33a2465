#!/usr/bin/env bash
# The main job on the bundled sample: set-up (idempotent), then find, type and count the cells of a BCCD
# smear with the default models, writing the overlay, JSON, CSV and COCO reports to out/ (or to
# $BLOODCV_DEMO_OUT). Further arguments go to `bloodcv analyze`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only bloodcv's own output reaches the user: set-up's goes to a log, shown if set-up fails.
mkdir -p build
[ -x build/bloodcv ] || echo "demo: first run: installing packages and building (a few minutes; log: build/setup.log)"
scripts/setup.sh >build/setup.log 2>&1 || { cat build/setup.log >&2; echo "demo: set-up failed (log: build/setup.log)" >&2; exit 1; }
build/bloodcv analyze examples/data/bccd_BloodImage_00001.jpg --out "${BLOODCV_DEMO_OUT:-out}" "$@"
