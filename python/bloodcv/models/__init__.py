"""Detector and classifier architectures trained by bloodcv.train (plain PyTorch)."""
from .yolo import (C3, SPPF, Bottleneck, Conv, Detect, YoloDetector, anchors_for_size, count_parameters,
                   fuse_conv_bn)

__all__ = ["Bottleneck", "C3", "Conv", "Detect", "SPPF", "YoloDetector", "anchors_for_size",
           "count_parameters", "fuse_conv_bn"]
