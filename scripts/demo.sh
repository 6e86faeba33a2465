#!/usr/bin/env bash
# The main job on the bundled sample: set-up (idempotent), then find, type and count the cells of a BCCD
# smear with the default models, writing the overlay, JSON, CSV and COCO reports to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
build/bloodcv analyze examples/data/bccd_BloodImage_00001.jpg --out out "$@"
