"""The improved RetinaNet of the bone-marrow detection paper, in plain PyTorch.

ResNet backbone (depth 18 or 34, width selectable, no pretrained weights: nothing is downloaded) → FPN (P3..P5) → a
bottom-up path-aggregation path N3..N5 where a global channel-attention block (global average pooling
of the higher FPN level → FC → ReLU → FC → sigmoid) scales the stride-2 3×3 conv of the lower level
before it is added, then a 3×3 conv → shared heads: class logits, box deltas, and an IoU-prediction
branch (one conv beside box regression; sigmoid of it is trained with BCE against the true IoU and joins
the ranking score at test time).

forward(x) returns (class_logits [B, A, C], box_deltas [B, A, 4], iou_logits [B, A]) with anchors
ordered as bloodcv's AnchorDecoder generates them (level, row, column, ratio × scale), so the exported
model runs in the C++ runtime unchanged (docs/model_format.md, decoder "anchor").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

DEFAULT_ANCHORS = {"strides": [8, 16, 32], "sizes": [32, 64, 128], "aspect_ratios": [0.5, 1.0, 2.0],
                   "scales": [1.0, 2 ** (1 / 3), 2 ** (2 / 3)], "center_offset": 0.5}


def generate_anchors(input_size, strides, sizes, aspect_ratios, scales, center_offset=0.5):
    """The anchors of bloodcv::generate_anchors, in the same order: [A, 4] xyxy, and the count per level."""
    w_in, h_in = input_size
    out, per_level = [], []
    for stride, size in zip(strides, sizes):
        shapes = []
        for ratio in aspect_ratios:
            for scale in scales:
                h_ratio = math.sqrt(ratio)
                shapes.append((size * scale / h_ratio, size * scale * h_ratio))
        wh = torch.tensor(shapes)
        ys = (torch.arange(h_in // stride, dtype=torch.float32) + center_offset) * stride
        xs = (torch.arange(w_in // stride, dtype=torch.float32) + center_offset) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centers = torch.stack([cx, cy], -1).reshape(-1, 1, 2)
        boxes = torch.cat([centers - wh / 2, centers + wh / 2], -1).reshape(-1, 4)
        out.append(boxes)
        per_level.append(len(boxes))
    return torch.cat(out), per_level


class ChannelAttention(nn.Module):
    """Global average pooling → FC → ReLU → FC → sigmoid: one weight per channel."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x):
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return w[:, :, None, None]


class PathAggregation(nn.Module):
    """N3 = P3; N(i+1) = conv3x3(P(i+1) + CA(P(i+1)) ⊙ conv3x3_s2(N(i)))."""

    def __init__(self, channels: int, levels: int):
        super().__init__()
        self.down = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(levels - 1))
        self.attention = nn.ModuleList(ChannelAttention(channels) for _ in range(levels - 1))
        self.fuse = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(levels - 1))

    def forward(self, p):
        n = [p[0]]
        for i in range(len(p) - 1):
            down = self.down[i](n[-1])
            n.append(self.fuse[i](p[i + 1] + self.attention[i](p[i + 1]) * down))
        return n


def resnet_backbone(depth: int = 18, width: int = 64):
    """A ResNet of BasicBlocks (depth 18 or 34) whose first stage has `width` channels (torchvision's: 64);
    narrower keeps a CPU-trained model small. Returns (stem + stage 1, stages 2, 3, 4, their channels)."""
    from torchvision.models.resnet import BasicBlock, ResNet
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}[depth]
    net = ResNet(BasicBlock, blocks)
    if width != 64:  # rebuild the stages at the new width
        net.inplanes = width
        net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        net.bn1 = nn.BatchNorm2d(width)
        net.layer1 = net._make_layer(BasicBlock, width, blocks[0])
        net.layer2 = net._make_layer(BasicBlock, 2 * width, blocks[1], stride=2)
        net.layer3 = net._make_layer(BasicBlock, 4 * width, blocks[2], stride=2)
        net.layer4 = net._make_layer(BasicBlock, 8 * width, blocks[3], stride=2)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
    return stem, net.layer2, net.layer3, net.layer4, [2 * width, 4 * width, 8 * width]


class RetinaNetPan(nn.Module):
    def __init__(self, num_classes: int, depth: int = 18, channels: int = 128, head_convs: int = 2,
                 anchors_per_location: int = 9, pan: bool = True, iou_branch: bool = True, width: int = 64):
        super().__init__()
        self.stem, self.c3, self.c4, self.c5, in_channels = resnet_backbone(depth, width)
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.pan = PathAggregation(channels, len(in_channels)) if pan else None
        self.num_classes, self.k, self.iou_branch = num_classes, anchors_per_location, iou_branch

        def tower():
            layers = []
            for _ in range(head_convs):
                layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(16, channels), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls_out = nn.Conv2d(channels, anchors_per_location * num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(channels, anchors_per_location * 4, 3, padding=1)
        self.iou_out = nn.Conv2d(channels, anchors_per_location, 3, padding=1)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01
        # ImageNet statistics inside the network: it takes RGB in [0, 1], as the training data gives it
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        nn.init.normal_(self.box_out.weight, std=0.01)
        nn.init.zeros_(self.box_out.bias)

    def features(self, x):
        c2 = self.stem((x - self.mean) / self.std)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        lat = [l(c) for l, c in zip(self.lateral, [c3, c4, c5])]
        p5 = lat[2]
        p4 = lat[1] + F.interpolate(p5, size=lat[1].shape[-2:], mode="nearest")
        p3 = lat[0] + F.interpolate(p4, size=lat[0].shape[-2:], mode="nearest")
        p = [s(f) for s, f in zip(self.smooth, [p3, p4, p5])]
        return self.pan(p) if self.pan is not None else p

    def _flatten(self, t, per_anchor: int):
        b, _, h, w = t.shape  # [B, k * n, H, W] → [B, H * W * k, n]: row, column, then anchor
        return t.view(b, self.k, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * self.k, per_anchor)

    def forward(self, x):
        cls, box, iou = [], [], []
        for f in self.features(x):
            ct, bt = self.cls_tower(f), self.box_tower(f)
            cls.append(self._flatten(self.cls_out(ct), self.num_classes))
            box.append(self._flatten(self.box_out(bt), 4))
            iou.append(self._flatten(self.iou_out(bt), 1))
        if self.iou_branch:
            return torch.cat(cls, 1), torch.cat(box, 1), torch.cat(iou, 1).squeeze(-1)
        return torch.cat(cls, 1), torch.cat(box, 1)


def decode_deltas(anchors, deltas, means=(0.0, 0.0, 0.0, 0.0), stds=(1.0, 1.0, 1.0, 1.0)):
    """Box deltas → xyxy boxes, as bloodcv's AnchorDecoder (dw, dh clamped at log(1000/16))."""
    d = deltas * torch.tensor(stds, dtype=deltas.dtype) + torch.tensor(means, dtype=deltas.dtype)
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cxa, cya = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    clamp = math.log(1000 / 16)
    cx, cy = cxa + d[..., 0] * wa, cya + d[..., 1] * ha
    w, h = wa * d[..., 2].clamp(max=clamp).exp(), ha * d[..., 3].clamp(max=clamp).exp()
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def anchor_metadata(labels, input_size, anchors=None, iou_branch=True, score_threshold=0.05, nms_iou_threshold=0.5):
    """bloodcv.json for an exported RetinaNetPan (RGB in [0, 1], letterboxed; it normalises itself)."""
    a = dict(DEFAULT_ANCHORS, **(anchors or {}))
    return {"task": "detection", "labels": list(labels), "input_size": list(input_size),
            "input": {"color": "rgb", "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "letterbox",
                      "pad_value": 114},
            "decoder": {"kind": "anchor", **a, "box_means": [0, 0, 0, 0], "box_stds": [1, 1, 1, 1],
                        "score_threshold": score_threshold, "nms_iou_threshold": nms_iou_threshold, "pre_nms_top_k": 1000,
                        "iou_branch": iou_branch, "iou_alpha": 0.5}}
