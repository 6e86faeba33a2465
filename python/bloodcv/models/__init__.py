"""Model definitions for bloodcv's training recipes (plain PyTorch, exportable with bloodcv.export)."""
from .retinanet import RetinaNetPan
