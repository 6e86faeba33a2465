"""Options of the components that no other test exercises, each against hand-computed values or a reference
written here: the anchor and YOLOv5 decoders' pre_nms_top_k, box_means/box_stds and max_detections; the
assigners' min_pos_iou, center_prior and iou_lambda; the report writers called from Python; and the crop that
TorchScriptClassifier takes around each box (crop_padding, the image border, the pad value, the resize)."""
import csv
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import bloodcv
from bloodcv import assign as A
from bloodcv.assign import BACKGROUND, IGNORE
from bloodcv.export import export_model, load_model, update_description

from conftest import make_test_models_module, smear


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


Constant = make_test_models_module().Constant  # a detector whose raw outputs are fixed tensors


# --- the anchor (RetinaNet-style) decoder -------------------------------------------------------------------
# Input 64x64, stretched from a 64x64 image (so model-input pixels are image pixels). Two levels, one anchor
# shape each, centre offset 0.5: level 0 is 4x4 anchors of 16x16 at stride 16 (indices 0-15, row by row),
# level 1 is 2x2 anchors of 32x32 at stride 32 (indices 16-19).
SIDE = 64
N_ANCHORS = 16 + 4


def anchor_box(index):
    """The anchor's box, written out from the documented order."""
    stride, size, local = (16, 16.0, index) if index < 16 else (32, 32.0, index - 16)
    per_row = SIDE // stride
    cx, cy = (local % per_row + 0.5) * stride, (local // per_row + 0.5) * stride
    return np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])


def decode_reference(index, raw, means=(0, 0, 0, 0), stds=(1, 1, 1, 1)):
    """deltas = raw * std + mean; the centre moves by (dx * w, dy * h), the sides scale by exp(dw), exp(dh)."""
    a = anchor_box(index)
    aw, ah = a[2] - a[0], a[3] - a[1]
    dx, dy, dw, dh = (np.asarray(raw, float) * np.asarray(stds, float)) + np.asarray(means, float)
    cx, cy = (a[0] + a[2]) / 2 + dx * aw, (a[1] + a[3]) / 2 + dy * ah
    w, h = aw * math.exp(dw), ah * math.exp(dh)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def anchor_detector(tmp_path, name, logits, deltas, labels=("a", "b"), **decoder):
    entry = {"kind": "anchor", "strides": [16, 32], "sizes": [16, 32], "aspect_ratios": [1.0], "scales": [1.0],
             "center_offset": 0.5, "score_threshold": 0.05, "nms_iou_threshold": 0.5, **decoder}
    meta = {"task": "detection", "name": name, "labels": list(labels), "input_size": [SIDE, SIDE],
            "input": {"resize": "stretch"}, "decoder": entry}
    path = export_model(Constant(logits, deltas), tmp_path / f"{name}.pt", meta, torch.rand(1, 3, SIDE, SIDE))
    return bloodcv.TorchScriptDetector(str(path))


def detect_one(detector):
    (out,) = detector.detect([np.zeros((SIDE, SIDE, 3), np.uint8)])
    return out


def raw_outputs(classes, logits_at, deltas_at=None):
    """Class logits (-10 everywhere but logits_at {(anchor, class): logit}) and deltas (0 but deltas_at)."""
    logits = torch.full((N_ANCHORS, classes), -10.0)
    for (a, c), v in logits_at.items():
        logits[a, c] = v
    deltas = torch.zeros(N_ANCHORS, 4)
    for a, d in (deltas_at or {}).items():
        deltas[a] = torch.tensor(d, dtype=torch.float32)
    return logits, deltas


def test_the_reference_anchors_are_the_decoders_anchors(tmp_path):
    # Zero deltas decode to the anchors themselves: one candidate per anchor, all 20 kept (no overlap > 0.5).
    logits, deltas = raw_outputs(1, {(a, 0): 1.0 + a / 10 for a in range(N_ANCHORS)})
    out = detect_one(anchor_detector(tmp_path, "grid", logits, deltas, labels=["a"]))
    order = sorted(range(N_ANCHORS), key=lambda a: -a)  # higher logit, higher rank
    np.testing.assert_allclose(out["boxes"], [anchor_box(a) for a in order], atol=1e-4)
    np.testing.assert_allclose(out["scores"], [sigmoid(1.0 + a / 10) for a in order], rtol=1e-5)


def test_box_means_and_stds_scale_and_shift_the_raw_deltas(tmp_path):
    ln2 = math.log(2.0)
    # Anchor 6 (level 0, x 2, y 1: centred at (40, 24), 16x16), label b; anchor 18 (level 1, x 0, y 1:
    # centred at (16, 48), 32x32), label a.
    raw6, raw18 = (0.5, 0.0, ln2, 0.0), (0.25, -0.25, -ln2, 0.2)
    logits, deltas = raw_outputs(2, {(6, 1): 2.0, (18, 0): 1.0}, {6: raw6, 18: raw18})
    means, stds = (0.1, -0.2, 0.05, 0.1), (0.1, 0.1, 0.2, 0.2)

    plain = detect_one(anchor_detector(tmp_path, "plain", logits, deltas))
    scaled = detect_one(anchor_detector(tmp_path, "scaled", logits, deltas, box_means=list(means), box_stds=list(stds)))

    # By hand, anchor 6 without means/stds: centre (40 + 0.5 * 16, 24), width 16 * 2 -> (32, 16, 64, 32).
    # With them: dx = 0.5 * 0.1 + 0.1 = 0.15, dy = -0.2, dw = 0.2 ln 2 + 0.05, dh = 0.1: centre
    # (40 + 0.15 * 16, 24 - 0.2 * 16) = (42.4, 20.8), width 16 * 2^0.2 * e^0.05, height 16 * e^0.1.
    w6, h6 = 16 * 2 ** 0.2 * math.exp(0.05), 16 * math.exp(0.1)
    by_hand_6 = [42.4 - w6 / 2, 20.8 - h6 / 2, 42.4 + w6 / 2, 20.8 + h6 / 2]
    np.testing.assert_allclose(decode_reference(6, raw6, means, stds), by_hand_6, rtol=1e-12)

    assert plain["labels"].tolist() == scaled["labels"].tolist() == [1, 0]  # sigmoid(2) > sigmoid(1)
    np.testing.assert_allclose(plain["scores"], [sigmoid(2.0), sigmoid(1.0)], rtol=1e-6)
    np.testing.assert_allclose(plain["boxes"], [[32, 16, 64, 32], decode_reference(18, raw18)], atol=1e-4)
    np.testing.assert_allclose(scaled["boxes"], [by_hand_6, decode_reference(18, raw18, means, stds)], atol=1e-4)
    assert np.abs(plain["boxes"] - scaled["boxes"]).max() > 1.0  # the options do move the boxes
    unclipped = np.array([decode_reference(18, raw18), by_hand_6, decode_reference(18, raw18, means, stds)])
    assert ((unclipped >= 0) & (unclipped <= SIDE)).all()  # inside the image: the detector's clipping hides nothing


# Level 0: anchors 0, 5, 10, 15 (a diagonal: no two overlap) with logits 4, 3, 2, 1; level 1: anchors 16, 17,
# 18 with logits 0.5, 0.4, 0.3 (each overlaps level-0 anchors by IoU 0.25 at most: NMS keeps all seven).
TOP_K_LOGITS = {0: 4.0, 5: 3.0, 10: 2.0, 15: 1.0, 16: 0.5, 17: 0.4, 18: 0.3}


@pytest.mark.parametrize("k, kept", [
    (None, [0, 5, 10, 15, 16, 17, 18]),  # default 1000 per level: all
    (2, [0, 5, 16, 17]),                 # two per level: a global top 2 would be [0, 5], a global top 4 [0, 5, 10, 15]
    (1, [0, 16]),
    (3, [0, 5, 10, 16, 17, 18]),
])
def test_pre_nms_top_k_keeps_the_k_best_of_each_level(tmp_path, k, kept):
    logits, deltas = raw_outputs(1, {(a, 0): v for a, v in TOP_K_LOGITS.items()})
    keys = {} if k is None else {"pre_nms_top_k": k}
    out = detect_one(anchor_detector(tmp_path, f"topk{k}", logits, deltas, labels=["a"], **keys))
    expected = sorted(kept, key=lambda a: -TOP_K_LOGITS[a])
    np.testing.assert_allclose(out["boxes"], [anchor_box(a) for a in expected], atol=1e-4)
    np.testing.assert_allclose(out["scores"], [sigmoid(TOP_K_LOGITS[a]) for a in expected], rtol=1e-6)


def test_pre_nms_top_k_counts_classes_of_one_anchor_as_separate_candidates(tmp_path):
    # Anchor 0 scores high for both labels, anchor 5 for label a: with k = 2 the two candidates of anchor 0
    # fill the level (candidates are (anchor, class) pairs), and NMS is class-aware, so both survive it.
    logits, deltas = raw_outputs(2, {(0, 0): 3.0, (0, 1): 2.5, (5, 0): 2.0})
    out = detect_one(anchor_detector(tmp_path, "topk_classes", logits, deltas, pre_nms_top_k=2))
    assert out["labels"].tolist() == [0, 1]
    np.testing.assert_allclose(out["boxes"], [anchor_box(0), anchor_box(0)], atol=1e-4)
    everything = detect_one(anchor_detector(tmp_path, "all_classes", logits, deltas))
    assert everything["labels"].tolist() == [0, 1, 0]


def test_pre_nms_top_k_applies_before_nms(tmp_path):
    # Anchor 1 (logit 3) is moved one anchor width left onto anchor 0 (logit 4): the same box, suppressed by
    # NMS. Anchor 2 (logit 2) stands apart. With k = 2 the level's candidates are anchors 0 and 1 -> after NMS
    # only anchor 0's box; were k applied after NMS, anchor 2 would take the freed place.
    logits, deltas = raw_outputs(1, {(0, 0): 4.0, (1, 0): 3.0, (2, 0): 2.0}, {1: (-1.0, 0.0, 0.0, 0.0)})
    np.testing.assert_allclose(decode_reference(1, (-1.0, 0, 0, 0)), anchor_box(0))
    limited = detect_one(anchor_detector(tmp_path, "before_nms_k2", logits, deltas, labels=["a"], pre_nms_top_k=2))
    np.testing.assert_allclose(limited["boxes"], [anchor_box(0)], atol=1e-4)
    np.testing.assert_allclose(limited["scores"], [sigmoid(4.0)], rtol=1e-6)
    unlimited = detect_one(anchor_detector(tmp_path, "before_nms_all", logits, deltas, labels=["a"]))
    np.testing.assert_allclose(unlimited["boxes"], [anchor_box(0), anchor_box(2)], atol=1e-4)


# Six separate candidates over both levels: anchor 18 (level 1, logit 6) and level-0 anchors 0, 3, 12, 15, 9 of
# logits 5, 4, 3, 2, 1 (level-1 anchor 18 covers x 0-32, y 32-64: IoU 0.25 with anchors 9 and 12, 0 with the rest).
MAX_DET_LOGITS = {18: 6.0, 0: 5.0, 3: 4.0, 12: 3.0, 15: 2.0, 9: 1.0}


@pytest.mark.parametrize("max_detections, count", [(None, 6), (3, 3), (1, 1), (0, 0), (-1, 6)])
def test_anchor_max_detections_keeps_the_best(tmp_path, max_detections, count):
    logits, deltas = raw_outputs(1, {(a, 0): v for a, v in MAX_DET_LOGITS.items()})
    keys = {} if max_detections is None else {"max_detections": max_detections}
    out = detect_one(anchor_detector(tmp_path, f"maxdet{max_detections}", logits, deltas, labels=["a"], **keys))
    best = sorted(MAX_DET_LOGITS, key=lambda a: -MAX_DET_LOGITS[a])[:count]
    assert len(out["boxes"]) == count
    np.testing.assert_allclose(out["boxes"].reshape(-1, 4), np.reshape([anchor_box(a) for a in best], (-1, 4)), atol=1e-4)
    np.testing.assert_allclose(out["scores"], [sigmoid(MAX_DET_LOGITS[a]) for a in best], rtol=1e-6)


def test_anchor_max_detections_counts_what_nms_keeps(tmp_path):
    # Anchor 1 (logit 3) decodes onto anchor 0 (logit 4) and is suppressed; anchors 2 and 3 (logits 2, 1)
    # stand apart. max_detections 2 keeps the two best survivors, anchors 0 and 2: the suppressed
    # duplicate takes no place.
    logits, deltas = raw_outputs(1, {(0, 0): 4.0, (1, 0): 3.0, (2, 0): 2.0, (3, 0): 1.0}, {1: (-1.0, 0.0, 0.0, 0.0)})
    out = detect_one(anchor_detector(tmp_path, "maxdet_nms", logits, deltas, labels=["a"], max_detections=2))
    np.testing.assert_allclose(out["boxes"], [anchor_box(0), anchor_box(2)], atol=1e-4)
    np.testing.assert_allclose(out["scores"], [sigmoid(4.0), sigmoid(2.0)], rtol=1e-6)


# --- the YOLOv5 decoder ------------------------------------------------------------------------------------
# Rows cx, cy, w, h, objectness, class scores (2 labels); confidence = objectness x the best class score.
YOLO_ROWS = [
    [10, 10, 16, 16, 0.9, 0.5, 0.1],    # 0.45, label 0: the highest objectness, yet third
    [40, 10, 16, 16, 0.6, 0.1, 1.0],    # 0.6, label 1
    [10, 40, 16, 16, 0.8, 0.9, 0.2],    # 0.72, label 0
    [40, 40, 16, 16, 0.7, 0.25, 0.5],   # 0.35, label 1
]
YOLO_CONFIDENCE = [0.9 * 0.5, 0.6 * 1.0, 0.8 * 0.9, 0.7 * 0.5]
YOLO_LABEL = [0, 1, 0, 1]


@pytest.mark.parametrize("max_detections, count", [(None, 4), (2, 2), (1, 1), (-1, 4)])
def test_yolov5_max_detections_keeps_the_most_confident(tmp_path, max_detections, count):
    entry = {"kind": "yolov5", "score_threshold": 0.25, "nms_iou_threshold": 0.45}
    if max_detections is not None:
        entry["max_detections"] = max_detections
    meta = {"task": "detection", "name": "yolo", "labels": ["a", "b"], "input_size": [SIDE, SIDE], "decoder": entry}
    path = export_model(Constant(torch.tensor(YOLO_ROWS, dtype=torch.float32)), tmp_path / f"yolo{max_detections}.pt", meta,
                        torch.rand(1, 3, SIDE, SIDE))
    (out,) = bloodcv.TorchScriptDetector(str(path)).detect([np.zeros((SIDE, SIDE, 3), np.uint8)])  # letterbox 1:1
    ranking = sorted(range(4), key=lambda i: -YOLO_CONFIDENCE[i])
    assert ranking == [2, 1, 0, 3]  # by confidence; by objectness row 0 would come first
    best = ranking[:count]
    cx, cy, w, h = np.array(YOLO_ROWS, float)[best, :4].T.reshape(4, -1)
    np.testing.assert_allclose(out["boxes"].reshape(-1, 4), np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), atol=1e-5)
    np.testing.assert_allclose(out["scores"], [YOLO_CONFIDENCE[i] for i in best], rtol=1e-6)
    assert out["labels"].tolist() == [YOLO_LABEL[i] for i in best]


# Two pairs of 16-px boxes, each 7 px apart: IoU 9·16 / (2·256 − 9·16) = 0.39.
PAIR_ROWS = [
    [20, 20, 16, 16, 0.9, 1.0, 0.0],   # "a" 0.9
    [27, 20, 16, 16, 0.8, 1.0, 0.0],   # "a" 0.8, IoU 0.39 with the row above
    [20, 60, 16, 16, 0.9, 0.0, 1.0],   # "b" 0.9
    [27, 60, 16, 16, 0.8, 0.0, 1.0],   # "b" 0.8, IoU 0.39 with the row above
]


def test_a_label_keeps_its_own_nms_threshold_from_the_file(tmp_path):
    """nms_iou_threshold_by_label in the model file: label a's pair at IoU 0.39 is one cell, b's pair stays; the
    caller's one nms_iou_threshold replaces every label's; bloodcv.HardNms takes the same thresholds by index."""
    entry = {"kind": "yolov5", "score_threshold": 0.25, "nms_iou_threshold": 0.45, "nms_iou_threshold_by_label": {"a": 0.3}}
    meta = {"task": "detection", "name": "pairs", "labels": ["a", "b"], "input_size": [SIDE, SIDE], "decoder": entry}
    path = export_model(Constant(torch.tensor(PAIR_ROWS, dtype=torch.float32)), tmp_path / "pairs.pt", meta,
                        torch.rand(1, 3, SIDE, SIDE))
    image = [np.zeros((SIDE, SIDE, 3), np.uint8)]
    (out,) = bloodcv.TorchScriptDetector(str(path)).detect(image)
    assert out["labels"].tolist() == [0, 1, 1] and out["scores"].tolist() == pytest.approx([0.9, 0.9, 0.8])
    (out,) = bloodcv.TorchScriptDetector(str(path), nms_iou_threshold=0.45).detect(image)
    assert out["labels"].tolist() == [0, 1, 0, 1]
    boxes = np.array([[r[0] - 8, r[1] - 8, r[0] + 8, r[1] + 8] for r in PAIR_ROWS], np.float32)
    assert iou(boxes[0], boxes[1]) == pytest.approx(9 * 16 / (2 * 256 - 9 * 16))
    scores, labels = np.array([r[4] for r in PAIR_ROWS], np.float32), np.array([0, 0, 1, 1])
    keep, _, _ = bloodcv.HardNms(iou_threshold=0.45, class_iou_thresholds=[0.3]).suppress(boxes, scores, labels)
    assert keep.tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match="class-aware"):
        bloodcv.HardNms(class_aware=False, class_iou_thresholds=[0.3])
    meta["decoder"] = dict(entry, nms_iou_threshold_by_label={"c": 0.3})
    bad = export_model(Constant(torch.tensor(PAIR_ROWS, dtype=torch.float32)), tmp_path / "bad.pt", meta, torch.rand(1, 3, SIDE, SIDE))
    with pytest.raises(RuntimeError, match="bad.pt.*'c', which is not one of the model's labels"):  # a bad model file: RuntimeError
        bloodcv.TorchScriptDetector(str(bad))


def test_update_description_sets_a_decoder_threshold_without_retraining(tmp_path):
    entry = {"kind": "yolov5", "score_threshold": 0.25, "nms_iou_threshold": 0.45}
    meta = {"task": "detection", "name": "pairs", "labels": ["a", "b"], "input_size": [SIDE, SIDE], "decoder": entry,
            "training": {"epochs": 3}}
    path = export_model(Constant(torch.tensor(PAIR_ROWS, dtype=torch.float32)), tmp_path / "pairs.pt", meta,
                        torch.rand(1, 3, SIDE, SIDE))
    image = [np.zeros((SIDE, SIDE, 3), np.uint8)]
    assert len(bloodcv.TorchScriptDetector(str(path)).detect(image)[0]["labels"]) == 4
    new = update_description(path, {"decoder": {"nms_iou_threshold_by_label": {"a": 0.3}}})
    assert new["decoder"] == dict(entry, nms_iou_threshold_by_label={"a": 0.3}) and new["training"] == {"epochs": 3}
    assert load_model(path)[1] == new
    assert bloodcv.TorchScriptDetector(str(path)).detect(image)[0]["labels"].tolist() == [0, 1, 1]
    before = path.read_bytes()
    with pytest.raises(ValueError, match="decoder.kind"):
        update_description(path, {"decoder": {"kind": "ssd"}})
    assert path.read_bytes() == before and not path.with_name("pairs.pt.partial").exists()


# --- assigners ----------------------------------------------------------------------------------------------
def iou(a, b):
    """IoU of two xyxy boxes, written out."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


# Two boxes whose best anchor is a poor match: gt 0 covers a quarter of anchor 0 (IoU 0.25), gt 1 covers 0.36
# of anchor 1. Both IoUs are below neg_iou_threshold 0.4, so without low-quality matches both anchors are
# background; anchor 2 overlaps nothing.
MQ_ANCHORS = [[0, 0, 10, 10], [20, 0, 30, 10], [100, 100, 110, 110]]
MQ_GT = [[0, 0, 5, 5], [20, 0, 26, 6]]


@pytest.mark.parametrize("min_pos_iou, expected", [
    (0.0, [0, 1, BACKGROUND]),            # both boxes claim their best anchor
    (0.3, [BACKGROUND, 1, BACKGROUND]),   # gt 0's best IoU 0.25 < 0.3: no match; gt 1's 0.36 > 0.3
    (0.25, [BACKGROUND, 1, BACKGROUND]),  # "above min_pos_iou" (assign.hpp): 0.25 itself is not above
    (0.36001, [BACKGROUND] * 3),
    (0.5, [BACKGROUND] * 3),
])
def test_max_iou_min_pos_iou_gates_low_quality_matches(min_pos_iou, expected):
    assert iou(MQ_ANCHORS[0], MQ_GT[0]) == 0.25 and abs(iou(MQ_ANCHORS[1], MQ_GT[1]) - 0.36) < 1e-12
    anchors, gt = torch.tensor(MQ_ANCHORS, dtype=torch.float32), torch.tensor(MQ_GT, dtype=torch.float32)
    r = A.MaxIoUAssigner(min_pos_iou=min_pos_iou, match_low_quality=True).assign(anchors, gt, torch.tensor([4, 7]))
    assert r.gt_index.tolist() == expected
    assert r.labels.tolist() == [[4, 7][g] if g >= 0 else -1 for g in expected]
    np.testing.assert_allclose(r.overlaps, [0.25, 0.36, 0.0], rtol=1e-6)
    # without low-quality matches min_pos_iou changes nothing: both are background
    off = A.MaxIoUAssigner(min_pos_iou=min_pos_iou, match_low_quality=False).assign(anchors, gt, torch.tensor([4, 7]))
    assert off.gt_index.tolist() == [BACKGROUND] * 3


def test_max_iou_min_pos_iou_leaves_real_positives_and_ignores_alone():
    # gt 0 matches anchor 0 exactly (IoU 1 >= 0.5: positive whatever min_pos_iou); anchor 1 has IoU 0.45 with it
    # (between the thresholds: ignored). A high min_pos_iou must not demote either.
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 4.5]], dtype=torch.float32)
    gt = torch.tensor([[0, 0, 10, 10]], dtype=torch.float32)
    r = A.MaxIoUAssigner(min_pos_iou=0.99).assign(anchors, gt, torch.tensor([2]))
    assert r.gt_index.tolist() == [0, IGNORE]


def ota_costs(anchors, gt, labels, pred, scores, reg_lambda=3.0):
    """The documented OTA cost per (box, anchor) and per anchor for the background, in float64."""
    p = scores.double().clamp(1e-6, 1 - 1e-6)
    neg = -torch.log1p(-p).sum(1)
    fg = torch.stack([neg - torch.log(p[:, l]) + torch.log1p(-p[:, l]) +
                      reg_lambda * (1 - torch.tensor([iou(g.tolist(), b.tolist()) for b in pred], dtype=torch.float64))
                      for g, l in zip(gt, labels.tolist())])
    return fg, neg


def test_ota_center_prior_keeps_anchors_centred_outside_the_box_out():
    gt = torch.tensor([[0.0, 0, 40, 40]])
    labels = torch.tensor([0])
    # Anchor 0 is centred inside the box (20, 20) but predicts poorly (p 0.3, its box IoU 0.5 with the box);
    # anchor 1 is centred outside it (55, 20) but predicts the box itself with p 0.95.
    anchors = torch.tensor([[10.0, 10, 30, 30], [35, 0, 75, 40]])
    pred = torch.tensor([[0.0, 0, 40, 20], [0, 0, 40, 40]])
    scores = torch.tensor([[0.3], [0.95]])
    assert iou(pred[0].tolist(), gt[0].tolist()) == 0.5 and iou(pred[1].tolist(), gt[0].tolist()) == 1.0
    # k = floor(0.5 + 1.0) = 1: the box supplies one label, the background the other.
    fg, bg = ota_costs(anchors, gt, labels, pred, scores)
    # by hand: anchor 0: -ln 0.3 + 3 * 0.5 = 2.704 against the background's -ln 0.7 = 0.357;
    #          anchor 1: -ln 0.95 + 0 = 0.051 against -ln 0.05 = 2.996
    np.testing.assert_allclose(fg[0], [-math.log(0.3) + 1.5, -math.log(0.95)], rtol=1e-5)
    np.testing.assert_allclose(bg, [-math.log(0.7), -math.log(0.05)], rtol=1e-5)
    # Of the two plans, box -> anchor 1 costs 0.051 + 0.357 = 0.41, box -> anchor 0 costs 2.704 + 2.996 = 5.7.
    assert fg[0, 1] + bg[0] < fg[0, 0] + bg[1] - 5

    free = A.OtaAssigner(center_prior=False).assign(anchors, gt, labels, pred_boxes=pred, pred_scores=scores)
    assert free.gt_index.tolist() == [BACKGROUND, 0] and free.labels.tolist() == [-1, 0]
    assert free.weights[1] > 0.9 and free.weights[0] == 0
    # With the prior (default), anchor 1's cost grows by center_prior_cost: the box takes anchor 0 instead.
    prior = A.OtaAssigner(center_prior=True).assign(anchors, gt, labels, pred_boxes=pred, pred_scores=scores)
    assert prior.gt_index.tolist() == [0, BACKGROUND] and prior.labels.tolist() == [0, -1]
    assert prior.weights[0] > 0.9 and prior.weights[1] == 0
    np.testing.assert_allclose(prior.overlaps, [iou(anchors[0].tolist(), gt[0].tolist()), iou(anchors[1].tolist(), gt[0].tolist())],
                               rtol=1e-6)
    assert A.OtaAssigner().assign(anchors, gt, labels, pred_boxes=pred, pred_scores=scores).gt_index.tolist() == [0, BACKGROUND]
    # center_prior_cost is the size of that push: 0 is as no prior at all
    zero = A.OtaAssigner(center_prior=True, center_prior_cost=0.0).assign(anchors, gt, labels, pred_boxes=pred, pred_scores=scores)
    assert zero.gt_index.tolist() == [BACKGROUND, 0]


def test_paa_iou_lambda_decides_between_confident_and_well_placed_predictions():
    gt = torch.tensor([[0.0, 0, 40, 40]])
    anchors = torch.stack([torch.tensor([i * 2.0, 0, 40 + i * 2.0, 40]) for i in range(4)])  # all candidates of the box
    # Anchors 0, 1: confident (p 0.9, 0.88) but their predicted boxes cover a quarter of the box (IoU 0.25);
    # anchors 2, 3: less confident (p 0.5, 0.52) with predicted boxes on the box (IoU 1).
    pred = torch.tensor([[0.0, 0, 10, 40], [30, 0, 40, 40], [0, 0, 40, 40], [0, 0, 40, 40]])
    p = torch.tensor([0.9, 0.88, 0.5, 0.52])
    scores = torch.stack([p, 1 - p], 1)  # class 0 is the box's
    pred_iou = [iou(b.tolist(), gt[0].tolist()) for b in pred]
    assert pred_iou == [0.25, 0.25, 1.0, 1.0]

    def assigned(lam):
        return A.PaaAssigner(top_k=9, iou_lambda=lam).assign(anchors, gt, torch.tensor([0]), pred_boxes=pred, pred_scores=scores)

    # score = p x IoU^lambda. lambda 0: 0.9, 0.88 | 0.5, 0.52 -> the confident pair is the high component.
    # lambda 1: 0.225, 0.22 | 0.5, 0.52 -> the well-placed pair. lambda 2: 0.05625, 0.055 | 0.5, 0.52 -> the same.
    expected = {0.0: [0, 0, BACKGROUND, BACKGROUND], 1.0: [BACKGROUND, BACKGROUND, 0, 0], 2.0: [BACKGROUND, BACKGROUND, 0, 0]}
    for lam, gt_index in expected.items():
        s = [float(pi) * q ** lam for pi, q in zip(p.tolist(), pred_iou)]
        high = [i for i in range(4) if s[i] > (max(s) + min(s)) / 2]
        assert [0 if i in high else BACKGROUND for i in range(4)] == gt_index, lam  # the reference's split
        r = assigned(lam)
        assert r.gt_index.tolist() == gt_index, lam
        positive = r.gt_index >= 0
        assert (r.weights[positive] > 0.5).all() and (r.weights[~positive] == 0).all()


# --- reports written from Python ----------------------------------------------------------------------------
# A 160 x 120 image in one tile; the detector returns these boxes in an order that is not by score, all
# coordinates and scores exact in float32.
REPORT_DETECTIONS = [  # box, label (0 WBC, 1 RBC), score
    ([70.5, 10.0, 100.0, 40.25], 1, 0.5),
    ([10.25, 20.5, 50.75, 60.0], 0, 0.875),
    ([110.0, 70.0, 150.5, 110.75], 0, 0.625),
]
TYPES = ["lymphocyte", "neutrophil", "monocyte"]
# The classifier's probabilities by the box's x1 (so a mix-up of cells shows).
TYPE_PROBABILITIES = {10.25: [0.25, 0.625, 0.125], 110.0: [0.5, 0.25, 0.25]}


class KnownDetector(bloodcv.Detector):
    def detect(self, images):
        boxes = np.array([d[0] for d in REPORT_DETECTIONS], np.float32)
        return [{"boxes": boxes, "scores": np.array([d[2] for d in REPORT_DETECTIONS], np.float32),
                 "labels": np.array([d[1] for d in REPORT_DETECTIONS], np.int64)} for _ in images]

    def labels(self):
        return ["WBC", "RBC"]

    def input_size(self):
        return (160, 120)


class KnownClassifier(bloodcv.Classifier):
    def __init__(self):
        super().__init__()
        self.seen = []

    def classify(self, image, boxes):
        self.seen.append(np.array(boxes))
        return np.array([TYPE_PROBABILITIES[float(b[0])] for b in boxes], np.float32)

    def labels(self):
        return TYPES


@pytest.fixture
def report_result():
    image = smear(160, 120)
    classifier = KnownClassifier()
    pipeline = bloodcv.Pipeline(KnownDetector(), classifier, tiler=bloodcv.GridTiler(tile_size=(160, 120), overlap=0.0))
    result = pipeline.analyze(image)
    assert result.tiles == 1
    # only the WBC boxes went to the classifier
    np.testing.assert_array_equal(np.concatenate(classifier.seen), [REPORT_DETECTIONS[1][0], REPORT_DETECTIONS[2][0]])
    return image, result


def expected_cells():
    """The cells as the report should carry them: by decreasing detector score, typed where WBC."""
    cells = []
    for box, label, score in sorted(REPORT_DETECTIONS, key=lambda d: -d[2]):
        cell = {"box": box, "label": ["WBC", "RBC"][label], "category_id": label + 1, "score": score}
        if label == 0:
            probs = TYPE_PROBABILITIES[box[0]]
            order = sorted(range(3), key=lambda k: (-probs[k], k))  # ties keep label order
            cell.update(type=TYPES[order[0]], type_score=probs[order[0]], top=[(TYPES[k], probs[k]) for k in order],
                        entropy=-sum(p * math.log(p) for p in probs), probs=dict(zip(TYPES, probs)))
        cells.append(cell)
    return cells


def test_csv_rows_carry_the_detectors_boxes_labels_and_scores(report_result):
    _, result = report_result
    header = "id,x1,y1,x2,y2,label,score,type,type_score,top1,top1_p,top2,top2_p,top3,top3_p,type_entropy"
    lines = [header]
    for i, c in enumerate(expected_cells()):
        row = [str(i), *(f"{v:.2f}" for v in c["box"]), c["label"], f"{c['score']:.5f}"]
        if "type" in c:
            row += [c["type"], f"{c['type_score']:.5f}"]
            for name, p in c["top"]:
                row += [name, f"{p:.5f}"]
            row.append(f"{c['entropy']:.5f}")
        else:
            row += [""] * 9
        lines.append(",".join(row))
    text = result.to_csv()
    assert text == "\n".join(lines) + "\n"
    # by hand, for one row: the second cell is the lower-scoring WBC (0.625), typed lymphocyte 0.5, entropy
    # -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) = 1.03972
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[1]["x1"] == "110.00" and rows[1]["y2"] == "110.75" and rows[1]["score"] == "0.62500"
    assert rows[1]["type"] == rows[1]["top1"] == "lymphocyte" and rows[1]["type_entropy"] == "1.03972"
    assert rows[2]["label"] == "RBC" and rows[2]["type"] == "" and rows[2]["type_entropy"] == ""


def test_json_cells_carry_the_detectors_boxes_labels_and_scores(report_result):
    image, result = report_result
    doc = json.loads(result.to_json(image_path="smear.png"))
    assert doc["schema"] == "bloodcv.analysis" and doc["schema_version"] == 1
    assert doc["image"] == {"path": "smear.png", "width": 160, "height": 120}
    assert doc["detector_labels"] == ["WBC", "RBC"] and doc["classifier_labels"] == TYPES
    assert doc["counts"] == {"WBC": 2, "RBC": 1}
    assert doc["type_counts"] == {"lymphocyte": 1, "neutrophil": 1, "monocyte": 0}
    assert doc["differential_percent"] == {"lymphocyte": 50.0, "neutrophil": 50.0, "monocyte": 0.0}
    assert doc["differential_cells"] == 2
    expected = expected_cells()
    assert len(doc["cells"]) == len(expected)
    for i, (got, want) in enumerate(zip(doc["cells"], expected)):
        assert got["id"] == i and got["box"] == want["box"] and got["label"] == want["label"] and got["score"] == want["score"]
        if "type" in want:
            assert got["type"] == want["type"] and got["type_score"] == want["type_score"] and got["uncertain"] is False
            assert [(t["type"], t["probability"]) for t in got["type_top3"]] == want["top"]
            assert got["type_entropy"] == pytest.approx(want["entropy"], rel=1e-6)
            assert got["type_probabilities"] == want["probs"]
        else:
            assert not {"type", "type_score", "type_top3", "type_probabilities"} & set(got)
    # the same cells as the arrays
    arrays = result.arrays()
    np.testing.assert_array_equal(arrays["boxes"], [c["box"] for c in expected])
    np.testing.assert_array_equal(arrays["scores"], [c["score"] for c in expected])


def test_coco_results_carry_the_detectors_boxes(report_result):
    _, result = report_result
    coco = json.loads(result.to_coco(image_id=42))
    want = [{"image_id": 42, "category_id": c["category_id"],
             "bbox": [c["box"][0], c["box"][1], c["box"][2] - c["box"][0], c["box"][3] - c["box"][1]], "score": c["score"]}
            for c in expected_cells()]
    assert coco == want


def test_write_writes_the_four_reports_with_the_same_content(report_result, tmp_path):
    image, result = report_result
    out = tmp_path / "reports"
    paths = result.write(image, str(out), "field7", image_id=9)
    assert paths == {"overlay": str(out / "field7.overlay.jpg"), "json": str(out / "field7.json"), "csv": str(out / "field7.csv"),
                     "coco": str(out / "field7.coco.json")}
    assert sorted(p.name for p in out.iterdir()) == ["field7.coco.json", "field7.csv", "field7.json", "field7.overlay.jpg"]
    assert Path(paths["json"]).read_text() == result.to_json()
    assert Path(paths["csv"]).read_text() == result.to_csv()
    assert Path(paths["coco"]).read_text() == result.to_coco(image_id=9)
    assert [c["box"] for c in json.loads(Path(paths["json"]).read_text())["cells"]] == [c["box"] for c in expected_cells()]
    assert [c["image_id"] for c in json.loads(Path(paths["coco"]).read_text())] == [9, 9, 9]
    # the overlay: a JPEG of result.overlay(image), with the boxes drawn where the cells are
    written = cv2.imread(paths["overlay"], cv2.IMREAD_COLOR)
    drawn = result.overlay(image)
    assert written.shape == drawn.shape == image.shape
    def gray(bgr):
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(int)

    # JPEG loses colour detail around the thin lines (chroma subsampling), little brightness: the written file is
    # the overlay, far nearer it than the plain image, which the labels and boxes change a lot
    assert np.abs(gray(written) - gray(drawn)).mean() < 2
    assert np.abs(written.astype(int) - drawn.astype(int)).mean() < np.abs(written.astype(int) - image.astype(int)).mean() / 3
    for box, _, _ in REPORT_DETECTIONS:
        x1, y1, x2, y2 = (int(v) for v in box)
        left_edge = drawn[(y1 + y2) // 2, x1]
        assert (left_edge != image[(y1 + y2) // 2, x1]).any(), box
        inside = drawn[(y1 + y2) // 2, (x1 + x2) // 2]
        assert (inside == image[(y1 + y2) // 2, (x1 + x2) // 2]).all(), box  # only outlines, the middle untouched


# --- the crop TorchScriptClassifier takes -------------------------------------------------------------------
PAD_VALUE = 114  # the pad value export_model writes by default


def pattern_image(height=60, width=80):
    """BGR, every channel within 100-160 (the colour classifier's softmax of 10 x the mean is far from saturated
    there): red in vertical stripes 7 px wide, green in horizontal stripes 5 px high, blue falling along both
    axes. The mean colour of a crop depends on exactly which pixels it takes, and the stripes' sharp edges
    make the resize's interpolation show."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 2] = 100 + 60 * ((x // 7) % 2)
    image[..., 1] = 100 + 60 * ((y // 5) % 2)
    image[..., 0] = 160 - (x + y) * 60 // (width + height - 2)
    return image


def expected_crop(image, box, padding, pad_value=PAD_VALUE, size=(32, 32), clip=True, border=cv2.BORDER_CONSTANT):
    """The documented crop: the box clipped to the image, widened by padding x its size on each side (at least
    one pixel), out to whole pixels; what falls outside the image is pad_value; stretched to the input size.
    clip=False and border=BORDER_REPLICATE give wrong crops, to show that the comparison can tell them apart."""
    h, w = image.shape[:2]
    box = np.asarray(box, np.float64)
    x1, y1, x2, y2 = np.clip(box, 0, [w, h, w, h]) if clip else box
    px, py = max((x2 - x1) * padding, 1.0), max((y2 - y1) * padding, 1.0)
    cx1, cy1, cx2, cy2 = math.floor(x1 - px), math.floor(y1 - py), math.ceil(x2 + px), math.ceil(y2 + py)
    margin = max(0, -cx1, -cy1, cx2 - w, cy2 - h)
    framed = cv2.copyMakeBorder(image, margin, margin, margin, margin, border, value=(pad_value,) * 3)
    crop = framed[cy1 + margin:cy2 + margin, cx1 + margin:cx2 + margin]
    if crop.shape[:2] != (size[1], size[0]):
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_LINEAR)
    return crop


def colour_probabilities(bgr_crop):
    """color_classifier.pt: logits = 10 x the mean of each of R, G, B in [0, 1]; softmax."""
    logits = 10.0 * bgr_crop[..., ::-1].reshape(-1, 3).astype(np.float64).mean(0) / 255.0
    e = np.exp(logits - logits.max())
    return e / e.sum()


CROP_BOXES = {
    "inside": [20.3, 15.7, 41.2, 33.9],          # fractional: floor/ceil of the widened box, 26 x 23 -> 32 x 32
    "at the corner": [0.0, 0.0, 20.0, 16.0],     # the padding reaches past the top and the left edge
    "partly outside": [70.0, 50.0, 95.0, 75.0],  # clipped to (70, 50, 80, 60) first, then padded by 1 px
    "tiny": [40.0, 30.0, 42.0, 31.0],            # the padding is at least one pixel: a 4 x 3 crop
}


def test_classifier_crop_is_the_documented_one(models):
    image = pattern_image()
    classifier = bloodcv.TorchScriptClassifier(models["color_classifier"])
    assert classifier.input_size() == (32, 32) and classifier.labels() == ["red", "green", "blue"]
    assert json.loads(classifier.metadata_json)["crop_padding"] == 0.1
    boxes = np.array(list(CROP_BOXES.values()), np.float32)
    got = classifier.classify(image, boxes)
    want = np.array([colour_probabilities(expected_crop(image, b, 0.1)) for b in boxes])
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-4)
    assert got["labels"].tolist() == want.argmax(1).tolist() == [2, 2, 1, 0]
    np.testing.assert_allclose(got["scores"], want.max(1), atol=1e-4)
    assert len({tuple(np.round(p, 3)) for p in want}) == 4  # four different answers
    # The comparison can tell a wrong crop: the partly-outside box padded before clipping, the corner box
    # with the image's edge repeated instead of the pad value, and the tiny box without its margin.
    unclipped = colour_probabilities(expected_crop(image, CROP_BOXES["partly outside"], 0.1, clip=False))
    assert np.abs(unclipped - want[2]).max() > 0.05
    replicated = colour_probabilities(expected_crop(image, CROP_BOXES["at the corner"], 0.1, border=cv2.BORDER_REPLICATE))
    assert np.abs(replicated - want[1]).max() > 0.05
    bare = colour_probabilities(image[30:31, 40:42])
    assert np.abs(bare - want[3]).max() > 0.05


def test_classifier_crop_padding_option_overrides_the_files(models):
    image = pattern_image()
    # A 16 x 16 box at crop_padding 0.5 makes a 32 x 32 crop: no resize at all, so the probabilities follow
    # from the pixels exactly.
    box = [30.0, 20.0, 46.0, 36.0]
    wide = bloodcv.TorchScriptClassifier(models["color_classifier"], crop_padding=0.5)
    crop = expected_crop(image, box, 0.5)
    np.testing.assert_array_equal(crop, image[12:44, 22:54])
    got = wide.classify(image, np.array([box], np.float32))["probabilities"][0]
    np.testing.assert_allclose(got, colour_probabilities(crop), atol=1e-5)
    # the file's 0.1 gives another crop, and another answer
    narrow = bloodcv.TorchScriptClassifier(models["color_classifier"]).classify(image, np.array([box], np.float32))["probabilities"][0]
    np.testing.assert_allclose(narrow, colour_probabilities(expected_crop(image, box, 0.1)), atol=1e-4)
    assert np.abs(narrow - got).max() > 0.05
    # crop_padding 0: only the one-pixel minimum remains
    bare = bloodcv.TorchScriptClassifier(models["color_classifier"], crop_padding=0.0).classify(image, np.array([box], np.float32))
    np.testing.assert_allclose(bare["probabilities"][0], colour_probabilities(expected_crop(image, box, 0.0)), atol=1e-4)
    assert np.abs(bare["probabilities"][0] - narrow).max() > 0.02


class PadProbe(torch.nn.Module):
    """logits 10 x (mean R, mean G^2, 0). A pad value adds the same to every channel, which the colour model's
    softmax cannot see; here it adds f x pad to one logit and f x pad^2 to another."""

    def forward(self, x):
        return 10.0 * torch.stack([x[:, 0].mean(dim=(1, 2)), (x[:, 1] ** 2).mean(dim=(1, 2)), torch.zeros_like(x[:, 0, 0, 0])], 1)


def probe_probabilities(bgr_crop):
    rgb = bgr_crop[..., ::-1].reshape(-1, 3).astype(np.float64) / 255.0
    logits = 10.0 * np.array([rgb[:, 0].mean(), (rgb[:, 1] ** 2).mean(), 0.0])
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_classifier_pads_with_the_models_pad_value(tmp_path):
    image = pattern_image()
    box = np.array([CROP_BOXES["at the corner"], CROP_BOXES["partly outside"], CROP_BOXES["inside"]], np.float32)
    answers = {}
    for pad in (0, 114, 255):
        meta = {"task": "classification", "name": "probe", "labels": ["r", "g2", "zero"], "input_size": [32, 32],
                "crop_padding": 0.1, "input": {"pad_value": pad}}
        path = export_model(PadProbe(), tmp_path / f"pad{pad}.pt", meta, torch.rand(2, 3, 32, 32))
        got = bloodcv.TorchScriptClassifier(str(path)).classify(image, box)["probabilities"]
        want = np.array([probe_probabilities(expected_crop(image, b, 0.1, pad_value=pad)) for b in box])
        np.testing.assert_allclose(got, want, atol=1e-4)
        answers[pad] = got
    # the boxes at the border see the pad value, the one inside does not
    assert (np.abs(answers[0][:2] - answers[255][:2]).max(axis=1) > 0.01).all()
    np.testing.assert_allclose(answers[0][2], answers[255][2], atol=1e-6)


def test_training_crop_helper_matches_the_runtime_crop_at_the_border(models):
    from bloodcv.training import classifier as tc
    image = pattern_image()
    box = CROP_BOXES["partly outside"]
    runtime = bloodcv.TorchScriptClassifier(models["color_classifier"]).classify(image, np.array([box], np.float32))
    training_crop = cv2.resize(tc.crop_like_runtime(image, box, 0.1, PAD_VALUE), (32, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(colour_probabilities(training_crop), runtime["probabilities"][0], atol=1e-3)
