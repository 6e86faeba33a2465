"""A compact YOLOv5-style detector (v6.0 layout) in plain PyTorch.

Backbone: Conv-BN-SiLU stem, C3 (CSP bottleneck) stages and SPPF; neck: FPN (top-down) + PAN
(bottom-up); head: three detection scales (strides 8, 16, 32) with three anchors each. ``width`` and
``depth`` scale the channels and the number of bottlenecks as YOLOv5's width/depth multipliers
(n: 0.25/0.33, s: 0.50/0.33).

In training mode ``forward`` returns the raw head maps, one ``[B, A, H, W, 5 + C]`` tensor per scale.
In eval mode it returns the decoded ``[B, N, 5 + C]`` tensor of docs/model_format.md (``"kind":
"yolov5"``): cx, cy, w, h in input pixels, then objectness and class scores, already sigmoided.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import nn

# Anchors (w, h in input pixels) for 320x320 letterboxed blood smears, set from the per-class box sizes
# of the TXL-PBC training split at 320 (sqrt(w h), 5th-50th-95th percentiles: platelets 16-24-36,
# RBCs 32-59-81, WBCs 79-124-173): platelets and small RBCs at stride 8, RBCs at 16, WBCs and large
# RBCs at 32. Plain IoU k-means (bloodcv.train.kmean_anchors) is dominated by the ~30x more numerous
# RBCs and leaves platelets without an anchor. Scale them with the input size (anchors_for_size).
DEFAULT_ANCHORS_320 = (
    (16, 16, 24, 23, 34, 33),
    (46, 45, 58, 57, 70, 69),
    (86, 85, 116, 114, 152, 150),
)
STRIDES = (8, 16, 32)


def anchors_for_size(input_size: int, anchors=DEFAULT_ANCHORS_320, base: int = 320):
    f = input_size / base
    return [[round(v * f, 1) for v in level] for level in anchors]


def make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


class Conv(nn.Module):
    """Conv2d + BatchNorm + SiLU (BatchNorm is folded into the conv by fuse())."""

    def __init__(self, c1, c2, k=1, s=1, p=None):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def forward_fused(self, x):
        return self.act(self.conv(x))


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions."""

    def __init__(self, c1, c2, n=1, shortcut=True, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools."""

    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Detect(nn.Module):
    """YOLOv5 head: a 1x1 conv per scale; decodes in eval mode."""

    def __init__(self, nc: int, anchors: Sequence[Sequence[float]], ch: Sequence[int],
                 strides: Sequence[int] = STRIDES):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float32))
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        # anchors in grid units (what the loss uses); anchor_grid in pixels (what the decoder uses)
        self.register_buffer("anchors", a / self.stride.view(-1, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)

    def set_anchors(self, anchors_px):
        a = torch.as_tensor(anchors_px, dtype=torch.float32).view(self.nl, -1, 2)
        self.anchors.copy_(a / self.stride.view(-1, 1, 1))

    def initialize_biases(self, input_size: int = 320):
        """YOLOv5's prior: about 8 objects per 640x640 image, class probability 0.6 / (nc - 0.99)."""
        for conv, s in zip(self.m, self.stride.tolist()):
            b = conv.bias.view(self.na, -1)
            with torch.no_grad():
                b[:, 4] = math.log(8 / (input_size / s) ** 2)
                b[:, 5:] = math.log(0.6 / (self.nc - 0.99))

    def forward(self, xs: List[torch.Tensor]):
        raw = []
        for i, conv in enumerate(self.m):
            x = conv(xs[i])
            bs, _, ny, nx = x.shape
            raw.append(x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return raw
        out = []
        for i, p in enumerate(raw):
            bs, _, ny, nx, _ = p.shape
            stride = self.stride[i]
            yv = torch.arange(ny, dtype=p.dtype, device=p.device)
            xv = torch.arange(nx, dtype=p.dtype, device=p.device)
            gy, gx = torch.meshgrid(yv, xv, indexing="ij")
            grid = torch.stack((gx, gy), 2).view(1, 1, ny, nx, 2) - 0.5
            anchor_grid = (self.anchors[i] * stride).view(1, self.na, 1, 1, 2)
            y = p.sigmoid()
            xy = (y[..., 0:2] * 2 + grid) * stride
            wh = (y[..., 2:4] * 2) ** 2 * anchor_grid
            out.append(torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, self.no))
        return torch.cat(out, 1)


class YoloDetector(nn.Module):
    """YOLOv5 v6.0-style detector. width/depth: channel and depth multipliers (n = 0.25/0.33)."""

    def __init__(self, num_classes: int = 3, width: float = 0.25, depth: float = 0.33,
                 anchors=None, input_size: int = 320):
        super().__init__()
        anchors = anchors if anchors is not None else anchors_for_size(input_size)
        self.config = dict(num_classes=num_classes, width=width, depth=depth,
                           anchors=[list(map(float, a)) for a in anchors], input_size=input_size)
        ch = lambda c: make_divisible(c * width, 8)  # noqa: E731
        n = lambda k: max(round(k * depth), 1)  # noqa: E731
        c1, c2, c3, c4, c5 = ch(64), ch(128), ch(256), ch(512), ch(1024)
        # backbone
        self.stem = Conv(3, c1, 6, 2, 2)                                  # P1/2
        self.down2, self.c3_2 = Conv(c1, c2, 3, 2), C3(c2, c2, n(3))      # P2/4
        self.down3, self.c3_3 = Conv(c2, c3, 3, 2), C3(c3, c3, n(6))      # P3/8
        self.down4, self.c3_4 = Conv(c3, c4, 3, 2), C3(c4, c4, n(9))      # P4/16
        self.down5, self.c3_5 = Conv(c4, c5, 3, 2), C3(c5, c5, n(3))      # P5/32
        self.sppf = SPPF(c5, c5, 5)
        # FPN (top-down)
        self.lat5 = Conv(c5, c4, 1, 1)
        self.fpn4 = C3(2 * c4, c4, n(3), shortcut=False)
        self.lat4 = Conv(c4, c3, 1, 1)
        self.fpn3 = C3(2 * c3, c3, n(3), shortcut=False)                 # out P3
        # PAN (bottom-up)
        self.pan_down3 = Conv(c3, c3, 3, 2)
        self.pan4 = C3(2 * c3, c4, n(3), shortcut=False)                 # out P4
        self.pan_down4 = Conv(c4, c4, 3, 2)
        self.pan5 = C3(2 * c4, c5, n(3), shortcut=False)                 # out P5
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.detect = Detect(num_classes, anchors, (c3, c4, c5))
        self._init_weights(input_size)

    def _init_weights(self, input_size):
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03
        self.detect.initialize_biases(input_size)

    def features(self, x):
        """The backbone and PAN neck: the head's inputs at strides 8, 16 and 32."""
        x = self.c3_2(self.down2(self.stem(x)))
        p3 = self.c3_3(self.down3(x))
        p4 = self.c3_4(self.down4(p3))
        p5 = self.sppf(self.c3_5(self.down5(p4)))
        h5 = self.lat5(p5)
        h4 = self.lat4(self.fpn4(torch.cat((self.up(h5), p4), 1)))
        o3 = self.fpn3(torch.cat((self.up(h4), p3), 1))
        o4 = self.pan4(torch.cat((self.pan_down3(o3), h4), 1))
        o5 = self.pan5(torch.cat((self.pan_down4(o4), h5), 1))
        return o3, o4, o5

    def forward(self, x):
        o3, o4, o5 = self.features(x)
        return self.detect([o3, o4, o5])

    @torch.no_grad()
    def fuse(self):
        """Folds every BatchNorm into its convolution (for inference and export); returns self."""
        for m in self.modules():
            if isinstance(m, Conv) and hasattr(m, "bn"):
                m.conv = fuse_conv_bn(m.conv, m.bn)
                delattr(m, "bn")
                m.forward = m.forward_fused
        return self


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      groups=conv.groups, bias=True).requires_grad_(False).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((b - bn.running_mean) * scale + bn.bias)
    return fused


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
