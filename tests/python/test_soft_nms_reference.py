"""Soft-NMS against an independent reference written from Bodla et al. (2017), Algorithm 1, on random boxes;
and linear Soft-NMS on a pair whose IoU lies between 0 and the threshold (left untouched)."""
import numpy as np
import pytest

import bloodcv
from conftest import random_boxes


def iou(a, b):
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def soft_nms_reference(boxes, scores, method, iou_threshold=0.3, sigma=0.5, score_threshold=0.001):
    """Repeatedly keep the highest remaining score (lower index on ties) and decay the rest by its IoU."""
    boxes, scores = boxes.astype(np.float64), scores.astype(np.float64).copy()
    remaining = [i for i in range(len(scores)) if scores[i] >= score_threshold]
    keep, kept_scores = [], []
    while remaining:
        best = max(remaining, key=lambda i: (scores[i], -i))
        keep.append(best)
        kept_scores.append(scores[best])
        remaining.remove(best)
        if not remaining:
            break
        rest = np.array(remaining)
        overlap = iou(boxes[best], boxes[rest])
        if method == "gaussian":
            scores[rest] *= np.exp(-overlap ** 2 / sigma)
        else:
            scores[rest] *= np.where(overlap > iou_threshold, 1 - overlap, 1.0)
        remaining = [i for i in remaining if scores[i] >= score_threshold]
    return np.array(keep, np.int64), np.array(kept_scores)


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_matches_the_reference_on_random_boxes(method):
    rng = np.random.default_rng(7)
    for case in range(40):
        n = int(rng.integers(1, 40))
        boxes = random_boxes(rng, n, extent=200.0, max_side=80.0)
        scores = rng.uniform(0.01, 1.0, n).astype(np.float32)
        result = bloodcv.SoftNms(method=method, class_aware=False)(boxes, scores)
        keep, kept_scores = soft_nms_reference(boxes, scores, method)
        assert np.asarray(result.keep).tolist() == keep.tolist(), (method, case)
        np.testing.assert_allclose(np.asarray(result.scores), kept_scores, rtol=1e-5, atol=1e-7)


def test_linear_soft_nms_leaves_a_pair_below_the_threshold_untouched():
    # IoU of the pair: 40 / 160 = 0.25, between 0 and the threshold 0.3: no decay. At threshold 0.2 it decays
    # by 1 - 0.25.
    boxes = np.array([[0, 0, 10, 10], [0, 6, 10, 16]], np.float32)  # overlap 10 x 4 = 40, union 160
    scores = np.array([0.9, 0.8], np.float32)
    kept = bloodcv.SoftNms(method="linear", iou_threshold=0.3)(boxes, scores)
    assert np.asarray(kept.keep).tolist() == [0, 1] and np.allclose(kept.scores, [0.9, 0.8])
    decayed = bloodcv.SoftNms(method="linear", iou_threshold=0.2)(boxes, scores)
    assert np.allclose(decayed.scores, [0.9, 0.8 * 0.75])
