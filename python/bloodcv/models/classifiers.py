"""Cell classifiers in plain PyTorch, traceable with torch.jit.trace (bloodcv.export.export_model).

Both take a float32 tensor [B, 3, H, W], normalised as the model file's "input" says, and return logits
[B, C].

- SmallCNN: the small network of the binary (mononuclear / polynuclear) white-cell papers: three
  convolution + max-pooling stages, then two dense layers.
- ResNetIBN: a ResNet of basic blocks whose first normalisation in the low stages is IBN-a (Pan et al.,
  "Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net", ECCV 2018): instance norm
  on half of the channels, batch norm on the rest. Instance norm removes per-image contrast and colour
  statistics (stain and illumination differences between labs), batch norm keeps the discriminative
  content. Narrow and shallow, so that it trains on a CPU.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv3x3-(BN)-ReLU-maxpool ×3, flatten, dense-ReLU-dropout, dense."""

    def __init__(self, num_classes: int, input_size: int = 80, channels: Sequence[int] = (32, 64, 128),
                 hidden: int = 128, dropout: float = 0.5, batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=not batch_norm)]
            if batch_norm:
                layers += [nn.BatchNorm2d(c)]
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = input_size // 2 ** len(channels)
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for {len(channels)} pooling stages")
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class IBN(nn.Module):
    """IBN-a normalisation: InstanceNorm2d (affine) on the first `ratio` of the channels, BatchNorm2d on the rest."""

    def __init__(self, channels: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(channels * ratio)
        if not 0 < self.half < channels:
            raise ValueError(f"IBN needs 0 < channels·ratio < channels, got {channels}·{ratio}")
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


class BasicBlockIBN(nn.Module):
    """ResNet basic block; with ibn=True its first norm is IBN-a (the IBN-Net-a placement)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, ibn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = IBN(c_out) if ibn else nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetIBN(nn.Module):
    """Small ResNet-IBN-a: stem conv3x3 stride 2 (and max-pooling stride 2 with stem_pool), stages of basic blocks (IBN-a in the first
    `ibn_stages` stages, as IBN-Net puts it in conv2_x–conv4_x and not in conv5_x), global average pooling,
    dropout, linear."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128, 192),
                 depths: Sequence[int] = (1, 1, 2, 1), stem_width: int = 24, ibn_stages: int = 3,
                 dropout: float = 0.2, stem_pool: bool = False):
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError("widths and depths need one entry per stage")
        self.stem = nn.Sequential(nn.Conv2d(3, stem_width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
                                  *([nn.MaxPool2d(3, stride=2, padding=1)] if stem_pool else []))
        stages: list[nn.Module] = []
        c_in = stem_width
        for i, (w, d) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(d):
                blocks.append(BasicBlockIBN(c_in, w, stride=2 if (j == 0 and i > 0) else 1, ibn=i < ibn_stages))
                c_in = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each residual branch (Goyal et al.)
            if isinstance(m, BasicBlockIBN):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def build_classifier(spec: dict, num_classes: int, input_size: int) -> nn.Module:
    """The model a config's "model" entry names: {"name": "small_cnn" | "resnet_ibn", ...keyword arguments}."""
    spec = dict(spec)
    name = spec.pop("name")
    if name == "small_cnn":
        return SmallCNN(num_classes, input_size=input_size, **spec)
    if name == "resnet_ibn":
        return ResNetIBN(num_classes, **spec)
    raise ValueError(f"unknown model name {name!r} (small_cnn, resnet_ibn)")
