"""One training step of a RetinaNet-style head with a bloodcv label assigner.

    .venv/bin/python examples/training_step.py [max_iou|atss|paa|ota]

A toy head predicts class logits and box deltas for anchors on a 64x64 feature grid; the assigner
decides which anchors learn which cell (inside torch.no_grad(): assignment is not differentiated); the
losses are focal loss on all non-ignored anchors and L1 on the positives' deltas.
"""
import sys

import torch
import torchvision

from bloodcv.assign import BACKGROUND, IGNORE, make_assigner

torch.manual_seed(0)
strategy = sys.argv[1] if len(sys.argv) > 1 else "atss"

# Anchors: one 16x16 and one 32x32 level (strides 8 and 16) over a 256x256 image.
levels = []
for stride, size in [(8, 16), (16, 32)]:
    c = (torch.arange(256 // stride) + 0.5) * stride
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    levels.append(torch.stack([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], -1).reshape(-1, 4))
anchors = torch.cat(levels)
per_level = [len(l) for l in levels]

# Ground truth: three cells, two of them touching.
gt_boxes = torch.tensor([[40.0, 40, 80, 80], [78, 42, 118, 82], [150, 160, 190, 190]])
gt_labels = torch.tensor([0, 1, 0])
num_classes = 2

head = torch.nn.Linear(4, num_classes + 4)  # stands in for the conv head: features → logits, deltas
features = anchors / 256
optimizer = torch.optim.SGD(head.parameters(), lr=0.1)

out = head(features)
logits, deltas = out[:, :num_classes], out[:, num_classes:]
with torch.no_grad():
    pred_boxes = torchvision.ops.box_convert(anchors, "xyxy", "cxcywh")
    pred_boxes = torch.cat([pred_boxes[:, :2] + deltas[:, :2] * pred_boxes[:, 2:], pred_boxes[:, 2:] * deltas[:, 2:].clamp(max=4).exp()], 1)
    pred_boxes = torchvision.ops.box_convert(pred_boxes, "cxcywh", "xyxy")
    result = make_assigner(strategy).assign(anchors, gt_boxes, gt_labels, pred_boxes=pred_boxes,
                                            pred_scores=logits.sigmoid(), anchors_per_level=per_level)

positive = result.gt_index >= 0
valid = result.gt_index != IGNORE
targets = torch.zeros_like(logits)
targets[positive, result.labels[positive]] = 1.0
cls_loss = torchvision.ops.sigmoid_focal_loss(logits[valid], targets[valid], reduction="sum") / positive.sum().clamp(min=1)
matched = gt_boxes[result.gt_index[positive]]
a = torchvision.ops.box_convert(anchors[positive], "xyxy", "cxcywh")
m = torchvision.ops.box_convert(matched, "xyxy", "cxcywh")
target_deltas = torch.cat([(m[:, :2] - a[:, :2]) / a[:, 2:], (m[:, 2:] / a[:, 2:]).log()], 1)
box_loss = torch.nn.functional.l1_loss(deltas[positive], target_deltas, reduction="sum") / positive.sum().clamp(min=1)
loss = cls_loss + box_loss
optimizer.zero_grad()
loss.backward()
optimizer.step()

per_cell = [int((result.gt_index == g).sum()) for g in range(len(gt_boxes))]
print(f"{strategy}: {int(positive.sum())} positives {per_cell} per cell, {int((result.gt_index == BACKGROUND).sum())} background, "
      f"{int((result.gt_index == IGNORE).sum())} ignored; loss {loss.item():.3f} (focal {cls_loss.item():.3f}, L1 {box_loss.item():.3f})")
assert positive.any() and torch.isfinite(loss)
