"""bloodcv eval and bloodcv analyze options that no other test runs: the forms of --pred, --detector, --split,
--max-dets, YOLO and COCO ground truth, --whole-image, --score-threshold and a config file that sets every key.

The eval fixtures are made by hand, so every metric is known exactly (COCO's 101-point interpolated AP: a class
whose ranked detections reach recall 0.5 at precision 1 and no further has AP 51/101)."""
import json
import math
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

import bloodcv

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "build" / "bloodcv"
SAMPLE = ROOT / "examples" / "data" / "bccd_BloodImage_00001.jpg"  # 640x480
DETECTOR = ROOT / "models" / "cell_detector.pt"
CLASSIFIER = ROOT / "models" / "wbc_classifier.pt"
BCCD = ROOT.parent / "shared" / "datasets" / "bccd" / "BCCD"
BCCD_IDS = ["BloodImage_00007", "BloodImage_00011"]  # from BCCD's test split

needs_bccd = pytest.mark.skipif(not BCCD.exists(), reason=f"the BCCD dataset is not at {BCCD}")


# One LibTorch thread: on a machine whose cores are shared, more threads only wait for each other. eval has no
# --threads and takes OMP_NUM_THREADS; analyze is given --threads 1 (it would ask for every core).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args, cwd=None):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd, env=ENV)


def ok(result):
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def evaluate(out, *args):
    ok(run("eval", "--out", out, *args))
    return json.loads((Path(out) / "eval.json").read_text())


def analyze(out, *args, cwd=None):
    ok(run("analyze", *args, "--out", out, cwd=cwd))
    return json.loads((Path(out) / "summary.json").read_text())


def report(out, stem):
    return json.loads((Path(out) / f"{stem}.json").read_text())


# --- hand-made ground truth and predictions ------------------------------------------------------------
# Two 200x100 images. smear_a: two WBC (40x40 = 1600 px², COCO "medium") and one RBC (20x20 = 400 px², "small");
# smear_b: one RBC (30x30 = 900 px², "small").
SIZE = (200, 100)
TRUTH = {
    "smear_a": [("WBC", [10, 10, 50, 50]), ("WBC", [100, 10, 140, 50]), ("RBC", [10, 60, 30, 80])],
    "smear_b": [("RBC", [50, 50, 80, 80])],
}
# Predictions that find the first WBC and the RBC exactly, miss the second WBC and add a WBC where there is none.
PARTIAL = {
    "smear_a": [("WBC", [10, 10, 50, 50], 0.9), ("WBC", [150, 60, 190, 95], 0.8), ("RBC", [10, 60, 30, 80], 0.7)],
    "smear_b": [("RBC", [50, 50, 80, 80], 0.95)],
}
# Predictions equal to the ground truth of smear_a.
PERFECT = {"smear_a": [("WBC", [10, 10, 50, 50], 0.9), ("WBC", [100, 10, 140, 50], 0.8), ("RBC", [10, 60, 30, 80], 0.7)]}
HALF = 51 / 101  # COCO AP of a class that reaches recall 0.5 at precision 1: recall thresholds 0, 0.01, ..., 0.50


def write_coco_truth(path, names):
    """COCO instances JSON, its category ids and order unlike those bloodcv analyze writes (names must match)."""
    categories = [{"id": 4, "name": "RBC"}, {"id": 9, "name": "WBC"}, {"id": 11, "name": "Platelets"}]
    ids = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for k, name in enumerate(names):
        images.append({"id": 100 + k, "file_name": f"{name}.png", "width": SIZE[0], "height": SIZE[1]})
        for label, (x1, y1, x2, y2) in TRUTH[name]:
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + k, "category_id": ids[label],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_predictions(folder, predictions):
    """What bloodcv analyze writes: one analysis report per image, and coco_results.json with coco_images.json."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = ["WBC", "RBC", "Platelets"]
    coco_images, coco_results = [], []
    for image_id, (name, cells) in enumerate(predictions.items(), start=1):
        counts = Counter(label for label, _, _ in cells)
        (folder / f"{name}.json").write_text(json.dumps({
            "schema": "bloodcv.analysis", "schema_version": 1, "detector_labels": labels,
            "image": {"path": f"/smears/{name}.png", "width": SIZE[0], "height": SIZE[1]}, "tiles": 1,
            "counts": {label: counts[label] for label in labels},
            "cells": [{"id": i, "label": label, "box": box, "score": score} for i, (label, box, score) in enumerate(cells)]}))
        coco_images.append({"id": image_id, "file_name": f"{name}.png", "width": SIZE[0], "height": SIZE[1]})
        for label, (x1, y1, x2, y2), score in cells:
            coco_results.append({"image_id": image_id, "category_id": labels.index(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                 "score": score})
    (folder / "coco_results.json").write_text(json.dumps(coco_results))
    (folder / "coco_images.json").write_text(json.dumps({
        "images": coco_images, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(labels)], "annotations": []}))
    return folder


def by_label(report):
    return {c["label"]: c for c in report["classes"]}


def assert_partial_smear_a(report):
    """The metrics of PARTIAL["smear_a"] against TRUTH["smear_a"], worked out by hand."""
    assert report["images"] == 1 and report["predictions"] == 3 and report["images_without_predictions"] == 0
    coco = report["coco"]
    # WBC: ranked 0.9 (hit), 0.8 (false): recall 0.5 at precision 1 -> 51/101 at every IoU (the boxes are exact);
    # RBC: found -> 1. AP is the mean over the classes with ground truth.
    for key in ["AP", "AP50", "AP75"]:
        assert coco[key] == pytest.approx((HALF + 1) / 2, abs=1e-9), key
    assert coco["AP_small"] == pytest.approx(1.0)  # the RBC only
    assert coco["AP_medium"] == pytest.approx(HALF)  # the WBC only
    assert coco["AP_large"] == -1  # no ground truth that large
    for key in ["AR1", "AR10", "AR100"]:
        assert coco[key] == pytest.approx(0.75), key  # (0.5 + 1) / 2
    assert coco["AR_small"] == pytest.approx(1.0) and coco["AR_medium"] == pytest.approx(0.5) and coco["AR_large"] == -1
    # All classes ranked together: 0.9 hit, 0.8 false, 0.7 hit of 3 cells -> best F1 after the third: P = R = F1 = 2/3.
    assert len(report["by_iou"]) == 10
    for row in report["by_iou"]:
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3)), row
        assert row["confidence"] == pytest.approx(0.7)
    classes = by_label(report)
    wbc, rbc, platelets = classes["WBC"], classes["RBC"], classes["Platelets"]
    assert (wbc["ground_truth"], rbc["ground_truth"], platelets["ground_truth"]) == (2, 1, 0)
    assert wbc["ap"] == pytest.approx(HALF) and rbc["ap"] == pytest.approx(1.0) and platelets["ap"] == -1
    # WBC: best F1 after the first detection (P 1, R 1/2, F1 2/3); counted at score >= 0.9: 1 of 2 -> error 1.
    assert (wbc["by_iou"][0]["precision"], wbc["by_iou"][0]["recall"], wbc["by_iou"][0]["f1"]) == pytest.approx((1, 0.5, 2 / 3))
    assert wbc["count_threshold"] == pytest.approx(0.9) and wbc["count_mae"] == pytest.approx(1.0)
    assert (rbc["by_iou"][0]["precision"], rbc["by_iou"][0]["recall"], rbc["by_iou"][0]["f1"]) == pytest.approx((1, 1, 1))
    assert rbc["count_threshold"] == pytest.approx(0.7) and rbc["count_mae"] == 0
    assert report["count_mae"] == pytest.approx(0.5)  # mean over WBC and RBC (Platelets have no ground truth)


# --- bloodcv eval --------------------------------------------------------------------------------------
@pytest.fixture
def partial(tmp_path):
    return write_coco_truth(tmp_path / "truth.json", ["smear_a"]), write_predictions(tmp_path / "pred", {"smear_a": PARTIAL["smear_a"]})


@pytest.mark.parametrize("form", ["directory", "report", "coco_results"])
def test_each_form_of_pred_gives_the_hand_computed_metrics(partial, tmp_path, form):
    truth, pred = partial
    given = {"directory": pred, "report": pred / "smear_a.json", "coco_results": pred / "coco_results.json"}[form]
    assert_partial_smear_a(evaluate(tmp_path / "eval", "--gt", truth, "--pred", given))


def test_coco_results_need_coco_images_beside_them(partial, tmp_path):
    truth, pred = partial
    (pred / "coco_images.json").unlink()
    result = run("eval", "--gt", truth, "--pred", pred / "coco_results.json", "--out", tmp_path / "eval")
    assert result.returncode == 1 and "COCO results need coco_images.json beside them" in result.stderr
    assert not (tmp_path / "eval" / "eval.json").exists()


def write_yolo(folder, image_size, classes=("RBC", "WBC", "Platelets"), with_classes_file=True):
    """TRUTH["smear_a"] as YOLO labels (normalised to SIZE) and a blank image of image_size for the sizes."""
    (folder / "labels").mkdir(parents=True)
    (folder / "images").mkdir()
    lines = []
    for label, (x1, y1, x2, y2) in TRUTH["smear_a"]:
        w, h = SIZE
        lines.append(f"{classes.index(label)} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}")
    (folder / "labels" / "smear_a.txt").write_text("\n".join(lines) + "\n")
    if with_classes_file:
        (folder / "labels" / "classes.txt").write_text("\n".join(classes) + "\n")
    assert cv2.imwrite(str(folder / "images" / "smear_a.png"), np.zeros((image_size[1], image_size[0], 3), np.uint8))
    return folder / "labels", folder / "images"


def test_yolo_ground_truth_with_classes_txt(tmp_path):
    labels, images = write_yolo(tmp_path / "yolo", SIZE)  # classes.txt: RBC is class 0, WBC 1, Platelets 2
    pred = write_predictions(tmp_path / "pred", {"smear_a": PARTIAL["smear_a"]})
    report = evaluate(tmp_path / "eval", "--gt", labels, "--images", images, "--pred", pred)  # the format from the .txt files
    assert_partial_smear_a(report)
    assert [c["label"] for c in report["classes"]] == ["RBC", "WBC", "Platelets"]  # classes.txt's order


def test_yolo_ground_truth_with_labels_option(tmp_path):
    labels, images = write_yolo(tmp_path / "yolo", SIZE, classes=("WBC", "Platelets", "RBC"), with_classes_file=False)
    pred = write_predictions(tmp_path / "pred", {"smear_a": PARTIAL["smear_a"]})
    report = evaluate(tmp_path / "eval", "--gt", labels, "--format", "yolo", "--labels", "WBC,Platelets,RBC", "--images", images,
                      "--pred", pred)
    assert_partial_smear_a(report)


def test_yolo_boxes_are_scaled_by_the_images_sizes(tmp_path):
    # The same normalised labels over a 400x200 image are boxes twice as large: the WBC found at [10, 10, 50, 50]
    # overlaps its truth [20, 20, 100, 100] by IoU 1600/6400 = 0.25, the RBC not at all: nothing is found.
    labels, images = write_yolo(tmp_path / "yolo", (2 * SIZE[0], 2 * SIZE[1]))
    pred = write_predictions(tmp_path / "pred", {"smear_a": PARTIAL["smear_a"]})
    report = evaluate(tmp_path / "eval", "--gt", labels, "--images", images, "--pred", pred)
    assert report["coco"]["AP"] == 0 and report["coco"]["AR100"] == 0
    assert all(row["recall"] == 0 for row in report["by_iou"])
    assert [c["ground_truth"] for c in report["classes"]] == [1, 2, 0]  # still 1 RBC and 2 WBC


def test_yolo_ground_truth_needs_images(tmp_path):
    labels, _ = write_yolo(tmp_path / "yolo", SIZE)
    pred = write_predictions(tmp_path / "pred", {"smear_a": PARTIAL["smear_a"]})
    result = run("eval", "--gt", labels, "--pred", pred, "--out", tmp_path / "eval")
    assert result.returncode == 1 and "YOLO ground truth needs --images" in result.stderr


def test_predictions_equal_to_the_truth_score_one_and_max_dets_limits_them(tmp_path):
    truth = write_coco_truth(tmp_path / "truth.json", ["smear_a"])
    pred = write_predictions(tmp_path / "pred", PERFECT)
    ten = evaluate(tmp_path / "ten", "--gt", truth, "--pred", pred, "--max-dets", "1,10")
    assert ten["options"]["max_detections"] == [1, 10]
    assert set(k for k in ten["coco"] if k.startswith("AR") and k[2:].isdigit()) == {"AR1", "AR10"}
    assert ten["coco"]["AP"] == pytest.approx(1.0) and ten["coco"]["AP50"] == pytest.approx(1.0) and ten["coco"]["AP75"] == pytest.approx(1.0)
    assert ten["coco"]["AR10"] == pytest.approx(1.0)
    assert ten["coco"]["AR1"] == pytest.approx(0.75)  # one detection per image and class: 1 of 2 WBC, the RBC
    for row in ten["by_iou"]:
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((1, 1, 1))
    assert ten["count_mae"] == 0 and all(c["count_mae"] == 0 for c in ten["classes"])

    one = evaluate(tmp_path / "one", "--gt", truth, "--pred", pred, "--max-dets", "1")
    assert one["options"]["max_detections"] == [1]
    assert one["coco"]["AP"] <= ten["coco"]["AP"]
    assert one["coco"]["AP"] == pytest.approx((HALF + 1) / 2)  # WBC: only the 0.9 one counts
    assert one["coco"]["AR1"] == pytest.approx(0.75) and "AR10" not in one["coco"]
    row = one["by_iou"][0]  # 0.9 and 0.7 found of 3 cells
    assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((1, 2 / 3, 0.8))


def test_split_restricts_the_images_scored(tmp_path):
    truth = write_coco_truth(tmp_path / "truth.json", ["smear_a", "smear_b"])
    pred = write_predictions(tmp_path / "pred", PARTIAL)
    both = evaluate(tmp_path / "both", "--gt", truth, "--pred", pred)
    assert both["images"] == 2 and both["predictions"] == 4 and both["unmatched_prediction_images"] == []
    # Ranked 0.95 hit, 0.9 hit, 0.8 false, 0.7 hit of 4 cells: best F1 after the last, P = R = 3/4.
    row = both["by_iou"][0]
    assert (row["precision"], row["recall"], row["f1"], row["confidence"]) == pytest.approx((0.75, 0.75, 0.75, 0.7))
    assert by_label(both)["WBC"]["count_mae"] == pytest.approx(0.5)  # off by 1 on smear_a, right on smear_b
    assert both["count_mae"] == pytest.approx(0.25)

    (tmp_path / "a.txt").write_text("smear_a\n")
    only_a = evaluate(tmp_path / "only_a", "--gt", truth, "--pred", pred, "--split", tmp_path / "a.txt")
    assert_partial_smear_a(only_a)
    assert only_a["unmatched_prediction_images"] == ["smear_b"]

    (tmp_path / "b.txt").write_text("smear_b.png\n\n")  # an extension is dropped, a blank line ignored
    only_b = evaluate(tmp_path / "only_b", "--gt", truth, "--pred", pred, "--split", tmp_path / "b.txt")
    assert only_b["images"] == 1 and only_b["predictions"] == 1 and only_b["unmatched_prediction_images"] == ["smear_a"]
    classes = by_label(only_b)
    assert classes["WBC"]["ground_truth"] == 0 and classes["WBC"]["ap"] == -1 and classes["RBC"]["ap"] == pytest.approx(1.0)
    assert only_b["coco"]["AP"] == pytest.approx(1.0) and only_b["count_mae"] == 0


def cells_of(rep):
    return sorted((c["label"], tuple(c["box"]), c["score"]) for c in rep["cells"])


def assert_same_cells(a, b):
    assert len(a) == len(b)
    for (la, ba, sa), (lb, bb, sb) in zip(a, b):
        assert la == lb and ba == pytest.approx(bb, abs=1e-3) and sa == pytest.approx(sb, abs=1e-4)


@needs_bccd
def test_eval_runs_a_detector_over_images(tmp_path):
    images, voc = tmp_path / "images", tmp_path / "voc"
    images.mkdir()
    voc.mkdir()
    for name in BCCD_IDS:
        shutil.copy(BCCD / "JPEGImages" / f"{name}.jpg", images)
        shutil.copy(BCCD / "Annotations" / f"{name}.xml", voc)
    labels = ("--labels", "WBC,RBC,Platelets")
    detected = evaluate(tmp_path / "eval", "--gt", voc, *labels, "--detector", DETECTOR, "--images", images)
    analyze(tmp_path / "analyzed", images, "--classifier", "none", "--threads", 1)
    # The detector as bloodcv analyze runs it by default: the same cells, written to predictions/.
    written = sorted(p.name for p in (tmp_path / "eval" / "predictions").iterdir())
    assert written == [f"{name}.json" for name in BCCD_IDS]
    total = 0
    for name in BCCD_IDS:
        mine = cells_of(report(tmp_path / "eval" / "predictions", name))
        assert_same_cells(mine, cells_of(report(tmp_path / "analyzed", name)))
        assert all(c.get("type") is None for c in report(tmp_path / "eval" / "predictions", name)["cells"])  # no classifier
        total += len(mine)
    assert detected["images"] == 2 and detected["predictions"] == total and total > 20
    scored = evaluate(tmp_path / "eval_pred", "--gt", voc, *labels, "--pred", tmp_path / "analyzed")
    for key, value in scored["coco"].items():
        assert detected["coco"][key] == pytest.approx(value, abs=1e-6), key
    assert detected["coco"]["AP50"] > 0.5

    # --score-threshold for the detector: the cells above it, and only those.
    high = evaluate(tmp_path / "eval_high", "--gt", voc, *labels, "--detector", DETECTOR, "--images", images, "--score-threshold", 0.7)
    kept = 0
    for name in BCCD_IDS:
        mine = cells_of(report(tmp_path / "eval_high" / "predictions", name))
        assert_same_cells(mine, [c for c in cells_of(report(tmp_path / "analyzed", name)) if c[2] >= 0.7])
        kept += len(mine)
    assert high["predictions"] == kept and 0 < kept < total


# --- bloodcv analyze -----------------------------------------------------------------------------------
def grid_tiles(size, tile, overlap=0.15):
    """Tiles of a grid as the docs describe it: steps of tile - int(overlap * tile), the last one moved back to the
    border; one along an axis no longer than the tile."""
    n = 1
    for length, t in zip(size, tile):
        step = t - int(overlap * t)
        n *= 1 if length <= t else math.ceil((length - t) / step) + 1
    return n


def test_whole_image_adds_one_tile_to_images_of_several(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    pixels = cv2.imread(str(SAMPLE))
    shutil.copy(SAMPLE, images / "full.jpg")  # 640x480
    cv2.imwrite(str(images / "part.png"), pixels[:300, :400])  # 400x300
    cv2.imwrite(str(images / "small.png"), pixels[:200, :300])  # 300x200: one (padded) tile of 320x240
    expected = {"full": grid_tiles((640, 480), (320, 240)), "part": grid_tiles((400, 300), (320, 240)), "small": 1}
    assert expected == {"full": 9, "part": 4, "small": 1}
    common = (images, "--classifier", "none", "--tile", "320x240", "--threads", 1)
    analyze(tmp_path / "grid", *common)
    analyze(tmp_path / "whole", *common, "--whole-image")
    for stem, n in expected.items():
        grid, whole = report(tmp_path / "grid", stem), report(tmp_path / "whole", stem)
        assert grid["tiles"] == n, stem
        # The whole-image pass is one more tile where there are several; a single tile is the whole image already.
        assert whole["tiles"] == (n + 1 if n > 1 else 1), stem
    assert cells_of(report(tmp_path / "whole", "small")) == cells_of(report(tmp_path / "grid", "small"))


def test_a_higher_score_threshold_keeps_a_subset(tmp_path):
    for name, threshold in [("low", 0.3), ("high", 0.6)]:
        analyze(tmp_path / name, SAMPLE, "--classifier", "none", "--score-threshold", threshold, "--threads", 1)
    low, high = report(tmp_path / "low", SAMPLE.stem), report(tmp_path / "high", SAMPLE.stem)
    assert all(c["score"] >= 0.3 for c in low["cells"]) and all(c["score"] >= 0.6 for c in high["cells"])
    # One tile, no merging: the cells at 0.6 are exactly those at 0.3 that score 0.6 or more.
    assert_same_cells(cells_of(high), [c for c in cells_of(low) if c[2] >= 0.6])
    assert len(high["cells"]) < len(low["cells"])  # some cells score in [0.3, 0.6)
    for rep in (low, high):
        counts = Counter(c["label"] for c in rep["cells"])
        assert rep["counts"] == {label: counts[label] for label in ["WBC", "RBC", "Platelets"]}


# A stain target unlike the classifier file's.
STAIN_TARGET = {"mean": [50.0, 10.0, -5.0], "std": [15.0, 10.0, 20.0]}


@pytest.fixture
def full_config(tmp_path):
    """A config that sets every key, its models named relative to its own folder."""
    folder = tmp_path / "config"
    (folder / "nets").mkdir(parents=True)
    (folder / "nets" / "det.pt").symlink_to(DETECTOR)
    (folder / "nets" / "cls.pt").symlink_to(CLASSIFIER)
    config = {
        "detector": "nets/det.pt", "classifier": "nets/cls.pt",
        "tile": [256, 256], "overlap": 0.5, "whole_image": True,
        "classify_labels": ["WBC", "RBC"],
        "device": "cpu", "precision": "float32", "batch_size": 3, "threads": 1, "optimize": False,
        "score_threshold": 0.6,
        # match_threshold 1: no overlap exceeds it, so no detection of one tile is merged with another's.
        "merge": {"strategy": "seam", "match_threshold": 1.0, "metric": "iou", "class_aware": True},
        "stain_normalize": "reinhard", "stain_target": STAIN_TARGET, "stain_before_detection": True,
        "uncertain_below": 0.9,
    }
    path = folder / "pipeline.json"
    path.write_text(json.dumps(config))
    work = tmp_path / "elsewhere"  # the working directory: nets/ is not here
    work.mkdir()
    return path, work


def test_a_config_that_sets_every_key(full_config, tmp_path):
    path, work = full_config
    summary = analyze(tmp_path / "out", SAMPLE, "--config", path, cwd=work)
    assert summary["detector"] == str(path.parent / "nets" / "det.pt")
    assert summary["classifier"] == str(path.parent / "nets" / "cls.pt")
    rep = report(tmp_path / "out", SAMPLE.stem)
    assert rep["classifier_labels"] == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    # tile 256x256, overlap 0.5 (128 px): 4 x 3 tiles over 640x480, and the whole-image pass.
    assert rep["tiles"] == grid_tiles((640, 480), (256, 256), 0.5) + 1 == 13
    cells = rep["cells"]
    assert cells and all(c["score"] >= 0.6 for c in cells)
    # classify_labels WBC and RBC: both typed, by the probability rule of uncertain_below 0.9.
    assert {c["label"] for c in cells} >= {"WBC", "RBC"}
    for c in cells:
        assert ("type" in c) == (c["label"] in ("WBC", "RBC")), c
        if "type" in c:
            assert c["uncertain"] == (c["type_score"] < 0.9), c
            assert (c["type"] == "uncertain") == c["uncertain"], c
    uncertain = sum(c.get("uncertain", False) for c in cells)
    assert 0 < uncertain < len(cells)
    assert rep["type_counts"]["uncertain"] == uncertain
    assert sum(rep["type_counts"].values()) == sum(c["label"] in ("WBC", "RBC") for c in cells)

    # Independently: the detector on each tile of the Reinhard-normalised image (stain_before_detection), and on the
    # whole image; with no merging the report holds every one of those detections.
    image = bloodcv.read_image(str(SAMPLE))
    normalized = bloodcv.make_stain_normalizer("reinhard", json.dumps(STAIN_TARGET)).normalize(image)
    crops = [normalized[y:y + 256, x:x + 256] for y in (0, 128, 224) for x in (0, 128, 256, 384)] + [normalized]
    detector = bloodcv.TorchScriptDetector(str(DETECTOR), score_threshold=0.6, threads=1)
    labels = detector.labels()
    found = Counter(labels[int(k)] for d in detector.detect(crops) for k in d["labels"])
    assert dict(found) == {k: v for k, v in rep["counts"].items() if v}
    unnormalized = Counter(labels[int(k)] for d in detector.detect([image]) for k in d["labels"])
    assert unnormalized != Counter(labels[int(k)] for d in detector.detect([normalized]) for k in d["labels"])


def test_command_line_options_override_the_config(full_config, tmp_path):
    path, work = full_config
    analyze(tmp_path / "out", SAMPLE, "--config", path, "--tile", "320x240", "--overlap", 0.15, "--score-threshold", 0.3,
            "--classify-labels", "WBC", "--uncertain-below", 0, "--stain-normalize", "none", cwd=work)
    rep = report(tmp_path / "out", SAMPLE.stem)
    assert rep["tiles"] == grid_tiles((640, 480), (320, 240), 0.15) + 1 == 10  # whole_image still from the config
    scores = [c["score"] for c in rep["cells"]]
    assert min(scores) >= 0.3 and min(scores) < 0.6
    typed = [c for c in rep["cells"] if "type" in c]
    assert typed and all(c["label"] == "WBC" for c in typed)
    assert "uncertain" not in rep["type_counts"] and not any(c["uncertain"] for c in typed)


@pytest.mark.parametrize("key, value, message", [
    ("device", "tpu", "device must be cpu, cuda or cuda:N, got 'tpu'"),
    ("precision", "float64", "precision must be float32, float16 or bfloat16, got 'float64'"),
    ("batch_size", 0, "batch_size must be >= 1, got 0"),
    ("threads", -2, "threads must be >= 0"),
    ("optimize", "yes", "type must be boolean"),
    ("merge", {"strategy": "bogus"}, "merge strategy must be seam, nmm, nms, wbf or soft-nms, got 'bogus'"),
    ("merge", {"metric": "bogus"}, "metric must be one of iou, ios, giou, diou; got 'bogus'"),
    ("merge", {"class_aware": "no"}, "type must be boolean"),
])
def test_config_keys_without_a_trace_in_the_report_are_read(tmp_path, key, value, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"classifier": None, "threads": 1, key: value}))
    result = run("analyze", SAMPLE, "--config", path, "--out", tmp_path / "out")
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


# --- files beside the images -----------------------------------------------------------------------------
# A folder often holds the annotations beside the images: LabelImg saves X.xml beside X.jpg, and YOLO label
# tools X.txt beside X.jpg. --images must find the image of each stem among them. The directory's order is the
# file system's, so several stems are used: with any one of them the other file can come last.
STEMS = [f"cell_{k:02d}" for k in range(12)]


def test_yolo_labels_beside_their_images(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "classes.txt").write_text("WBC\nRBC\nPlatelets\n")
    predictions = {}
    for stem in STEMS:
        assert cv2.imwrite(str(folder / f"{stem}.png"), np.zeros((SIZE[1], SIZE[0], 3), np.uint8))
        (folder / f"{stem}.txt").write_text("0 0.15 0.3 0.2 0.4\n")  # WBC [10, 10, 50, 50]
        predictions[stem] = [("WBC", [10, 10, 50, 50], 0.9)]
    pred = write_predictions(tmp_path / "pred", predictions)
    result = run("eval", "--gt", folder, "--images", folder, "--pred", pred, "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["images"] == len(STEMS) and report["coco"]["AP"] == pytest.approx(1.0)


def test_detector_over_images_with_voc_files_beside_them(tmp_path):
    folder = tmp_path / "labelimg"
    folder.mkdir()
    pixels = cv2.imread(str(SAMPLE))
    for k, stem in enumerate(STEMS):
        assert cv2.imwrite(str(folder / f"{stem}.jpg"), pixels[4 * k:4 * k + 96, 8 * k:8 * k + 128])
        (folder / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>128</width><height>96</height><depth>3</depth></size>"
            "<object><name>RBC</name><difficult>0</difficult><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>60</xmax><ymax>60</ymax>"
            "</bndbox></object></annotation>")
    result = run("eval", "--gt", folder, "--labels", "WBC,RBC,Platelets", "--detector", DETECTOR, "--images", folder,
                 "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["images"] == len(STEMS)
    assert sorted(p.stem for p in (tmp_path / "eval" / "predictions").iterdir()) == STEMS
