"""YOLOv5 loss: CIoU box loss, BCE objectness (IoU-valued targets), BCE class, anchor-ratio assignment."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
from torch import nn


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matching rows of two N x 4 (cx, cy, w, h) tensors."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * \
            (torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)  # enclosing box
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = (4 / math.pi ** 2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


DEFAULT_LOSS = {"box": 0.05, "obj": 1.0, "cls": 0.5, "anchor_t": 4.0, "balance": [4.0, 1.0, 0.4]}


class YoloLoss:
    """YOLOv5's ComputeLoss for a bloodcv.models.YoloDetector (gains as YOLOv5's hyp.scratch-low,
    scaled for the number of classes, levels and input size as YOLOv5 does).

    __call__(raw head maps, targets [n, 6] = (image, class, cx, cy, w, h) normalised) returns
    (total loss x batch size, tensor [box, obj, cls] detached)."""

    def __init__(self, model, input_size: int, hyp: Dict = None):
        hyp = {**DEFAULT_LOSS, **(hyp or {})}
        det = model.detect
        self.nc, self.nl, self.na = det.nc, det.nl, det.na
        self.anchors = det.anchors  # grid units, [nl, na, 2]
        self.balance = list(hyp["balance"])
        self.anchor_t = hyp["anchor_t"]
        self.box_gain = hyp["box"] * 3 / self.nl
        self.cls_gain = hyp["cls"] * self.nc / 80 * 3 / self.nl
        self.obj_gain = hyp["obj"] * (input_size / 640) ** 2 * 3 / self.nl
        self.bce = nn.BCEWithLogitsLoss()

    def __call__(self, preds: List[torch.Tensor], targets: torch.Tensor):
        device = targets.device
        lbox, lobj, lcls = (torch.zeros(1, device=device) for _ in range(3))
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox[i])
                lbox = lbox + (1.0 - iou).mean()
                tobj[b, a, gj, gi] = iou.detach().clamp(0).to(tobj.dtype)
                if self.nc > 1:
                    t = torch.zeros_like(pcls)
                    t[range(n), tcls[i]] = 1.0
                    lcls = lcls + self.bce(pcls, t)
            lobj = lobj + self.bce(pi[..., 4], tobj) * self.balance[i]
        lbox, lobj, lcls = lbox * self.box_gain, lobj * self.obj_gain, lcls * self.cls_gain
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, preds: Sequence[torch.Tensor], targets: torch.Tensor):
        """Each target goes to every anchor whose w and h ratios to it are within anchor_t, in its grid
        cell and the two nearest neighbouring cells (YOLOv5's assignment)."""
        na, nt = self.na, targets.shape[0]
        device = targets.device
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=device)
        ai = torch.arange(na, device=device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # [na, nt, 7]
        g = 0.5
        off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=device).float() * g
        for i in range(self.nl):
            anchors, shape = self.anchors[i], preds[i].shape
            gain[2:6] = torch.tensor(shape, device=device)[[3, 2, 3, 2]].float()
            t = targets * gain
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                j = torch.max(r, 1 / r).max(2)[0] < self.anchor_t
                t = t[j]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                j, k = ((gxy % 1 < g) & (gxy > 1)).T
                l, m = ((gxi % 1 < g) & (gxi > 1)).T
                j = torch.stack((torch.ones_like(j), j, k, l, m))
                t = t.repeat((5, 1, 1))[j]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[j]
            else:
                t = targets[0]
                offsets = 0
            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gi = gij[:, 0].clamp(0, shape[3] - 1)
            gj = gij[:, 1].clamp(0, shape[2] - 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch
