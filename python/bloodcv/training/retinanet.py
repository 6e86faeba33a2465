"""The improved RetinaNet of the bone-marrow detection paper, with its label assigner chosen by name.

    python -m bloodcv.train retinanet --config configs/retinanet_pan_iou.json [--assigner ota|atss|paa|max_iou]
                                      [--no-pan] [--no-iou] [--out runs/retinanet] [--resume] [--export-only]

Same data, splits (deduplicated against BCCD's test split), augmentation, schedule, EMA, checkpoints and
evaluation as the detector recipe (bloodcv.training.detector); the model is bloodcv.models.RetinaNetPan and
the loss is RetinaNet's: sigmoid focal loss over all non-ignored anchors, GIoU loss on the positives'
decoded boxes, and BCE of the IoU branch against the true IoU of each positive's decoded box. The
anchors that learn each cell come from bloodcv.assign (max_iou, atss, paa or ota), on the current
predictions where the strategy uses them. The ablation of the paper is this recipe run with each
assigner and with --no-pan / --no-iou (a shorter schedule is fine: --epochs).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict

import torch
import torchvision

from ..assign import IGNORE, make_assigner
from ..data.readers import LABELS
from ..models import count_parameters
from ..models.retinanet import DEFAULT_ANCHORS, RetinaNetPan, anchor_metadata, decode_deltas, generate_anchors
from .config import add_common_arguments, apply_settings, common_overrides, load_config, resolve_path
from .detector import DEFAULT_CONFIG, DetectorTrainer

HELP = "train the RetinaNet-PAN-IoU detector with a chosen label assigner (and its ablation)"

# The detector recipe's defaults with the RetinaNet's over them.
RETINANET_DEFAULTS = {**DEFAULT_CONFIG, **{
    "out": None,  # None: runs/retinanet_<assigner>[_nopan][_noiou]
    "name": "retinanet-pan-iou", "input_size": 320, "depth": 18, "width": 32, "channels": 96, "head_convs": 2, "pan": True,
    "iou_branch": True, "anchors": DEFAULT_ANCHORS, "assigner": "ota", "assigner_options": {},
    "loss": {"focal_alpha": 0.25, "focal_gamma": 2.0, "box": 2.0, "iou": 1.0},
    "eval": {"score_threshold": 0.05},
    # score_threshold: the counting operating point of the shipped file (bloodcv eval takes 0.05 for AP)
    "export": {"path": "models/retinanet_pan_iou.pt", "score_threshold": 0.3, "nms_iou_threshold": 0.5,
               "tile_size": [640, 640]},
}}


class RetinaTrainer(DetectorTrainer):
    def build_model(self) -> torch.nn.Module:
        c = self.cfg
        a = c["anchors"]
        self.anchors, self.per_level = generate_anchors((c["input_size"], c["input_size"]), a["strides"], a["sizes"],
                                                        a["aspect_ratios"], a["scales"], a["center_offset"])
        self.assigner = make_assigner(c["assigner"], **c["assigner_options"])
        return RetinaNetPan(len(LABELS), c["depth"], c["channels"], c["head_convs"],
                            len(a["aspect_ratios"]) * len(a["scales"]), c["pan"], c["iou_branch"], c["width"])

    def build_loss(self):
        return self.retina_loss

    def describe_model(self) -> str:
        c = self.cfg
        return (f"model {c['name']}: ResNet-{c['depth']} (width {c['width']}), {c['channels']} channels, PAN {c['pan']}, IoU branch "
                f"{c['iou_branch']}, assigner {c['assigner']}, {count_parameters(self.model)} parameters, "
                f"input {c['input_size']}, {len(self.anchors)} anchors")

    def retina_loss(self, outputs, targets):
        """outputs of the model on a batch, targets [n, 6] (image, class, cx, cy, w, h normalised)."""
        cls, deltas = outputs[0], outputs[1]
        iou_logits = outputs[2] if len(outputs) > 2 else None
        S, L = self.cfg["input_size"], self.cfg["loss"]
        totals = torch.zeros(3)
        loss = cls.new_zeros(())
        positives = 0
        for b in range(cls.shape[0]):
            t = targets[targets[:, 0] == b]
            gt = torchvision.ops.box_convert(t[:, 2:6] * S, "cxcywh", "xyxy")
            labels = t[:, 1].long()
            pred_boxes = decode_deltas(self.anchors, deltas[b])
            with torch.no_grad():
                r = self.assigner.assign(self.anchors, gt, labels, pred_boxes=pred_boxes.detach().clamp(-S, 2 * S),
                                         pred_scores=cls[b].detach().sigmoid(), anchors_per_level=self.per_level)
            pos = r.gt_index >= 0
            valid = r.gt_index != IGNORE
            target = torch.zeros_like(cls[b])
            target[pos, r.labels[pos]] = 1.0
            focal = torchvision.ops.sigmoid_focal_loss(cls[b][valid], target[valid], L["focal_alpha"], L["focal_gamma"],
                                                       reduction="sum")
            box = cls.new_zeros(())
            iou_loss = cls.new_zeros(())
            if pos.any():
                matched = gt[r.gt_index[pos]]
                box = torchvision.ops.generalized_box_iou_loss(pred_boxes[pos], matched, reduction="sum")
                if iou_logits is not None:
                    true_iou = torchvision.ops.box_iou(pred_boxes[pos].detach(), matched).diagonal().clamp(0, 1)
                    iou_loss = torch.nn.functional.binary_cross_entropy_with_logits(iou_logits[b][pos], true_iou, reduction="sum")
            positives += int(pos.sum())
            loss = loss + focal + L["box"] * box + L["iou"] * iou_loss
            totals += torch.tensor([float(box), float(focal), float(iou_loss)])
        n = max(positives, 1)
        return loss / n * cls.shape[0], totals / n  # the trainer divides by the batch for its log

    def exported(self):
        c = self.cfg
        S = c["input_size"]
        model = self.ema.ema.float().eval()
        meta = anchor_metadata(LABELS, [S, S], c["anchors"], c["iou_branch"], c["export"]["score_threshold"],
                               c["export"]["nms_iou_threshold"])
        meta["name"] = c["name"]
        if c["export"].get("tile_size"):
            meta["tile_size"] = c["export"]["tile_size"]  # trained on 640-pixel fields scaled to the input
        meta["training"] = {"recipe": f"python -m bloodcv.train retinanet --config {c.get('_config_path', '?')} "
                                      f"--assigner {c['assigner']}" + ("" if c["pan"] else " --no-pan")
                                      + ("" if c["iou_branch"] else " --no-iou"),
                            "epochs": self.epoch, "seed": c["seed"], "train_seconds": round(self.train_seconds, 1),
                            "licences": "TXL-PBC (MIT), BCCD (MIT)"}
        return model, meta


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, "configs/retinanet_pan_iou.json", "checkpoints and logs (default: the config's out, else "
                                                              "runs/retinanet_<assigner>[_nopan][_noiou])")
    p.add_argument("--assigner", choices=["max_iou", "atss", "paa", "ota"], help="override the config's assigner")
    p.add_argument("--no-pan", action="store_true", help="ablation: FPN only, no channel-attention PAN")
    p.add_argument("--no-iou", action="store_true", help="ablation: no IoU-prediction branch")
    p.add_argument("--max-train-images", type=int, default=None, help="smoke runs: use the first N training images")
    p.add_argument("--max-eval-images", type=int, default=None, help="smoke runs: evaluate on the first N images")


def run(args) -> int:
    over: Dict = {**common_overrides(args), **{k: getattr(args, k) for k in ("max_train_images", "max_eval_images", "assigner")
                                               if getattr(args, k) is not None}}
    if args.no_pan:
        over["pan"] = False
    if args.no_iou:
        over["iou_branch"] = False
    cfg = apply_settings(load_config(args.config, RETINANET_DEFAULTS, over), args.settings)
    if args.out:
        out = Path(args.out)
    elif cfg["out"]:
        out = resolve_path(cfg["out"], cfg)
    else:
        out = Path(f"runs/retinanet_{cfg['assigner']}" + ("" if cfg["pan"] else "_nopan") + ("" if cfg["iou_branch"] else "_noiou"))
    return RetinaTrainer(cfg, out).run(args.export_only, args.resume, not args.no_progress, True, args.export_path)
