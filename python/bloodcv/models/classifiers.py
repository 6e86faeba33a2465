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
- OverlapViT: the improved Vision Transformer of the bone-marrow thesis: a convolutional stem and an
  overlapping patch embedding (kernel > stride, so neighbouring patches share pixels and a cell's edge is
  never cut between two tokens), pre-norm encoder layers, and a discriminative-region selection module
  in front of the last layer (RegionSelection).

ResNetIBN and OverlapViT also give `logits_and_embedding(x)`: the recipe's metric losses
(bloodcv.models.metric_loss) act on the embedding the linear classifier reads.
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

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = torch.flatten(self.pool(self.stages(self.stem(x))), 1)
        return self.fc(self.dropout(embedding)), embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_embedding(x)[0]


class SelfAttention(nn.Module):
    """Multi-head self-attention that also returns its attention maps [B, heads, N, N]."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attention = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        out = (self.dropout(attention) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out), attention


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, attention = self.attention(self.norm1(x))
        x = x + y
        return x + self.mlp(self.norm2(x)), attention


class RegionSelection(nn.Module):
    """Discriminative-region selection over the encoder's attention maps.

    Input: the class token's attention to the patch tokens in each of L layers, [B, L, heads, N]. A
    squeeze-excitation block weighs the layers per image (squeeze: how peaked each layer's attention is,
    its largest value averaged over heads; excitation: FC, ReLU, FC, sigmoid). For each head the patch of
    largest weighted attention is selected. Returns the selected indices [B, heads] and their weighted
    attention [B, heads]; the caller scales the selected tokens by 1 + that attention, which is how the
    loss reaches the SE weights (the argmax itself has no gradient).
    """

    def __init__(self, layers: int, reduction: int = 2):
        super().__init__()
        hidden = max(layers // reduction, 2)
        self.excite = nn.Sequential(nn.Linear(layers, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, layers),
                                    nn.Sigmoid())

    def forward(self, cls_attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        squeeze = cls_attention.amax(-1).mean(-1)                             # [B, L]
        weights = self.excite(squeeze)
        weights = weights / weights.sum(1, keepdim=True)                      # a convex mix of the layers
        weighted = (weights[:, :, None, None] * cls_attention).sum(1)         # [B, heads, N]
        score, index = weighted.max(-1)
        return index, score


class OverlapViT(nn.Module):
    """Vision Transformer with overlapping patches and discriminative-region selection.

    Patch embedding "overlap": a conv3x3 stride-2 stem (BN, ReLU), then a conv of kernel `patch_kernel` >
    stride `patch_stride`, so that neighbouring tokens share pixels; "plain" (the ViT's, for the ablation):
    non-overlapping 2·patch_stride-pixel patches of the input, the same token grid. Then a learned position
    embedding and a class token. The first depth - 1 encoder layers see every token; with select_regions,
    the last layer sees only the class token and the `heads` tokens RegionSelection picks from all earlier
    layers' attention (one per head), so the class token's final update attends to the most discriminative
    parts of the cell only; without, every token.
    """

    def __init__(self, num_classes: int, input_size: int = 96, dim: int = 128, depth: int = 6, heads: int = 4,
                 mlp_ratio: float = 2.0, patch_kernel: int = 7, patch_stride: int = 4, dropout: float = 0.1,
                 select_regions: bool = True, patch_embedding: str = "overlap"):
        super().__init__()
        if depth < 2:
            raise ValueError("OverlapViT needs depth >= 2 (region selection feeds the last layer)")
        if patch_embedding == "overlap":
            if patch_kernel <= patch_stride:
                raise ValueError(f"overlapping patches need patch_kernel > patch_stride, got {patch_kernel} <= {patch_stride}")
            stem_width = dim // 4
            self.stem = nn.Sequential(nn.Conv2d(3, stem_width, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
            self.patch_embed = nn.Conv2d(stem_width, dim, patch_kernel, stride=patch_stride, padding=patch_kernel // 2)
            side = (input_size + 1) // 2                                             # after the stem
            side = (side + 2 * (patch_kernel // 2) - patch_kernel) // patch_stride + 1
        elif patch_embedding == "plain":
            self.stem = nn.Identity()
            self.patch_embed = nn.Conv2d(3, dim, 2 * patch_stride, stride=2 * patch_stride)
            side = input_size // (2 * patch_stride)
        else:
            raise ValueError(f"patch_embedding must be overlap or plain, got {patch_embedding!r}")
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for the patch embedding")
        self.tokens = side * side
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.zeros(1, self.tokens + 1, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.layers = nn.ModuleList([EncoderLayer(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.select = RegionSelection(depth - 1) if select_regions else None
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(self.stem(x)).flatten(2).transpose(1, 2)          # [B, N, dim]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.position
        cls_attention = []
        for layer in self.layers[:-1]:
            x, attention = layer(x)
            cls_attention.append(attention[:, :, 0, 1:])
        if self.select is not None:
            index, score = self.select(torch.stack(cls_attention, 1))
            parts = x[:, 1:].gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[2])) * (1 + score.unsqueeze(-1))
            x = torch.cat([x[:, :1], parts], 1)
        x, _ = self.layers[-1](x)
        embedding = self.norm(x[:, 0])
        return self.fc(embedding), embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_embedding(x)[0]


def build_classifier(spec: dict, num_classes: int, input_size: int) -> nn.Module:
    """The model a config's "model" entry names: {"name": "small_cnn" | "resnet_ibn" | "overlap_vit", ...keyword arguments}."""
    spec = dict(spec)
    name = spec.pop("name")
    if name == "small_cnn":
        return SmallCNN(num_classes, input_size=input_size, **spec)
    if name == "resnet_ibn":
        return ResNetIBN(num_classes, **spec)
    if name == "overlap_vit":
        return OverlapViT(num_classes, input_size=input_size, **spec)
    raise ValueError(f"unknown model name {name!r} (small_cnn, resnet_ibn, overlap_vit)")
