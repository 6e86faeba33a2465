#!/usr/bin/env bash
# The white-cell classifier trained across sources (configs/classifier_wbc.json): the default model on
# every source, and leave-one-source-out variants, each trained without one source and tested on all.
#
#   scripts/wbc_sources.sh [JOBS [VARIANT...]]   # JOBS trainings at a time (default 1; one thread each);
#                                                # VARIANT: all, without_pbc, without_bone_marrow, without_bccd,
#                                                # triplet (all sources, plus the centre-based triplet loss)
#
# Each variant trains in runs/wbc/<variant>/ and resumes from its checkpoint when run again; its model is
# exported beside it (runs/wbc/<variant>/wbc_classifier.pt). scripts/evaluate_models.py --wbc then writes
# the card's tables from their metrics; the "all" model is the one shipped as models/wbc_classifier.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${1:-1}"
shift || true
py=.venv/bin/python

train() {  # variant
  local variant="$1" out="runs/wbc/$1" config=configs/classifier_wbc.json
  local exclude=()
  [[ "$variant" == without_* ]] && exclude=(--exclude-source "${variant#without_}")
  [[ "$variant" == triplet ]] && config=configs/classifier_wbc_triplet.json
  mkdir -p "$out"
  "$py" -m bloodcv.train classifier --config "$config" "${exclude[@]}" --out "$out" \
    --export-path "$out/wbc_classifier.pt" $([[ -f "$out/last.pt" ]] && echo --resume) --no-progress > "$out/stdout.log" 2>&1 \
    && echo "$variant: done ($out/wbc_classifier.pt)" || { echo "$variant: failed, see $out/stdout.log"; return 1; }
}
export -f train
export py

for name in all without_bccd without_pbc without_bone_marrow triplet; do
  if (($# == 0)) || [[ " $* " == *" $name "* ]]; then echo "$name"; fi
done | xargs -P "$jobs" -I{} bash -c 'train {}'
