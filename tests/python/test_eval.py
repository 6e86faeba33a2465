"""bloodcv.eval against an independent, straightforward Python implementation of the COCO algorithm."""
import numpy as np
import pytest

import bloodcv
from bloodcv import eval as bev

AREAS = {"all": (0, 1e10), "small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, 1e10)}
IOUS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def iou(d, g, crowd):
    w = min(d[2], g[2]) - max(d[0], g[0])
    h = min(d[3], g[3]) - max(d[1], g[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area_d = (d[2] - d[0]) * (d[3] - d[1])
    union = area_d if crowd else area_d + (g[2] - g[0]) * (g[3] - g[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_coco(gt, dt, n_classes, max_dets):
    """gt: {image: [(box, label, crowd)]}, dt: {image: [(box, score, label)]} → summary dict."""
    images = sorted(gt)
    recall_points = np.linspace(0, 1, 101)
    T, K, A, M = len(IOUS), n_classes, len(AREAS), len(max_dets)
    precision = -np.ones((T, 101, K, A, M))
    recall = -np.ones((T, K, A, M))
    for k in range(K):
        for a, (lo, hi) in enumerate(AREAS.values()):
            per_image = []
            for im in images:
                g = [x for x in gt[im] if x[1] == k]
                d = sorted([x for x in dt.get(im, []) if x[2] == k], key=lambda x: -x[1])[:max(max_dets)]
                area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
                g_ign = [bool(x[2]) or not (lo <= area(x[0]) <= hi) for x in g]
                order = sorted(range(len(g)), key=lambda i: g_ign[i])
                g = [g[i] for i in order]
                g_ign = [g_ign[i] for i in order]
                matched = np.zeros((T, len(d)), bool)
                d_ign = np.zeros((T, len(d)), bool)
                for t, thr in enumerate(IOUS):
                    taken = [False] * len(g)
                    for di, det in enumerate(d):
                        best, m = min(thr, 1 - 1e-10), -1
                        for gi, truth in enumerate(g):
                            if taken[gi] and not truth[2]:
                                continue
                            if m > -1 and not g_ign[m] and g_ign[gi]:
                                break
                            v = iou(det[0], truth[0], truth[2])
                            if v < best:
                                continue
                            best, m = v, gi
                        if m > -1:
                            matched[t, di], d_ign[t, di], taken[m] = True, g_ign[m], True
                outside = np.array([not (lo <= area(x[0]) <= hi) for x in d], bool)
                d_ign |= ~matched & outside[None, :]
                per_image.append(([x[1] for x in d], matched, d_ign, g_ign))
            for mi, md in enumerate(max_dets):
                scores = np.concatenate([np.array(s[:md], float) for s, *_ in per_image]) if per_image else np.zeros(0)
                order = np.argsort(-scores, kind="mergesort")
                npig = sum(int(np.sum(~np.array(gi, bool))) for *_, gi in per_image)
                if npig == 0:
                    continue
                for t in range(T):
                    m_all = np.concatenate([mt[t, :md] for _, mt, _, _ in per_image])[order]
                    i_all = np.concatenate([ig[t, :md] for _, _, ig, _ in per_image])[order]
                    tp = np.cumsum(m_all & ~i_all).astype(float)
                    fp = np.cumsum(~m_all & ~i_all).astype(float)
                    rc = tp / npig
                    pr = list(tp / (fp + tp + np.spacing(1)))
                    recall[t, k, a, mi] = rc[-1] if len(tp) else 0
                    for i in range(len(pr) - 1, 0, -1):
                        pr[i - 1] = max(pr[i - 1], pr[i])
                    idx = np.searchsorted(rc, recall_points, side="left")
                    q = [pr[i] if i < len(pr) else 0.0 for i in idx]
                    precision[t, :, k, a, mi] = q

    def mean(x):
        x = x[x > -1]
        return float(np.mean(x)) if x.size else -1.0

    last = M - 1
    out = {"AP": mean(precision[:, :, :, 0, last]), "AP50": mean(precision[0, :, :, 0, last]),
           "AP75": mean(precision[5, :, :, 0, last])}
    for a, name in enumerate(AREAS):
        if a:
            out[f"AP_{name}"] = mean(precision[:, :, :, a, last])
    for mi, md in enumerate(max_dets):
        out[f"AR{md}"] = mean(recall[:, :, 0, mi])
    for a, name in enumerate(AREAS):
        if a:
            out[f"AR_{name}"] = mean(recall[:, :, a, last])
    return out


def random_case(rng, n_images, n_classes):
    gt, dt = {}, {}
    for i in range(n_images):
        name = f"im{i:03d}"
        objects = []
        for _ in range(rng.integers(0, 12)):
            # crowds of overlapping cells of mixed sizes, a few marked crowd/difficult
            cx, cy = rng.uniform(50, 150, 2) if rng.uniform() < 0.6 else rng.uniform(0, 600, 2)
            w, h = rng.choice([8, 25, 60, 120]) * rng.uniform(0.7, 1.3, 2)
            objects.append(([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], int(rng.integers(n_classes)), bool(rng.uniform() < 0.08)))
        gt[name] = objects
        dets = []
        for box, label, _ in objects:
            for _ in range(rng.integers(0, 3)):  # misses, hits and duplicates, jittered
                jitter = rng.normal(0, 0.12, 4) * (box[2] - box[0])
                b = np.array(box) + jitter
                b = [min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])]
                lab = label if rng.uniform() < 0.9 else int(rng.integers(n_classes))
                dets.append((b, float(np.round(rng.uniform(), 2)), lab))  # rounded scores: ties
        for _ in range(rng.integers(0, 4)):  # false positives
            x, y = rng.uniform(0, 600, 2)
            s = rng.uniform(5, 100)
            dets.append(([x, y, x + s, y + s], float(rng.uniform()), int(rng.integers(n_classes))))
        if rng.uniform() < 0.9:
            dt[name] = dets
    return gt, dt


def to_bloodcv(gt, dt, labels):
    f32 = lambda boxes: np.array(boxes, np.float32).reshape(-1, 4)
    truth = bev.ground_truth(labels, {im: (f32([o[0] for o in objs]), np.array([o[1] for o in objs], np.int64),
                                           [o[2] for o in objs]) for im, objs in gt.items()})
    preds = bev.predictions(labels, {im: (f32([d[0] for d in ds]), np.array([d[1] for d in ds], np.float32),
                                          np.array([d[2] for d in ds], np.int64)) for im, ds in dt.items()})
    return truth, preds


def to_float32(gt, dt):
    """The values bloodcv sees: boxes and scores rounded to float32."""
    r = lambda b: [float(v) for v in np.array(b, np.float32)]
    return ({im: [(r(b), l, c) for b, l, c in objs] for im, objs in gt.items()},
            {im: [(r(b), float(np.float32(s)), l) for b, s, l in ds] for im, ds in dt.items()})


@pytest.mark.parametrize("seed", range(12))
def test_coco_metrics_match_independent_implementation(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(1, 4))
    gt, dt = random_case(rng, int(rng.integers(1, 15)), n_classes)
    gt, dt = to_float32(gt, dt)
    max_dets = [1, 10, 100] if seed % 2 else [1, 5, 20]
    labels = [f"c{k}" for k in range(n_classes)]
    truth, preds = to_bloodcv(gt, dt, labels)
    ours = bev.evaluate_detections(truth, preds, max_detections=max_dets).coco
    expected = reference_coco(gt, dt, n_classes, max_dets)
    assert set(expected) == set(ours)
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def test_hand_computed_and_report_shapes():
    truth = bev.ground_truth(["WBC", "RBC"], {"a": (np.array([[10, 10, 60, 60], [100, 100, 150, 150]], np.float32),
                                                     np.array([0, 1]))})
    preds = bev.predictions(["WBC"], {"a": (np.array([[10, 10, 60, 60]], np.float32), np.array([0.9], np.float32),
                                            np.array([0]))})
    report = bev.evaluate_detections(truth, preds)
    assert report.coco["AP50"] == pytest.approx(0.5)  # WBC found (AP 1), RBC has ground truth but no prediction (AP 0)
    d = report.to_dict()
    rbc = [c for c in d["classes"] if c["label"] == "RBC"][0]
    assert rbc["ap50"] == 0.0 and report.coco["AR100"] == pytest.approx(0.5)
    assert len(d["by_iou"]) == 10 and "| IoU |" in report.to_markdown()


def test_classification_and_chain():
    r = bev.evaluate_classification([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert r.accuracy == pytest.approx(4 / 6)
    assert r.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    from sklearn.metrics import precision_recall_fscore_support
    p, rc, f1, _ = precision_recall_fscore_support([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], average="macro", zero_division=0)
    d = r.to_dict()
    assert d["macro"]["precision"] == pytest.approx(p) and d["macro"]["f1"] == pytest.approx(f1)
    assert r.confusion_image().ndim == 3
    chain = bev.evaluate_chain({"i1": [([0, 0, 10, 10], "neutrophil")], "i2": [([0, 0, 10, 10], "monocyte")]},
                               {"i1": [([0, 0, 10, 10], "neutrophil", 0.9)], "i2": [([0, 0, 10, 10], "lymphocyte", 0.9)]})
    assert (chain.cells, chain.detected, chain.correct) == (2, 2, 1)


def test_cli_eval_on_voc_reproduces_the_python_numbers(tmp_path):
    import json
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "s.xml").write_text(
        "<annotation><filename>s.jpg</filename><size><width>200</width><height>200</height></size>"
        "<object><name>WBC</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>60</xmax><ymax>60</ymax></bndbox></object>"
        "<object><name>WBC</name><bndbox><xmin>100</xmin><ymin>100</ymin><xmax>150</xmax><ymax>150</ymax></bndbox></object>"
        "</annotation>")
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "s.json").write_text(json.dumps({
        "schema": "bloodcv.analysis", "schema_version": 1, "image": {"path": "x/s.jpg", "width": 200, "height": 200},
        "cells": [{"id": 0, "box": [10, 10, 60, 60], "label": "WBC", "score": 0.9}]}))
    result = subprocess.run([str(root / "build" / "bloodcv"), "eval", "--gt", str(tmp_path / "gt"), "--pred",
                             str(tmp_path / "pred"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert report["coco"]["AP50"] == pytest.approx(51 / 101)
    assert "| AP50 | 0.5050 |" in (tmp_path / "out" / "eval.md").read_text()
