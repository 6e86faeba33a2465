"""Evaluates the default models on held-out data for their model cards, with bloodcv's own evaluator.

    .venv/bin/python scripts/evaluate_models.py [--datasets ../shared/datasets] [--out models]

- models/cell_detector.pt on BCCD's test split (Pascal VOC boxes; images never used in training):
  `bloodcv eval` → models/cell_detector.eval.md / .eval.json (COCO summary, P/R/F1 by IoU, per class).
- the default pair end to end on the same split: for each test image whose white cell is known
  (exactly one WBC box and one type in wbc_labels.csv), a true white cell counts as correct when the
  pipeline finds it (IoU >= 0.5) and types it right → models/pipeline.chain.json / .md.
- CPU latency of every model in models/ (detectors per tile, classifiers per cell) → models/latency.md
  (alone: --latency).
- with --wbc: the white-cell classifier's tables from scripts/wbc_sources.sh's runs (runs/wbc/<variant>/metrics.json):
  per source, and each source held out → models/wbc_classifier.sources.md / .json and confusion images; and
  the chain above.
- with --sources: the detector on TXL-PBC's validation split, one row per source (told apart by image size:
  575×575, PBC 360×363, 416×416, BCCD-like 640×480), AP50 and AP75 per class and the boxes' median sizes,
  against the labels as published and as reviewed (--corrections) → models/<detector>.sources.md / .json.
- with --audit DIR: the detector's disagreements with TXL-PBC's white-cell labels (train and val), listed
  and drawn for a reviewer → DIR/wbc_label_audit.json and contact sheets; the reviewed outcome is
  configs/label_corrections/txl_pbc.json, which --sources also scores against.
- with --annotations: how TXL-PBC's boxes (the detector's training labels) agree with BCCD's (its test
  labels) on the BCCD test images both annotated → models/cell_detector.annotations.md / .json.
- with --input-sizes: the detector's CPU latency at inputs 320, 416, 512 and 640 on a 640×640 field
  → models/cell_detector.input_sizes.md / .json.
- with --retinanet: models/retinanet_pan_iou.pt (→ retinanet_pan_iou.eval.md / .eval.json) and the
  ablation variants that scripts/retinanet_ablation.sh trained (runs/retinanet/<variant>/model.pt) on the
  same split → models/retinanet_pan_iou.ablation.md / .json: AP50, AP75, AP90 and AP50:95 per variant.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import bloodcv
from bloodcv import eval as bev
from bloodcv.data.cells import bccd_samples
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
    each described by the recipe its file records. A variant of the previous table whose file is not here
    (trained on another machine) keeps its recorded row, marked as such."""
    table = out / "retinanet_pan_iou.ablation.json"
    recorded = {r["variant"]: r for r in (json.loads(table.read_text()) if table.exists() else [])}
    models = [out / "retinanet_pan_iou.pt"] + sorted((ROOT / "runs" / "retinanet").glob("*/model.pt"))
    rows = []
    for model in models:
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
    measured = {r["variant"] for r in rows}
    same_as_shipped = lambda r: (r["recipe"], r["epochs"]) == (rows[0]["recipe"], rows[0]["epochs"])  # noqa: E731
    rows += [{**r, "recorded": True} for name, r in recorded.items()
             if name not in measured and name != "shipped" and not same_as_shipped(r)]
    table.write_text(json.dumps(rows, indent=1) + "\n")
    md = ("RetinaNet-PAN-IoU ablation on BCCD's test split (63 images, never trained on), `bloodcv eval` through "
          "the C++ runtime at score threshold 0.05 (`.venv/bin/python scripts/evaluate_models.py --retinanet`); the "
          "variants are one recipe and schedule (`scripts/retinanet_ablation.sh`), the shipped model is the recipe's "
          "OT variant (its epochs say on which schedule). Rows marked * are recorded from the run that trained them "
          "(their files are not in this checkout).\n\n"
          "| model | label assigner | PAN | IoU branch | epochs | AP50 | AP75 | AP90 | AP50:95 | AP50 WBC / RBC / Platelets |\n"
          "|---|---|---|---|---:|---|---|---|---|---|\n")
    for r in rows:
        per = r["AP50_per_class"]
        name = "shipped" if r["variant"] == "shipped" else f"`{r['variant']}`" + (" *" if r.get("recorded") else "")
        md += (f"| {name} | {r['assigner']} | {'yes' if r['pan'] else 'no'} | {'yes' if r['iou_branch'] else 'no'} | "
               f"{r['epochs']} | {r['AP50']:.3f} | {r['AP75']:.3f} | {r['AP90']:.3f} | {r['AP50:95']:.3f} | "
               f"{per['WBC']:.3f} / {per['RBC']:.3f} / {per['Platelets']:.3f} |\n")
    (out / "retinanet_pan_iou.ablation.md").write_text(md)
    return rows


WBC_TYPES = {"NEUTROPHIL": "neutrophil", "EOSINOPHIL": "eosinophil", "LYMPHOCYTE": "lymphocyte", "MONOCYTE": "monocyte",
             "BASOPHIL": "basophil"}


def known_white_cells(datasets: Path) -> dict:
    """{image: [(box, type)]}: BCCD's test fields with one WBC box and one known type (the classifier
    recipe's BCCD test cells, bloodcv.data.cells.bccd_samples)."""
    labels = sorted(WBC_TYPES.values())
    return {Path(s.file).stem: [(list(s.box), labels[s.label])]
            for s in bccd_samples(datasets / "bccd", WBC_TYPES, labels) if s.fixed_split == "test"}


def chain_on_bccd(detector: Path, classifier: Path, bccd: Path, truth: dict, **config) -> tuple:
    """(ChainReport, cells typed "uncertain") of the pipeline `bloodcv analyze` would build from this config
    (the classifier file's calibration, threshold and stain normalisation unless the config says otherwise)."""
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "pipeline.json"
        path.write_text(json.dumps({"detector": str(detector.resolve()), "classifier": str(classifier.resolve()), **config}))
        pipeline = bloodcv.Pipeline.from_config(str(path))
    predicted = {}
    uncertain = 0
    for image_id in truth:
        r = pipeline.analyze(str(bccd / "JPEGImages" / f"{image_id}.jpg"))
        a = r.arrays()
        typed = [i for i in range(len(r)) if a["types"][i] >= 0]
        uncertain += sum(bool(a["uncertain"][i]) for i in typed)
        predicted[image_id] = [(a["boxes"][i].tolist(), "uncertain" if a["uncertain"][i] else r.classifier_labels[a["types"][i]],
                                float(a["scores"][i])) for i in typed]
    return bev.evaluate_chain(truth, predicted), uncertain


def stain_transfer(detector: Path, classifiers: dict, bccd: Path, datasets: Path, out: Path) -> list:
    """Does stain normalisation help a classifier on BCCD's test split? Each classifier end to end with each
    method, to the targets its own file carries → out/wbc_classifier.stain.md / .json."""
    truth = known_white_cells(datasets)
    rows = []
    for title, classifier in classifiers.items():
        for method in ("none", "reinhard", "macenko"):
            chain, uncertain = chain_on_bccd(detector, classifier, bccd, truth, stain_normalize=method)
            rows.append({"classifier": title, "stain_normalize": method, "cells": chain.cells, "correct": chain.correct,
                         "uncertain": uncertain})
    (out / "wbc_classifier.stain.json").write_text(json.dumps(rows, indent=1) + "\n")
    md = ("End to end on BCCD's test split (`scripts/evaluate_models.py --wbc`), each classifier with each stain "
          "normalisation to the targets its file carries:\n\n| classifier | --stain-normalize | typed right | uncertain |\n"
          "|---|---|---:|---:|\n")
    md += "".join(f"| {r['classifier']} | {r['stain_normalize']} | {r['correct']}/{r['cells']} | {r['uncertain']} |\n" for r in rows)
    (out / "wbc_classifier.stain.md").write_text(md)
    return rows


def evaluate_chain(detector: Path, classifier: Path, bccd: Path, datasets: Path, out: Path) -> dict:
    """The default pair end to end, built as `bloodcv analyze` builds it: a cell typed "uncertain" is found but
    not typed right."""
    truth = known_white_cells(datasets)
    chain, uncertain = chain_on_bccd(detector, classifier, bccd, truth)
    result = {"images": len(truth), "cells": chain.cells, "detected": chain.detected, "correct": chain.correct,
              "detection_recall": chain.detection_recall, "end_to_end_accuracy": chain.end_to_end_accuracy,
              "uncertain_typed_cells": uncertain, "classifier": classifier.name,
              "types_of_detected": chain.types.to_dict() if chain.detected else None}
    (out / "pipeline.chain.json").write_text(json.dumps(result, indent=1) + "\n")
    md = (f"End to end on BCCD's test split with `{detector.name}` and `{classifier.name}`: {len(truth)} images whose single "
          f"white cell has a known type (wbc_labels.csv). Detected (IoU ≥ 0.5): {chain.detected}/{chain.cells} "
          f"({chain.detection_recall:.3f}); detected and typed right: {chain.correct}/{chain.cells} "
          f"({chain.end_to_end_accuracy:.3f}). Typed \"uncertain\" (below the classifier's threshold; counted as not "
          f"typed right): {uncertain} of the pipeline's typed cells on these images.\n\n")
    if chain.detected:
        md += "Types of the detected white cells (BCCD's labels against the pipeline's):\n\n" + chain.types.to_markdown()
    (out / "pipeline.chain.md").write_text(md)
    return result


WBC_VARIANTS = {"all": "all sources", "without_pbc": "without PBC", "without_bone_marrow": "without bone marrow",
                "without_bccd": "without BCCD"}


def wbc_sources_table(runs: Path, out: Path) -> dict:
    """The white-cell classifier's transfer evidence from scripts/wbc_sources.sh's runs: the model trained
    on all sources on each source's test split, and each leave-one-source-out model on the source it never
    saw → out/wbc_classifier.sources.md / .json, and the confusion images beside them."""
    import shutil
    rows = []
    for variant, title in WBC_VARIANTS.items():
        path = runs / variant / "metrics.json"
        if not path.exists():
            continue
        metrics = json.loads(path.read_text())
        for source, m in metrics.get("test_by_source", {}).items():
            held_out = variant == f"without_{source}"
            if variant != "all" and not held_out:
                continue
            rows.append({"trained": title, "tested": source, "held_out": held_out, "cells": m["n"], "accuracy": m["accuracy"],
                         "balanced_accuracy": m["balanced_accuracy"], "balanced_accuracy_common": m["balanced_accuracy_common"],
                         "macro_f1": m["macro_f1"], "ece_before": m["ece_before"], "ece_after": m["ece_after"],
                         "temperature": metrics.get("calibration", {}).get("temperature")})
            image = runs / variant / f"confusion_{source}.png"
            if image.exists():
                shutil.copy(image, out / f"wbc_classifier.{'held_out' if held_out else 'all'}.{source}.png")
    (out / "wbc_classifier.sources.json").write_text(json.dumps(rows, indent=1) + "\n")
    md = ("| trained on | tested on (its test split) | cells | accuracy | balanced accuracy | balanced, 4 common types | "
          "ECE before → after calibration |\n|---|---|---:|---:|---:|---:|---:|\n")
    for r in rows:
        common = "–" if r["balanced_accuracy_common"] is None else f"{r['balanced_accuracy_common']:.3f}"
        md += (f"| {r['trained']} | {r['tested']}{' (never seen)' if r['held_out'] else ''} | {r['cells']} | {r['accuracy']:.3f} | "
               f"{r['balanced_accuracy']:.3f} | {common} | {r['ece_before']:.3f} → {r['ece_after']:.3f} |\n")
    (out / "wbc_classifier.sources.md").write_text(md)
    return {"rows": rows}


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


# TXL-PBC's sources, told apart by image size (datasets/README.md: a union of BCCD, BCDD, PBC and Raabin-WBC).
TXL_SOURCES = {(575, 575): "575×575", (360, 363): "PBC 360×363", (366, 369): "PBC 366×369", (416, 416): "416×416",
               (640, 480): "BCCD-like 640×480"}


def shown_path(path: Path) -> str:
    """path as the tables show it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def txl_pbc_val(datasets: Path) -> dict:
    """TXL-PBC val's samples grouped by source (image size), the largest source first."""
    from bloodcv.data.readers import list_yolo_split
    root = datasets / "txl-pbc" / "TXL_PBC"
    groups: dict = {}
    for s in list_yolo_split(root / "images" / "val", root / "labels" / "val"):
        groups.setdefault(TXL_SOURCES.get((s.width, s.height), f"{s.width}×{s.height}"), []).append(s)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def white_cells_reported(found: dict, labels: list) -> dict:
    """The white cells of a detection run ({image: (boxes, scores, labels)}), and the pairs of them that
    overlap by IoU > 0.2: white cells lie apart, so such a pair is one cell counted twice."""
    wbc = labels.index("WBC")
    reported, pairs = 0, 0
    for boxes, _, classes in found.values():
        kept = np.asarray(boxes, np.float32)[np.asarray(classes) == wbc]
        reported += len(kept)
        if len(kept) > 1:
            pairs += int((np.triu(np.asarray(bloodcv.box_iou(kept, kept)), 1) > 0.2).sum())
    return {"reported": reported, "pairs_iou_over_0.2": pairs}


def detector_by_source(model: Path, datasets: Path, out: Path, corrections: Path) -> list:
    """AP50 / AP75 per class of the detector on TXL-PBC val, per source, through the runtime as `bloodcv eval`,
    against the dataset's labels and against the labels with the reviewed corrections applied (one detection
    run per image, scored against both), and the white cells it reports as a user runs it (a second run at the
    file's own thresholds: an IoU-aware decoder filters on the class score, not on the score it reports)."""
    from bloodcv.data.corrections import apply_label_corrections, read_label_corrections
    from bloodcv.data.readers import LABELS
    from bloodcv.training.evaluation import detect_arrays, score_detections
    entries = read_label_corrections(corrections)
    rows = {"as published": [], "reviewed": []}
    for source, group in txl_pbc_val(datasets).items():
        model_labels, found = detect_arrays(model, group, 0.001)
        predictions = bev.predictions(model_labels, found)
        white_cells = white_cells_reported(detect_arrays(model, group)[1], model_labels)
        for labels, samples in (("as published", group), ("reviewed", apply_label_corrections(group, entries))):
            result = score_detections(predictions, samples, LABELS)
            classes = {c["label"]: {"ap50": round(c["ap50"], 3), "ap75": round(c["ap75"], 3), "boxes": c["ground_truth"]}
                       for c in result["report"]["classes"]}
            sizes = {lab: float(np.median([max(b[2] - b[0], b[3] - b[1]) for s in samples for b, c in zip(s.boxes, s.classes)
                                           if LABELS[c] == lab] or [0])) for lab in LABELS}
            rows[labels].append({"labels": labels, "source": source, "images": len(samples), "mAP50": result["mAP50"],
                                 "AP75": result["AP75"], "classes": classes, "median_box_side_px": sizes,
                                 "white_cells_reported": white_cells})
    rows = rows["as published"] + rows["reviewed"]
    (out / f"{model.stem}.sources.json").write_text(json.dumps({"model": model.name, "corrections": shown_path(corrections),
                                                                "rows": rows}, indent=1) + "\n")
    md = (f"`{model.name}` on TXL-PBC's validation split by source (image size), `bloodcv eval`'s COCO AP at score "
          "threshold 0.001 through the runtime (`.venv/bin/python scripts/evaluate_models.py --sources`), against the "
          f"labels as published and with the reviewed corrections of `{shown_path(corrections)}` applied; the last column "
          "counts the white cells the file reports run as a user runs it (its own thresholds), and in brackets the pairs of them that "
          "overlap by IoU > 0.2 (one cell counted twice):\n\n"
          "| labels | source | images | AP50 WBC / RBC / Platelets | AP75 WBC / RBC / Platelets | mean AP75 | boxes WBC / RBC / Platelets | "
          "median box side, px (WBC / RBC / Platelets) | WBC reported (pairs at IoU > 0.2) |\n"
          "|---|---|---:|---|---|---:|---|---|---|\n")
    for r in rows:
        c = r["classes"]
        md += (f"| {r['labels']} | {r['source']} | {r['images']} | " + " / ".join(f"{c[lab]['ap50']:.3f}" for lab in LABELS)
               + " | " + " / ".join(f"{c[lab]['ap75']:.3f}" for lab in LABELS) + f" | {r['AP75']:.3f} | "
               + " / ".join(str(c[lab]["boxes"]) for lab in LABELS) + " | "
               + " / ".join(f"{r['median_box_side_px'][lab]:.0f}" for lab in LABELS)
               + f" | {r['white_cells_reported']['reported']} ({r['white_cells_reported']['pairs_iou_over_0.2']}) |\n")
    (out / f"{model.stem}.sources.md").write_text(md)
    return rows


def audit_white_cell_labels(model: Path, datasets: Path, out: Path) -> list:
    """Candidates for wrong white-cell labels in TXL-PBC train and val, for a reviewer: every WBC box the
    detector does not find as a WBC (IoU >= 0.5, score >= 0.25), every WBC it finds at score >= 0.5 with
    no WBC box, and every two WBC boxes that overlap as one cell boxed twice (bloodcv.data.corrections.
    duplicate_boxes, no model needed) → out/wbc_label_audit.json and contact sheets out/wbc_label_audit_<k>.png
    (each candidate numbered, its boxes drawn on their neighbourhood). What the reviewer decides goes into a corrections file
    (configs/label_corrections/txl_pbc.json)."""
    import cv2
    from bloodcv.data.corrections import duplicate_boxes
    from bloodcv.data.readers import LABELS, list_yolo_split
    root = datasets / "txl-pbc" / "TXL_PBC"
    pipeline = bloodcv.Pipeline(bloodcv.TorchScriptDetector(str(model), score_threshold=0.05))
    rows, crops = [], []
    for split in ("train", "val"):
        for s in list_yolo_split(root / "images" / split, root / "labels" / split):
            a = pipeline.analyze(str(s.image)).arrays()
            boxes, scores, labels = a["boxes"].astype(np.float32), a["scores"], a["labels"]
            iou = np.asarray(bloodcv.box_iou(s.boxes, boxes))
            found = []
            for i in np.flatnonzero(s.classes == 0):
                if not ((iou[i] >= 0.5) & (labels == 0) & (scores >= 0.25)).any():
                    found.append(("WBC box not found as a WBC", [s.boxes[i]], {}))
            for j in np.flatnonzero((labels == 0) & (scores >= 0.5)):
                if not (iou[:, j][s.classes == 0] >= 0.5).any():
                    best = int(iou[:, j].argmax()) if len(s.boxes) else -1
                    found.append(("WBC found without a WBC box", [boxes[j]],
                                  {"nearest_box": {"label": LABELS[s.classes[best]], "iou": round(float(iou[best, j]), 3)}}
                                  if best >= 0 else {}))
            for pair in duplicate_boxes(s, "WBC"):
                found.append(("one cell boxed twice as WBC", pair["boxes"], {"iou": pair["iou"]}))
            if not found:
                continue
            image = cv2.imread(str(s.image))
            for kind, shown_boxes, extra in found:
                rows.append({"k": len(rows), "split": split, "image": s.name, "size": f"{s.width}x{s.height}", "kind": kind,
                             **{("box" if i == 0 else "other_box"): [round(float(v), 1) for v in b] for i, b in enumerate(shown_boxes)},
                             **extra})
                shown = image.copy()
                for b, colour in zip(shown_boxes, ((0, 255, 255), (255, 0, 255))):
                    cv2.rectangle(shown, tuple(map(int, b[:2])), tuple(map(int, b[2:])), colour, 3)
                x1, y1 = (int(min(b[k] for b in shown_boxes)) for k in (0, 1))
                x2, y2 = (int(max(b[k] for b in shown_boxes)) for k in (2, 3))
                cx, cy, half = (x1 + x2) // 2, (y1 + y2) // 2, max(x2 - x1, y2 - y1, 120)
                crop = shown[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half]
                crop = cv2.resize(crop, (300, max(1, 300 * crop.shape[0] // crop.shape[1])))[:300]
                crop = cv2.copyMakeBorder(crop, 0, 300 - crop.shape[0], 0, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
                cv2.putText(crop, f"{rows[-1]['k']} {split} {'found' if kind.startswith('WBC found') else 'GT'}", (4, 18),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 2)
                crops.append(crop)
    out.mkdir(parents=True, exist_ok=True)
    (out / "wbc_label_audit.json").write_text(json.dumps({"model": model.name, "candidates": rows}, indent=1) + "\n")
    for page in range(0, len(crops), 20):
        tiles = crops[page:page + 20]
        tiles += [np.full_like(crops[0], 255)] * (-len(tiles) % 5)
        cv2.imwrite(str(out / f"wbc_label_audit_{page // 20}.png"),
                    np.vstack([np.hstack(tiles[i:i + 5]) for i in range(0, len(tiles), 5)]))
    return rows


def annotation_agreement(datasets: Path, out: Path) -> dict:
    """TXL-PBC re-annotated BCCD's images: on the BCCD test images that it holds at the same size and
    orientation (found by the detector recipe's near-duplicate search, so never trained on), how well the two annotations agree,
    box by box (greedy one-to-one matching by IoU per class) and as COCO AP of TXL-PBC's boxes (all at score
    1) against BCCD's → out/cell_detector.annotations.md / .json: the AP a model that labels exactly as its
    training data does would get on BCCD test."""
    from bloodcv.data.readers import LABELS, list_yolo_split
    from bloodcv.training.config import load_config
    from bloodcv.training.detector import DEFAULT_CONFIG, detection_splits
    from bloodcv.training.evaluation import MAX_DETECTIONS
    splits = detection_splits(load_config(str(ROOT / "configs" / "detector_yolo.json"), DEFAULT_CONFIG), log=lambda *_: None)
    test = {s.name: s for s in splits["test"]}
    root = datasets / "txl-pbc" / "TXL_PBC"
    txl = {s.name: s for part in ("train", "val") for s in list_yolo_split(root / "images" / part, root / "labels" / part)}
    dropped = splits["summary"]["dedup"]["dropped"]
    truth, found, ious = {}, {}, {lab: [] for lab in LABELS}
    only = {lab: {"TXL-PBC": 0, "BCCD": 0} for lab in LABELS}
    # Each BCCD image's best-aligned copy (as is or mirrored): mean over BCCD's boxes of the best IoU with
    # the copy's; copies that are rotated, cropped or shifted (below 0.5) are left out.
    copies = {}
    for copy, original in {**dropped["train"], **dropped["val"]}.items():
        t, b = txl[copy], test.get(original)
        if b is None or (t.width, t.height) != (b.width, b.height):
            continue
        mirrored = t.boxes.copy()
        mirrored[:, [0, 2]] = t.width - t.boxes[:, [2, 0]]
        for boxes in (t.boxes, mirrored):
            aligned = float(np.asarray(bloodcv.box_iou(b.boxes, boxes)).max(1).mean())
            if aligned >= 0.5 and aligned > copies.get(original, (0.0,))[0]:
                copies[original] = (aligned, t, boxes)
    for original, (_, t, boxes) in sorted(copies.items()):
        b = test[original]
        truth[original] = (b.boxes, b.classes, b.ignore.tolist())
        found[original] = (boxes, np.ones(len(boxes), np.float32), t.classes)
        for c, lab in enumerate(LABELS):
            iou = np.asarray(bloodcv.box_iou(boxes[t.classes == c], b.boxes[b.classes == c])).reshape(
                int((t.classes == c).sum()), int((b.classes == c).sum()))
            pairs = 0
            while iou.size and iou.max() > 0.1:
                i, j = np.unravel_index(iou.argmax(), iou.shape)
                ious[lab].append(float(iou[i, j]))
                iou[i, :], iou[:, j] = -1, -1
                pairs += 1
            only[lab]["TXL-PBC"] += int((t.classes == c).sum()) - pairs
            only[lab]["BCCD"] += int((b.classes == c).sum()) - pairs
    report = bev.evaluate_detections(bev.ground_truth(list(LABELS), truth), bev.predictions(list(LABELS), found),
                                     max_detections=list(MAX_DETECTIONS)).to_dict()
    classes = {c["label"]: c for c in report["classes"]}
    rows = [{"class": lab, "pairs": len(ious[lab]), "median_iou": round(float(np.median(ious[lab])), 3),
             "pairs_iou_at_least_0.75": round(float(np.mean(np.array(ious[lab]) >= 0.75)), 3),
             "only_in_txl_pbc": only[lab]["TXL-PBC"], "only_in_bccd": only[lab]["BCCD"],
             "AP50": round(classes[lab]["ap50"], 3), "AP75": round(classes[lab]["ap75"], 3)} for lab in LABELS]
    result = {"images": len(truth), "rows": rows, "mean_AP50": round(float(np.mean([r["AP50"] for r in rows])), 3),
              "mean_AP75": round(float(np.mean([r["AP75"] for r in rows])), 3)}
    (out / "cell_detector.annotations.json").write_text(json.dumps(result, indent=1) + "\n")
    md = (f"TXL-PBC's boxes against BCCD's on the {len(truth)} BCCD test images that TXL-PBC holds re-annotated at the same "
          "size and orientation (the near-duplicates the detector recipe keeps out of training; copies that are "
          "rotated, cropped or shifted left out), "
          "`.venv/bin/python scripts/evaluate_models.py --annotations`. Pairs: one-to-one by IoU per class; "
          "AP: TXL-PBC's boxes scored by `bloodcv.eval` as detections (all at score 1) against BCCD's.\n\n"
          "| class | pairs | median IoU | pairs at IoU ≥ 0.75 | boxes only in TXL-PBC | only in BCCD | AP50 | AP75 |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|\n")
    md += "".join(f"| {r['class']} | {r['pairs']} | {r['median_iou']:.3f} | {r['pairs_iou_at_least_0.75']:.3f} | "
                  f"{r['only_in_txl_pbc']} | {r['only_in_bccd']} | {r['AP50']:.3f} | {r['AP75']:.3f} |\n" for r in rows)
    md += f"| mean | | | | | | {result['mean_AP50']:.3f} | {result['mean_AP75']:.3f} |\n"
    (out / "cell_detector.annotations.md").write_text(md)
    return result


def detector_input_latency(model: Path, bccd: Path, out: Path, sizes=(320, 416, 512, 640)) -> list:
    """CPU latency of the default detector's architecture at each input size, side by side in one run, one
    thread: the model file's description with the input changed, on one 640×640 field (the model's tile)
    → out/<model>.input_sizes.md / .json. Weights do not change the time, so each size is a freshly built
    network of the same width and depth."""
    from bloodcv.export import export_model
    from bloodcv.models import YoloDetector
    torch.set_num_threads(1)
    meta = load_model(model)[1]
    arch = meta["training"]["architecture"]
    field = bloodcv.read_image(str(next((bccd / "JPEGImages").glob("*.jpg"))))
    field = np.ascontiguousarray(np.resize(field, (640, 640, 3)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            torch.manual_seed(0)
            net = YoloDetector(len(meta["labels"]), arch["width"], arch["depth"], input_size=size).eval().fuse()
            path = Path(tmp) / f"{size}.pt"
            export_model(net, path, {**meta, "input_size": [size, size]}, torch.rand(1, 3, size, size), method="trace", atol=1e-3)
            detector = bloodcv.TorchScriptDetector(str(path), batch_size=1)
            rows.append({"input": size, "ms": round(_median_ms(lambda: detector.detect([field])), 1)})
    base = rows[0]["ms"]
    (out / f"{model.stem}.input_sizes.json").write_text(json.dumps({"threads": 1, "field": "640x640", "rows": rows}, indent=1) + "\n")
    md = (f"CPU latency of `{model.name}`'s architecture (width {arch['width']}, depth {arch['depth']}) on one 640×640 "
          "field at each input size, one thread, median of 7, side by side in one run of "
          "`.venv/bin/python scripts/evaluate_models.py --input-sizes`:\n\n| input | ms per field | × the 320 input |\n|---:|---:|---:|\n")
    md += "".join(f"| {r['input']} | {r['ms']:.1f} | {r['ms'] / base:.2f} |\n" for r in rows)
    (out / f"{model.stem}.input_sizes.md").write_text(md)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "models")
    parser.add_argument("--detector", type=Path, default=ROOT / "models" / "cell_detector.pt")
    parser.add_argument("--classifier", type=Path, default=ROOT / "models" / "wbc_classifier.pt")
    parser.add_argument("--retinanet", action="store_true", help="only the RetinaNet-PAN-IoU model and its ablation")
    parser.add_argument("--latency", action="store_true", help="only the CPU latency of every model in models/")
    parser.add_argument("--sources", action="store_true", help="only the detector per source of TXL-PBC val")
    parser.add_argument("--corrections", type=Path, default=ROOT / "configs" / "label_corrections" / "txl_pbc.json",
                        help="the reviewed label corrections --sources also scores against")
    parser.add_argument("--audit", type=Path, metavar="DIR",
                        help="only list the detector's disagreements with TXL-PBC's white-cell labels, for review, in DIR")
    parser.add_argument("--input-sizes", action="store_true", help="only the detector's CPU latency at inputs 320 to 640")
    parser.add_argument("--annotations", action="store_true",
                        help="only how TXL-PBC's boxes agree with BCCD's on the BCCD test images both annotated")
    parser.add_argument("--wbc", action="store_true",
                        help="only the white-cell classifier's per-source and leave-one-source-out tables (runs/wbc) and the chain")
    args = parser.parse_args()
    bccd = args.datasets / "bccd" / "BCCD"
    if args.retinanet:
        for row in evaluate_retinanet_ablation(bccd, args.out):
            print({k: v for k, v in row.items() if k != "recipe"})
        return
    if args.latency:
        print(latency(ROOT / "models", bccd, args.out))
        return
    if args.sources:
        for row in detector_by_source(args.detector, args.datasets, args.out, args.corrections):
            print(row)
        return
    if args.audit:
        print(f"{len(audit_white_cell_labels(args.detector, args.datasets, args.audit))} candidates in {args.audit}")
        return
    if args.annotations:
        print(annotation_agreement(args.datasets, args.out))
        return
    if args.input_sizes:
        print(detector_input_latency(args.detector, bccd, args.out))
        return
    if args.wbc:
        print(wbc_sources_table(ROOT / "runs" / "wbc", args.out)["rows"])
        held_out = ROOT / "runs" / "wbc" / "without_bccd" / "wbc_classifier.pt"
        print(stain_transfer(args.detector, {"default (all sources)": args.classifier,
                                             **({"trained without BCCD": held_out} if held_out.exists() else {})},
                             bccd, args.datasets, args.out))
        chain = evaluate_chain(args.detector, args.classifier, bccd, args.datasets, args.out)
        print({k: v for k, v in chain.items() if k != "types_of_detected"})
        return
    report = evaluate_detector(args.detector, bccd, args.out)
    print(json.dumps(report["coco"], indent=1))
    chain = evaluate_chain(args.detector, args.classifier, bccd, args.datasets, args.out)
    print({k: v for k, v in chain.items() if k != "types_of_detected"})
    print(latency(ROOT / "models", bccd, args.out))


if __name__ == "__main__":
    sys.exit(main())
