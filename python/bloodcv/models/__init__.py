"""Network definitions for the trainable bloodcv models (plain PyTorch, traceable)."""
from .classifiers import IBN, BasicBlockIBN, ResNetIBN, SmallCNN, build_classifier

__all__ = ["IBN", "BasicBlockIBN", "ResNetIBN", "SmallCNN", "build_classifier"]
