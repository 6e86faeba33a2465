"""Label assignment for training loops: which anchors learn which cell.

Each strategy is a class with `assign(anchors, gt_boxes, gt_labels, ...)` returning an AssignResult of
torch tensors on the inputs' device. The work is C++ (ATen) registered as torch.ops.bloodcv.*.

    from bloodcv.assign import AtssAssigner

    assigner = AtssAssigner(top_k=9)
    with torch.no_grad():
        result = assigner.assign(anchors, gt_boxes, gt_labels, anchors_per_level=[6400, 1600, 400])
    positive = result.gt_index >= 0           # learn the box result.gt_index[positive]
    negative = result.gt_index == BACKGROUND  # learn "no cell"; IGNORE takes no part

See examples/training_step.py for a whole training step.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Sequence

import torch

from ._arrays import torch_ops

torch_ops()

BACKGROUND = -1
IGNORE = -2

AssignResult = namedtuple("AssignResult", ["gt_index", "overlaps", "labels", "weights", "num_gts"])
AssignResult.__doc__ = """gt_index [A] int64 (box index, BACKGROUND or IGNORE), overlaps [A] (IoU with the assigned box;
background: the best IoU of any box), labels [A] int64 (the box's label or -1), weights [A] (soft weight of
the assignment: PAA's positive posterior, OT's transport mass, 1 for other positives), num_gts (the number of
ground-truth boxes), as the C++ bloodcv::AssignResult."""


def _boxes(x, name: str) -> torch.Tensor:
    """x ([N, 4] tensor, numpy array or nested list) as a float tensor; any other shape is a ValueError naming it."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float32)
    if t.dim() != 2 or t.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {list(t.shape)}")
    return t


def _inputs(anchors, gt_boxes, gt_labels):
    # As given (an empty list as int64): converting to long here would turn a label of 1.5 into 1 unseen.
    labels = gt_labels if isinstance(gt_labels, torch.Tensor) else torch.as_tensor(gt_labels)
    if labels.numel() == 0 and labels.is_floating_point():
        labels = labels.long()
    return _boxes(anchors, "anchors"), _boxes(gt_boxes, "gt_boxes"), labels


def _result(tensors, gt_boxes) -> AssignResult:
    return AssignResult(*tensors, num_gts=int(gt_boxes.shape[0]))


class LabelAssigner:
    """Base of the strategies: assign() for one image, assign_batch() for a list of images. Every strategy
    takes the same keywords (pred_boxes, pred_scores, anchors_per_level), so a training loop calls any of
    them alike; a strategy ignores those it does not use, and a misspelt keyword is a TypeError."""

    def assign(self, anchors, gt_boxes, gt_labels, pred_boxes=None, pred_scores=None, anchors_per_level=None) -> AssignResult:
        raise NotImplementedError

    def assign_batch(self, anchors, gt_boxes: Sequence, gt_labels: Sequence, **per_image) -> list[AssignResult]:
        """anchors: one [A, 4] tensor shared by all images, or a list; other keyword arguments are lists."""
        n = len(gt_boxes)
        anchors = anchors if isinstance(anchors, (list, tuple)) else [anchors] * n
        return [self.assign(anchors[i], gt_boxes[i], gt_labels[i], **{k: v[i] for k, v in per_image.items()}) for i in range(n)]


class MaxIoUAssigner(LabelAssigner):
    """RetinaNet: IoU >= pos → positive, < neg → background, between → ignored; each box also keeps its best anchor."""

    def __init__(self, pos_iou_threshold=0.5, neg_iou_threshold=0.4, min_pos_iou=0.0, match_low_quality=True):
        self.args = (float(pos_iou_threshold), float(neg_iou_threshold), float(min_pos_iou), bool(match_low_quality))

    def assign(self, anchors, gt_boxes, gt_labels, pred_boxes=None, pred_scores=None, anchors_per_level=None) -> AssignResult:
        anchors, gt_boxes, gt_labels = _inputs(anchors, gt_boxes, gt_labels)
        return _result(torch.ops.bloodcv.max_iou_assign(anchors, gt_boxes, gt_labels, *self.args), gt_boxes)


class AtssAssigner(LabelAssigner):
    """ATSS: per level the top_k anchors nearest each box centre; IoU threshold mean + std; centre inside the box."""

    def __init__(self, top_k=9):
        self.top_k = int(top_k)

    def assign(self, anchors, gt_boxes, gt_labels, pred_boxes=None, pred_scores=None, anchors_per_level=None) -> AssignResult:
        anchors, gt_boxes, gt_labels = _inputs(anchors, gt_boxes, gt_labels)
        levels = list(anchors_per_level) if anchors_per_level is not None else [anchors.shape[0]]
        return _result(torch.ops.bloodcv.atss_assign(anchors, gt_boxes, gt_labels, levels, self.top_k), gt_boxes)


class PaaAssigner(LabelAssigner):
    """PAA: score = class probability x IoU(predicted box)^lambda; top_k per level; a 2-component GMM by EM splits them
    (posterior > 0.5 positive; with ignore_band, the thesis' rule: below the low mean negative, from it to the high
    mean ignored, from the high mean up positive)."""

    def __init__(self, top_k=9, iou_lambda=1.0, candidate_iou=0.1, em_iterations=100, em_tolerance=1e-3, ignore_band=False):
        self.args = (int(top_k), float(iou_lambda), float(candidate_iou), int(em_iterations), float(em_tolerance),
                     bool(ignore_band))

    def assign(self, anchors, gt_boxes, gt_labels, pred_boxes=None, pred_scores=None, anchors_per_level=None) -> AssignResult:
        if pred_boxes is None or pred_scores is None:
            raise ValueError("PAA needs pred_boxes [A, 4] and pred_scores [A, C] (class probabilities)")
        anchors, gt_boxes, gt_labels = _inputs(anchors, gt_boxes, gt_labels)
        pred_boxes, pred_scores = _boxes(pred_boxes, "pred_boxes"), torch.as_tensor(pred_scores)
        levels = list(anchors_per_level) if anchors_per_level is not None else [anchors.shape[0]]
        return _result(torch.ops.bloodcv.paa_assign(anchors, gt_boxes, gt_labels, pred_boxes, pred_scores, levels, *self.args), gt_boxes)


class OtaAssigner(LabelAssigner):
    """OTA: optimal transport from boxes (k labels each) and background to anchors, Sinkhorn-Knopp in log domain."""

    def __init__(self, epsilon=0.1, iterations=50, top_q=20, reg_lambda=3.0, center_prior=True, center_prior_cost=1e5):
        self.args = (float(epsilon), int(iterations), int(top_q), float(reg_lambda), bool(center_prior), float(center_prior_cost))

    def assign(self, anchors, gt_boxes, gt_labels, pred_boxes=None, pred_scores=None, anchors_per_level=None) -> AssignResult:
        if pred_boxes is None or pred_scores is None:
            raise ValueError("OTA needs pred_boxes [A, 4] and pred_scores [A, C] (class probabilities)")
        anchors, gt_boxes, gt_labels = _inputs(anchors, gt_boxes, gt_labels)
        pred_boxes, pred_scores = _boxes(pred_boxes, "pred_boxes"), torch.as_tensor(pred_scores)
        return _result(torch.ops.bloodcv.ota_assign(anchors, gt_boxes, gt_labels, pred_boxes, pred_scores, *self.args), gt_boxes)


def sinkhorn(cost, supply, demand, epsilon=0.1, iterations=50):
    """Entropic optimal-transport plan [S, D] for cost [S, D], supply [S], demand [D], in the log domain."""
    return torch.ops.bloodcv.sinkhorn_log(cost, supply, demand, float(epsilon), int(iterations))


def fit_gmm_1d(x, means, variances=(1.0, 1.0), weights=(0.5, 0.5), max_iterations=100, tolerance=1e-3):
    """Two-component 1-D Gaussian mixture by EM (as scikit-learn's GaussianMixture): dict of weights, means,
    variances (component order kept) and the number of iterations."""
    init = torch.tensor([*weights, *means, *variances], dtype=torch.float64)
    out = torch.ops.bloodcv.gmm_fit_1d(torch.as_tensor(x, dtype=torch.float64), init, int(max_iterations), float(tolerance))
    return {"weights": out[0:2], "means": out[2:4], "variances": out[4:6], "iterations": int(out[6])}


ASSIGNERS = {"max_iou": MaxIoUAssigner, "atss": AtssAssigner, "paa": PaaAssigner, "ota": OtaAssigner}


def make_assigner(name: str, **options) -> LabelAssigner:
    """An assigner by name (max_iou, atss, paa, ota), as training recipes take it from a config."""
    if name not in ASSIGNERS:
        raise ValueError(f"unknown assigner {name!r}; choose one of {sorted(ASSIGNERS)}")
    return ASSIGNERS[name](**options)
