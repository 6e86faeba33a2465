"""Metric losses the classifier recipe adds to cross-entropy, on a batch's embeddings [B, D] and labels [B].

- center_triplet_loss: the centre-based triplet loss with hard mining of the ResNet-IBN white-cell paper.
  For each class y* in the batch, with c_k the mean embedding of class k in the batch,
      max(0, max_{i: y_i = y*} d(f_i, c_y*) + margin - min_{j: y_j != y*} d(f_j, c_y*)),
  averaged over the classes that have negatives in the batch: the farthest member of a class must be
  nearer its centre, by the margin, than the nearest non-member.
- contrastive_loss: the contrastive term of the improved ViT (as TransFG): over all pairs of cosine
  similarities, 1 - cos for same-label pairs, max(0, cos - margin) for different labels, averaged over B².

`metric_loss(spec, embeddings, labels)` applies a config's {"kind", "weight", "margin"} to L2-normalised
embeddings (so that the margins do not depend on the scale of the features).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def center_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    classes = labels.unique()
    same = labels[None, :] == classes[:, None]                                        # [K, B]
    centres = (same.float() @ embeddings) / same.sum(1, keepdim=True)                 # [K, D]
    distance = torch.cdist(centres, embeddings)                                       # [K, B]
    hardest_positive = distance.masked_fill(~same, float("-inf")).amax(1)
    hardest_negative = distance.masked_fill(same, float("inf")).amin(1)
    has_negative = (~same).any(1)
    if not has_negative.any():
        return embeddings.sum() * 0.0                                                 # one class: nothing to push apart
    hinge = (hardest_positive + margin - hardest_negative).clamp_min(0)
    return hinge[has_negative].mean()


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    z = F.normalize(embeddings, dim=1)
    cosine = z @ z.t()
    same = labels[None, :] == labels[:, None]
    loss = torch.where(same, 1 - cosine, (cosine - margin).clamp_min(0))
    return loss.mean()


METRIC_LOSSES = {"center_triplet": center_triplet_loss, "contrastive": contrastive_loss}


def metric_loss(spec: dict, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """spec["weight"] · the loss spec["kind"] names, with spec["margin"], on L2-normalised embeddings."""
    kind = spec["kind"]
    if kind not in METRIC_LOSSES:
        raise ValueError(f"unknown metric loss {kind!r}; choose one of {sorted(METRIC_LOSSES)}")
    return spec["weight"] * METRIC_LOSSES[kind](F.normalize(embeddings, dim=1), labels, spec["margin"])
