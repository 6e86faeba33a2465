"""bloodcv: find, classify and count cells in blood and bone-marrow smear images.

The geometry, NMS and tiling components are C++ (bloodcv._core); this package lets numpy arrays and
torch tensors go in and come out.
"""
from ._core import (GridTiler, HardNms, IouAwareNms, NonMaxMerge, SoftNms, Suppressor, Tile,
                    WeightedBoxFusion, __version__)
from .ops import (Suppression, batched_nms, box_convert, box_ios, box_iou, clip_boxes_to_image,
                  distance_box_iou, generalized_box_iou, merge_tile_detections, nms)

__all__ = [
    "GridTiler", "HardNms", "IouAwareNms", "NonMaxMerge", "SoftNms", "Suppression", "Suppressor", "Tile",
    "WeightedBoxFusion", "__version__", "batched_nms", "box_convert", "box_ios", "box_iou",
    "clip_boxes_to_image", "distance_box_iou", "generalized_box_iou", "merge_tile_detections", "nms",
]
