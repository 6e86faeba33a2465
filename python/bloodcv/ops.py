"""Box geometry and the NMS family, with torchvision's names where torchvision has the op.

Every function takes N×4 float boxes as numpy arrays or torch tensors (xyxy unless said otherwise)
and returns the same kind it was given; CPU float32 inputs are read without a copy. nms and
batched_nms on torch tensors are the operators torch.ops.bloodcv.nms / batched_nms (callable from
TorchScript too): any floating dtype, computed in float32; tensors on a GPU are refused (ValueError),
never copied to the CPU behind the caller's back.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from . import _core
from ._arrays import is_tensor, like, to_numpy, torch_ops

Suppression = namedtuple("Suppression", ["keep", "boxes", "scores"])
Suppression.__doc__ = """What a Suppressor keeps: Suppression(keep, boxes, scores), the kept input indices in rank order
with the output box and score of each, as arrays of the kind the boxes were given as."""
Suppression.keep.__doc__ = "Indices (int64, (K,)) of the kept input boxes, in rank order (highest first)."
Suppression.boxes.__doc__ = ("Output boxes (float32, (K, 4), [x1, y1, x2, y2] in pixels) of the kept boxes: the input's, or "
                             "merged where the strategy merges (WeightedBoxFusion, NonMaxMerge).")
Suppression.scores.__doc__ = ("Output scores (float32, (K,)) of the kept boxes: the input's, or new ones where the strategy "
                              "rescores (SoftNms decays, IouAwareNms ranking scores, WeightedBoxFusion averages).")


def _overlap(boxes1, boxes2, metric, aligned):
    a, b = to_numpy(boxes1, np.float32, "boxes1"), to_numpy(boxes2, np.float32, "boxes2")
    out = _core.box_overlap_aligned(a, b, metric) if aligned else _core.box_overlap_matrix(a, b, metric)
    return like(out, boxes1)


def box_iou(boxes1, boxes2, aligned: bool = False):
    """Intersection over union of boxes1 (N, 4) and boxes2 (M, 4), [x1, y1, x2, y2] in pixels.

    Returns float32 IoU in [0, 1] of every pair, (N, M), or of aligned pairs, (N,), when aligned=True
    (then M must equal N); the same as torchvision.ops.box_iou. Pairs with no union give 0."""
    return _overlap(boxes1, boxes2, "iou", aligned)


def box_ios(boxes1, boxes2, aligned: bool = False):
    """Intersection over the smaller area of boxes1 (N, 4) and boxes2 (M, 4), [x1, y1, x2, y2] in pixels.

    High for a box cut by a tile seam against its whole box, where IoU stays low. Returns float32 values
    in [0, 1] of every pair, (N, M), or of aligned pairs, (N,), when aligned=True."""
    return _overlap(boxes1, boxes2, "ios", aligned)


def generalized_box_iou(boxes1, boxes2, aligned: bool = False):
    """Generalized IoU (Rezatofighi et al. 2019) of boxes1 (N, 4) and boxes2 (M, 4), [x1, y1, x2, y2] in pixels.

    IoU minus the share of the enclosing box that neither box covers, in [-1, 1]. Returns float32 values of
    every pair, (N, M), or of aligned pairs, (N,), when aligned=True; as torchvision.ops.generalized_box_iou."""
    return _overlap(boxes1, boxes2, "giou", aligned)


def distance_box_iou(boxes1, boxes2, aligned: bool = False):
    """Distance IoU (Zheng et al. 2020) of boxes1 (N, 4) and boxes2 (M, 4), [x1, y1, x2, y2] in pixels.

    IoU minus the squared distance of the centres over the squared diagonal of the enclosing box, in [-1, 1].
    Returns float32 values of every pair, (N, M), or of aligned pairs, (N,), when aligned=True; as
    torchvision.ops.distance_box_iou."""
    return _overlap(boxes1, boxes2, "diou", aligned)


def box_convert(boxes, in_fmt: str, out_fmt: str):
    """Converts (N, 4) boxes from in_fmt to out_fmt, each 'xyxy' (corners), 'xywh' (top-left corner, width,
    height) or 'cxcywh' (centre, width, height), in pixels. Returns a new float32 (N, 4) array or tensor."""
    return like(_core.box_convert(to_numpy(boxes, np.float32, "boxes"), in_fmt, out_fmt), boxes)


def clip_boxes_to_image(boxes, size):
    """Clamps (N, 4) [x1, y1, x2, y2] boxes to an image of size (height, width) in pixels, as torchvision does:
    x to [0, width], y to [0, height]. Returns a new float32 (N, 4) array or tensor."""
    return like(_core.clip_boxes_to_image(to_numpy(boxes, np.float32, "boxes"), tuple(size)), boxes)


def nms(boxes, scores, iou_threshold: float):
    """Non-maximum suppression, the same as torchvision.ops.nms.

    boxes: (N, 4) [x1, y1, x2, y2] in pixels; scores: (N,); a box is dropped when its IoU with a kept,
    higher-scoring box is > iou_threshold (in [0, 1]). Returns the indices (int64) of the kept boxes by
    decreasing score. Equal scores rank by lower index first (torchvision leaves their order to its sort)."""
    if is_tensor(boxes):
        return torch_ops().nms(boxes, scores, float(iou_threshold))
    keep = _core.nms(to_numpy(boxes, np.float32, "boxes"), to_numpy(scores, np.float32, "scores"), float(iou_threshold))
    return like(keep, boxes)


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """NMS within each category of idxs ((N,) ints), never across them: the same as torchvision.ops.batched_nms.

    boxes (N, 4) [x1, y1, x2, y2] in pixels, scores (N,), iou_threshold in [0, 1]. Returns the indices (int64)
    of the kept boxes by decreasing score."""
    if is_tensor(boxes):
        return torch_ops().batched_nms(boxes, scores, idxs, float(iou_threshold))
    keep = _core.batched_nms(to_numpy(boxes, np.float32, "boxes"), to_numpy(scores, np.float32, "scores"), to_numpy(idxs, np.int64, "idxs"),
                             float(iou_threshold))
    return like(keep, boxes)


def _suppress(self, boxes, scores, labels=None, predicted_ious=None) -> Suppression:
    # Through the C++ entry point, so that a strategy written in Python is validated as when a pipeline calls it.
    keep, out_boxes, out_scores = _core.Suppressor.suppress(
        self, to_numpy(boxes, np.float32, "boxes"), to_numpy(scores, np.float32, "scores"),
        None if labels is None else to_numpy(labels, np.int64, "labels"),
        None if predicted_ious is None else to_numpy(predicted_ious, np.float32, "predicted_ious"))
    return Suppression(like(keep, boxes), like(out_boxes, boxes), like(out_scores, boxes))


_suppress.__doc__ = """Runs the strategy on boxes (N, 4) [x1, y1, x2, y2] in pixels and scores (N,), as numpy arrays or
torch tensors. labels: (N,) ints; None puts all boxes in one class. predicted_ious: (N,) in [0, 1], from
detectors with an IoU branch (IouAwareNms needs them); None when there are none.

Returns Suppression(keep, boxes, scores): the kept indices in rank order with their output boxes (merged where
the strategy merges) and scores (rescored where it rescores), of the kind the boxes were given as. Raises
ValueError on mismatched lengths, non-finite or inverted boxes, NaN scores or predicted IoUs outside [0, 1]."""
_core.Suppressor.__call__ = _suppress


def merge_tile_detections(tiles, boxes, scores, labels=None, *, image_size, merger=None, match_threshold=0.5,
                          metric="iou", class_aware=True):
    """Detections of each tile (tile-local boxes, one array per tile) → one set in image coordinates.

    tiles: the Tile list from GridTiler.tiles() or plan(). boxes, scores, labels: one array per tile, in
    the order of tiles: boxes (N, 4) [x1, y1, x2, y2] in the tile's pixels, scores (N,), labels (N,) ints
    (None: one class). image_size is (width, height) in pixels. Boxes are shifted by their tile's offset and
    clipped to the image; boxes lying wholly in a tile's padding are dropped.

    By default detections of different tiles are the same cell when the parts of their boxes inside the two
    tiles' shared region match (metric > match_threshold, in [0, 1]; metric 'iou', 'ios', 'giou' or 'diou';
    with class_aware only detections of the same label match); a group becomes one detection with the
    enclosing box of its members and the score and label of its top-scoring one (SeamMerger). A TileMerger as
    merger is used instead (e.g. make_merger('nmm')), and a Suppressor as merger pools all detections into
    that strategy (SAHI's way, PooledMerger); both ignore match_threshold, metric and class_aware. Returns a dict of 'boxes', 'scores' and 'labels' arrays (of the kind the boxes were given
    as), by decreasing score (in the merger's rank order with a merger)."""
    reference = boxes[0] if len(boxes) else None
    merged = _core.merge_tile_detections(
        list(tiles), [to_numpy(b, np.float32, f"boxes[{i}]") for i, b in enumerate(boxes)],
        [to_numpy(s, np.float32, f"scores[{i}]") for i, s in enumerate(scores)],
        None if labels is None else [to_numpy(l, np.int64, f"labels[{i}]") for i, l in enumerate(labels)], tuple(image_size), merger,
        match_threshold, metric, class_aware)
    return {k: like(v, reference) for k, v in merged.items()}
