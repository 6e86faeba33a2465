"""The recipes' numbers, computed by the library: a detector is scored as `bloodcv eval --detector` scores
its model file (the runtime's preprocessing, decoder, suppression and tiling, then bloodcv.eval's COCO
evaluation); a classifier's predictions by bloodcv.eval.evaluate_classification. So a model has one AP
and one accuracy, whichever entry point computes them."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from .. import Pipeline, TorchScriptDetector
from .. import eval as bev
from ..data.readers import Sample
from .common import progress


def detect_arrays(model_path, samples: Sequence[Sample], score_threshold: Optional[float] = None,
                  show_progress: bool = False):
    """(the model's labels, {sample name: (boxes, scores, labels)}) of the model file on each sample's image,
    through the default pipeline of that file (tiles of its tile_size, 15 % overlap, seams merged) as
    `bloodcv eval --detector` runs it."""
    detector = TorchScriptDetector(str(model_path), score_threshold=score_threshold)
    pipeline = Pipeline(detector)
    found = {}
    for s in progress(samples, "evaluate", show_progress):
        a = pipeline.analyze(str(s.image)).arrays()
        found[s.name] = (a["boxes"], a["scores"], a["labels"])
    return detector.labels(), found


def detect(model_path, samples: Sequence[Sample], score_threshold: Optional[float] = None, show_progress: bool = False):
    """detect_arrays as a bloodcv.eval.Predictions."""
    return bev.predictions(*detect_arrays(model_path, samples, score_threshold, show_progress))


def ground_truth(samples: Sequence[Sample], labels: Sequence[str]):
    return bev.ground_truth(list(labels), {s.name: (s.boxes, s.classes, s.ignore.tolist()) for s in samples})


# A smear field holds more than COCO's 100 cells (BCCD: up to about 250 with the red cells); the model cards'
# `bloodcv eval --max-dets` uses the same.
MAX_DETECTIONS = (1, 10, 100, 300)


def evaluate_detector(model_path, samples: Sequence[Sample], labels: Sequence[str], score_threshold: Optional[float] = None,
                      show_progress: bool = False) -> Dict:
    """COCO AP of the model file on samples (bloodcv.eval.evaluate_detections, AP at 300 detections per image),
    summarised for a training log: mAP50 and AP50 per class (None for a class without boxes), AP, AP75, the
    ground-truth boxes per class and the whole report's dict."""
    return score_detections(detect(model_path, samples, score_threshold, show_progress), samples, labels)


def score_detections(predictions, samples: Sequence[Sample], labels: Sequence[str]) -> Dict:
    """evaluate_detector's summary for predictions already made (detect) against samples' boxes: one
    detection run scored against two versions of the same images' labels."""
    report = bev.evaluate_detections(ground_truth(samples, labels), predictions, max_detections=list(MAX_DETECTIONS))
    full = report.to_dict()
    per_class = {c["label"]: (round(c["ap50"], 4) if c["ground_truth"] and c["ap50"] >= 0 else None) for c in full["classes"]}
    coco = report.coco
    return {"mAP50": round(coco["AP50"], 4), "AP": round(coco["AP"], 4), "AP75": round(coco["AP75"], 4), "AP50": per_class,
            "images": report.images, "gt_boxes": {c["label"]: c["ground_truth"] for c in full["classes"]}, "report": full}


def classification_metrics(predicted: Sequence[int], truth: Sequence[int], labels: Sequence[str]) -> Dict:
    """bloodcv.eval.evaluate_classification as the recipes log it: n, accuracy, balanced accuracy (mean
    recall over the classes present), macro F1 and per-class recall / precision / F1 by name (None where a
    class has no samples), and the confusion matrix."""
    report = bev.evaluate_classification([int(t) for t in truth], [int(p) for p in predicted], list(labels))
    d = report.to_dict()
    present = [s > 0 for s in d["support"]]
    per = lambda key: {lab: (v if ok else None) for lab, v, ok in zip(labels, d[key], present)}  # noqa: E731
    return {"n": int(sum(d["support"])), "accuracy": report.accuracy,
            "balanced_accuracy": d["macro"]["recall"],
            "macro_f1": d["macro"]["f1"], "recall": per("recall"), "precision": per("precision"), "f1": per("f1"),
            "confusion_matrix": {"rows_true_cols_pred": list(labels), "matrix": report.confusion}}
