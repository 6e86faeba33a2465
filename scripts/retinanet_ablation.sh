#!/usr/bin/env bash
# The RetinaNet-PAN-IoU ablation of the bone-marrow detection paper: one recipe
# (configs/retinanet_pan_iou.json), trained with each label assigner and without the PAN / IoU branch.
#
#   scripts/retinanet_ablation.sh [JOBS [VARIANT...]]   # JOBS trainings at a time (default 1; one thread
#                                                       # each); the named variants only (default: all)
#
# Each variant trains in runs/retinanet/<variant>/ (6 epochs), resumes from its checkpoint when run again
# and is exported beside it; "plain" is the baseline RetinaNet (max-IoU assignment, FPN only, no IoU
# branch). The shipped models/retinanet_pan_iou.pt is the OT variant on a full schedule
# (configs/retinanet_pan_iou_full.json). `scripts/evaluate_models.py --retinanet` then evaluates all of
# them on BCCD test and writes models/retinanet_pan_iou.ablation.md.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${1:-1}"
shift || true
py=.venv/bin/python

train() {  # variant, then the recipe's switches
  local variant="$1"; shift
  local out="runs/retinanet/$variant" export="runs/retinanet/$variant/model.pt"
  mkdir -p "$out"
  "$py" -m bloodcv.train retinanet --config configs/retinanet_pan_iou.json "$@" --out "$out" \
    --export-path "$export" --resume --no-progress > "$out/stdout.log" 2>&1 \
    && echo "$variant: done ($export)" || { echo "$variant: failed, see $out/stdout.log"; return 1; }
}
export -f train
export py

variants=(
  "plain --assigner max_iou --no-pan --no-iou"
  "ota --assigner ota"
  "ota_nopan --assigner ota --no-pan"
  "ota_noiou --assigner ota --no-iou"
  "max_iou --assigner max_iou"
  "atss --assigner atss"
  "paa --assigner paa"
)
for v in "${variants[@]}"; do
  name="${v%% *}"
  if (($# == 0)) || [[ " $* " == *" $name "* ]]; then echo "$v"; fi
done | xargs -P "$jobs" -I{} bash -c 'train {}'
