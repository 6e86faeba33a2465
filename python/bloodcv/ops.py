"""Box geometry and the NMS family, with torchvision's names where torchvision has the op.

Every function takes N×4 float boxes as numpy arrays or torch tensors (xyxy unless said otherwise)
and returns the same kind it was given; CPU float32 inputs are read without a copy.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from . import _core
from ._arrays import like, to_numpy

Suppression = namedtuple("Suppression", ["keep", "boxes", "scores"])
Suppression.__doc__ = "Kept indices in rank order, with the output box and score of each."


def _overlap(boxes1, boxes2, metric, aligned):
    a, b = to_numpy(boxes1, np.float32), to_numpy(boxes2, np.float32)
    out = _core.box_overlap_aligned(a, b, metric) if aligned else _core.box_overlap_matrix(a, b, metric)
    return like(out, boxes1)


def box_iou(boxes1, boxes2, aligned: bool = False):
    """IoU of every pair (N×M), or of aligned pairs (N) when aligned=True."""
    return _overlap(boxes1, boxes2, "iou", aligned)


def box_ios(boxes1, boxes2, aligned: bool = False):
    """Intersection over the smaller area: high for a box cut by a tile seam against its whole box."""
    return _overlap(boxes1, boxes2, "ios", aligned)


def generalized_box_iou(boxes1, boxes2, aligned: bool = False):
    return _overlap(boxes1, boxes2, "giou", aligned)


def distance_box_iou(boxes1, boxes2, aligned: bool = False):
    return _overlap(boxes1, boxes2, "diou", aligned)


def box_convert(boxes, in_fmt: str, out_fmt: str):
    """Converts between 'xyxy', 'xywh' and 'cxcywh'."""
    return like(_core.box_convert(to_numpy(boxes, np.float32), in_fmt, out_fmt), boxes)


def clip_boxes_to_image(boxes, size):
    """Clamps boxes to an image of size (height, width), as torchvision does."""
    return like(_core.clip_boxes_to_image(to_numpy(boxes, np.float32), tuple(size)), boxes)


def nms(boxes, scores, iou_threshold: float):
    """Indices (int64) of the boxes kept, by decreasing score: the same as torchvision.ops.nms.

    Equal scores rank by lower index first (torchvision leaves their order to its sort)."""
    keep = _core.nms(to_numpy(boxes, np.float32), to_numpy(scores, np.float32), float(iou_threshold))
    return like(keep, boxes)


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """NMS within each category of idxs: the same as torchvision.ops.batched_nms."""
    keep = _core.batched_nms(to_numpy(boxes, np.float32), to_numpy(scores, np.float32), to_numpy(idxs, np.int64),
                             float(iou_threshold))
    return like(keep, boxes)


def _suppress(self, boxes, scores, labels=None, predicted_ious=None) -> Suppression:
    keep, out_boxes, out_scores = self.suppress(
        to_numpy(boxes, np.float32), to_numpy(scores, np.float32),
        None if labels is None else to_numpy(labels, np.int64),
        None if predicted_ious is None else to_numpy(predicted_ious, np.float32))
    return Suppression(like(keep, boxes), like(out_boxes, boxes), like(out_scores, boxes))


_suppress.__doc__ = """Runs the strategy: returns Suppression(keep, boxes, scores), the kept indices in rank
order with their output boxes (merged where the strategy merges) and scores."""
_core.Suppressor.__call__ = _suppress


def merge_tile_detections(tiles, boxes, scores, labels=None, *, image_size, merger=None, match_threshold=0.5,
                          metric="iou", class_aware=True):
    """Detections of each tile (tile-local boxes, one array per tile) → one set in image coordinates.

    image_size is (width, height). By default detections of different tiles are the same cell when the
    parts of their boxes inside the two tiles' shared region match (metric > match_threshold); a
    Suppressor as merger instead pools all detections into that strategy (SAHI's way).
    Returns a dict of 'boxes', 'scores' and 'labels' arrays (of the kind the boxes were given as)."""
    reference = boxes[0] if len(boxes) else None
    merged = _core.merge_tile_detections(
        list(tiles), [to_numpy(b, np.float32) for b in boxes], [to_numpy(s, np.float32) for s in scores],
        None if labels is None else [to_numpy(l, np.int64) for l in labels], tuple(image_size), merger,
        match_threshold, metric, class_aware)
    return {k: like(v, reference) for k, v in merged.items()}
