#!/usr/bin/env bash
# The main job on the bundled sample: set-up (idempotent), then tile a BCCD smear image and merge the
# detections that seams duplicate, writing an overlay and a JSON report to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
build/bloodcv tile examples/data/bccd_BloodImage_00001.jpg --boxes examples/data/bccd_BloodImage_00001.json \
  --tile 320x240 --overlap 0.15 --out out "$@"
