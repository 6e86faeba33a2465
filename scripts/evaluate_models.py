"""Evaluates the default models on held-out data for their model cards, with bloodcv's own evaluator.

    .venv/bin/python scripts/evaluate_models.py [--datasets ../shared/datasets] [--out models]

- models/cell_detector.pt on BCCD's test split (Pascal VOC boxes; images never used in training):
  `bloodcv eval` → models/cell_detector.eval.md / .eval.json (COCO summary, P/R/F1 by IoU, per class).
- the default pair end to end on the same split: for each test image whose white cell is known
  (exactly one WBC box and one type in wbc_labels.csv), a true white cell counts as correct when the
  pipeline finds it (IoU >= 0.5) and types it right → models/pipeline.chain.json / .md.
- CPU latency of every model in models/ (detectors per tile, classifiers per cell) → models/latency.md
  (alone: --latency).
- with --retinanet: models/retinanet_pan_iou.pt (→ retinanet_pan_iou.eval.md / .eval.json) and the
  ablation variants that scripts/retinanet_ablation.sh trained (runs/retinanet/<variant>/model.pt) on the
  same split → models/retinanet_pan_iou.ablation.md / .json: AP50, AP75, AP90 and AP50:95 per variant.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

import bloodcv
from bloodcv import eval as bev
from bloodcv.export import load_model

ROOT = Path(__file__).resolve().parent.parent


def evaluate_detector(detector: Path, bccd: Path, out: Path, name: str | None = None,
                      score_threshold: float | None = None) -> dict:
    """`bloodcv eval` on BCCD test (at the model file's score threshold unless given); with out, writes
    <name>.eval.md / .eval.json there."""
    name = name or detector.stem
    work = ROOT / "build" / "eval" / name
    cmd = [str(ROOT / "build" / "bloodcv"), "eval", "--gt", str(bccd / "Annotations"), "--labels", "WBC,RBC,Platelets",
           "--split", str(bccd / "ImageSets" / "Main" / "test.txt"), "--detector", str(detector),
           "--images", str(bccd / "JPEGImages"), "--max-dets", "1,10,100,300", "--out", str(work)]
    if score_threshold is not None:
        cmd += ["--score-threshold", str(score_threshold)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    report = json.loads((work / "eval.json").read_text())
    if out is not None:
        shown = " ".join(cmd).replace(str(bccd.parent.parent), "../shared/datasets").replace(str(ROOT) + "/", "")
        (out / f"{name}.eval.md").write_text(f"Command: `{shown}`\n\n" + (work / "eval.md").read_text())
        (out / f"{name}.eval.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


ASSIGNER_NAMES = {"ota": "OT (Sinkhorn)", "max_iou": "max-IoU", "atss": "ATSS", "paa": "PAA (GMM)"}


def ap_at(report: dict, iou: float, classes: bool = False):
    """AP at one IoU threshold, overall or {class: AP}."""
    def pick(rows):
        return next(r["ap"] for r in rows if abs(r["iou"] - iou) < 1e-6)
    if classes:
        return {c["label"]: pick(c["by_iou"]) for c in report["classes"]}
    return pick(report["by_iou"])


def evaluate_retinanet_ablation(bccd: Path, out: Path) -> list:
    """The shipped model and every variant scripts/retinanet_ablation.sh trained (runs/retinanet/*/model.pt),
    each described by the recipe its file records."""
    models = [out / "retinanet_pan_iou.pt"] + sorted((ROOT / "runs" / "retinanet").glob("*/model.pt"))
    rows = []
    for model in models:
        if not model.exists():
            print(f"ablation: {model} is missing (scripts/retinanet_ablation.sh trains it); skipped")
            continue
        shipped = model.parent == out
        recipe = load_model(model)[1]["training"]
        flags = recipe["recipe"].split()
        # AP keeps the low-score detections (COCO protocol): every variant at score 0.05.
        report = evaluate_detector(model, bccd, out if shipped else None,
                                   "retinanet_pan_iou" if shipped else f"retinanet_{model.parent.name}", 0.05)
        rows.append({"variant": "shipped" if shipped else model.parent.name,
                     "assigner": ASSIGNER_NAMES[flags[flags.index("--assigner") + 1]],
                     "pan": "--no-pan" not in flags, "iou_branch": "--no-iou" not in flags,
                     "epochs": recipe["epochs"], "recipe": recipe["recipe"],
                     "AP50": ap_at(report, 0.5), "AP75": ap_at(report, 0.75), "AP90": ap_at(report, 0.9),
                     "AP50:95": report["coco"]["AP"], "AP50_per_class": ap_at(report, 0.5, classes=True)})
    (out / "retinanet_pan_iou.ablation.json").write_text(json.dumps(rows, indent=1) + "\n")
    md = ("RetinaNet-PAN-IoU ablation on BCCD's test split (63 images, never trained on), `bloodcv eval` through "
          "the C++ runtime at score threshold 0.05; every variant is the same recipe and schedule "
          "(`scripts/retinanet_ablation.sh`).\n\n"
          "| label assigner | PAN | IoU branch | AP50 | AP75 | AP90 | AP50:95 | AP50 WBC / RBC / Platelets |\n"
          "|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        per = r["AP50_per_class"]
        md += (f"| {r['assigner']} | {'yes' if r['pan'] else 'no'} | {'yes' if r['iou_branch'] else 'no'} | "
               f"{r['AP50']:.3f} | {r['AP75']:.3f} | {r['AP90']:.3f} | {r['AP50:95']:.3f} | "
               f"{per['WBC']:.3f} / {per['RBC']:.3f} / {per['Platelets']:.3f} |\n")
    (out / "retinanet_pan_iou.ablation.md").write_text(md)
    return rows


def known_white_cells(bccd: Path, labels_csv: Path, ids: list[str]) -> dict:
    """{image: [(box, type)]} for test images with one WBC box and one known type."""
    types = {}
    with open(labels_csv) as f:
        for row in csv.DictReader(f):
            category = (row.get("category") or "").strip()
            if category and "," not in category:
                types[row["image"].strip()] = category.lower()
    truth = {}
    for image_id in ids:
        if image_id not in types or not (bccd / "JPEGImages" / f"{image_id}.jpg").exists():
            continue
        wbcs = [o.find("bndbox") for o in ET.parse(bccd / "Annotations" / f"{image_id}.xml").getroot().iter("object")
                if o.findtext("name").strip() == "WBC"]
        if len(wbcs) == 1:
            box = [float(wbcs[0].findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            truth[image_id] = [(box, types[image_id])]
    return truth


def evaluate_chain(detector: Path, classifier: Path, bccd: Path, datasets: Path, out: Path) -> dict:
    ids = (bccd / "ImageSets" / "Main" / "test.txt").read_text().split()
    truth = known_white_cells(bccd, datasets / "bccd" / "wbc_labels.csv", ids)
    det = bloodcv.TorchScriptDetector(str(detector))
    pipeline = bloodcv.Pipeline(det, bloodcv.TorchScriptClassifier(str(classifier)))
    predicted = {}
    for image_id in truth:
        r = pipeline.analyze(str(bccd / "JPEGImages" / f"{image_id}.jpg"))
        a = r.arrays()
        predicted[image_id] = [(a["boxes"][i].tolist(), r.classifier_labels[a["types"][i]], float(a["scores"][i]))
                               for i in range(len(r)) if a["types"][i] >= 0]
    chain = bev.evaluate_chain(truth, predicted)
    result = {"images": len(truth), "cells": chain.cells, "detected": chain.detected, "correct": chain.correct,
              "detection_recall": chain.detection_recall, "end_to_end_accuracy": chain.end_to_end_accuracy,
              "types_of_detected": chain.types.to_dict() if chain.detected else None}
    (out / "pipeline.chain.json").write_text(json.dumps(result, indent=1) + "\n")
    md = (f"End to end on BCCD's test split: {len(truth)} images whose single white cell has a known type "
          f"(wbc_labels.csv). Detected (IoU ≥ 0.5): {chain.detected}/{chain.cells} "
          f"({chain.detection_recall:.3f}); detected and typed right: {chain.correct}/{chain.cells} "
          f"({chain.end_to_end_accuracy:.3f}).\n\n")
    if chain.detected:
        md += "Types of the detected white cells (BCCD's labels against the classifier's):\n\n" + chain.types.to_markdown()
    (out / "pipeline.chain.md").write_text(md)
    return result


def _median_ms(run, repeats: int = 7, per: int = 1) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) / per)
    return statistics.median(times) * 1e3


def latency(models: Path, bccd: Path, out: Path) -> list:
    """CPU latency of every model file in `models`, one thread, side by side in one run: detectors per
    input tile (batch 1), classifiers per cell (batches of 32) → out/latency.md / .json."""
    torch.set_num_threads(1)
    image = bloodcv.read_image(str(next((bccd / "JPEGImages").glob("*.jpg"))))
    rows = []
    for path in sorted(models.glob("*.pt")):
        task = load_model(path)[1]["task"]
        if task == "detection":
            det = bloodcv.TorchScriptDetector(str(path), batch_size=1)
            w, h = det.input_size()
            tile = np.ascontiguousarray(np.resize(image, (h, w, 3)))
            rows.append({"model": path.name, "unit": f"{w}×{h} tile", "ms": _median_ms(lambda: det.detect([tile]))})
        else:
            cls = bloodcv.TorchScriptClassifier(str(path), batch_size=32)
            boxes = np.array([[100, 100, 200, 200]] * 32, np.float32)
            rows.append({"model": path.name, "unit": "cell (batches of 32)",
                         "ms": _median_ms(lambda: cls.classify(image, boxes), per=32)})
    (out / "latency.json").write_text(json.dumps({"threads": 1, "models": rows}, indent=1) + "\n")
    md = ("CPU latency, one thread, median of 7 runs, all models measured side by side in one run of "
          "`.venv/bin/python scripts/evaluate_models.py --latency`:\n\n| model | per | ms |\n|---|---|---:|\n")
    md += "".join(f"| `{r['model']}` | {r['unit']} | {r['ms']:.1f} |\n" for r in rows)
    (out / "latency.md").write_text(md)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "models")
    parser.add_argument("--detector", type=Path, default=ROOT / "models" / "cell_detector.pt")
    parser.add_argument("--classifier", type=Path, default=ROOT / "models" / "wbc_classifier.pt")
    parser.add_argument("--retinanet", action="store_true", help="only the RetinaNet-PAN-IoU model and its ablation")
    parser.add_argument("--latency", action="store_true", help="only the CPU latency of every model in models/")
    args = parser.parse_args()
    bccd = args.datasets / "bccd" / "BCCD"
    if args.retinanet:
        for row in evaluate_retinanet_ablation(bccd, args.out):
            print({k: v for k, v in row.items() if k != "recipe"})
        return
    if args.latency:
        print(latency(ROOT / "models", bccd, args.out))
        return
    report = evaluate_detector(args.detector, bccd, args.out)
    print(json.dumps(report["coco"], indent=1))
    chain = evaluate_chain(args.detector, args.classifier, bccd, args.datasets, args.out)
    print({k: v for k, v in chain.items() if k != "types_of_detected"})
    print(latency(ROOT / "models", bccd, args.out))


if __name__ == "__main__":
    sys.exit(main())
