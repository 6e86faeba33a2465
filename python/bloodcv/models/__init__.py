"""Detector and classifier architectures trained by bloodcv.train (plain PyTorch, exportable with bloodcv.export)."""
from .classifiers import IBN, BasicBlockIBN, OverlapViT, RegionSelection, ResNetIBN, SmallCNN, build_classifier
from .retinanet import RetinaNetPan
from .yolo import (C3, SPPF, Bottleneck, Conv, Detect, YoloDetector, anchors_for_size, count_parameters,
                   fuse_conv_bn)

__all__ = ["Bottleneck", "BasicBlockIBN", "C3", "Conv", "Detect", "IBN", "OverlapViT", "RegionSelection", "ResNetIBN", "RetinaNetPan", "SPPF", "SmallCNN",
           "YoloDetector", "anchors_for_size", "build_classifier", "count_parameters", "fuse_conv_bn"]
