"""Detector and classifier architectures trained by bloodcv.train (plain PyTorch, exportable with bloodcv.export)."""
from .retinanet import RetinaNetPan
from .yolo import (C3, SPPF, Bottleneck, Conv, Detect, YoloDetector, anchors_for_size, count_parameters,
                   fuse_conv_bn)

__all__ = ["Bottleneck", "C3", "Conv", "Detect", "RetinaNetPan", "SPPF", "YoloDetector", "anchors_for_size",
           "count_parameters", "fuse_conv_bn"]
