"""The default cell detector's recipe (YOLOv5-style), and the trainer the detector recipes share.

    python -m bloodcv.train detector --config configs/detector_yolo.json [--out runs/detector] [--resume]
    python -m bloodcv.train detector --config configs/detector_yolo.json --export-only
    python -m bloodcv.train detector --config configs/detector_yolo.json --anchors

The detector recipe trains bloodcv.models.YoloDetector (YOLOv5-style) from scratch on TXL-PBC train,
validates on TXL-PBC val and tests on BCCD's own test split, with every TXL-PBC near-duplicate of a
BCCD test image left out (bloodcv.data.splits.make_detection_splits). One thread (torch.set_num_threads(1)),
deterministic for a seed; a checkpoint after every epoch (model, optimizer, EMA, epoch, RNG states) that
--resume continues from exactly (batches depend only on the seed, the epoch and the image index). At the
end the EMA weights are exported as a bloodcv model file (docs/model_format.md, decoder "yolov5").
Validation and test score the exported model file through the library, as `bloodcv eval --detector`
does (bloodcv.training.evaluation): the AP the recipe logs is the AP `bloodcv eval` reports.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data.detection import PAD_VALUE, DetectionDataset, collate, epoch_order
from ..data.readers import LABELS, Sample
from ..data.splits import make_detection_splits
from ..export import export_model
from ..models import YoloDetector, count_parameters
from ..models.loss import YoloLoss
from .common import Log, plot_history, rng_state, save_checkpoint, seed_everything, set_rng_state
from .config import add_common_arguments, apply_settings, common_overrides, load_config, resolve_path
from .evaluation import evaluate_detector


DEFAULT_CONFIG = {
    "name": "yolo-cells-n",
    "seed": 0,
    "threads": 1,
    "dataset_root": "../shared/datasets",
    "out": "runs/detector",
    "input_size": 320,
    "width": 0.25,
    "depth": 0.33,
    "anchors": None,              # [[w, h] x 3] per level in input pixels; None: the model's defaults
    "epochs": 40,
    "batch_size": 16,
    "optimizer": "adamw",         # "adamw" or "sgd"
    "lr": 0.002,
    "lrf": 0.05,                  # final learning rate = lr * lrf (cosine decay)
    "momentum": 0.937,            # SGD momentum / AdamW beta1
    "weight_decay": 0.0005,
    "warmup_epochs": 2.0,
    "warmup_bias_lr": 0.0,
    "grad_clip": 10.0,
    "ema_decay": 0.9999,
    "ema_tau": 500,
    "loss": {},                   # overrides of bloodcv.models.loss.DEFAULT_LOSS
    "augment": {},                # overrides of bloodcv.data.detection.DEFAULT_AUGMENT
    "close_mosaic_epochs": 3,     # no mosaic in the last epochs
    "val_interval": 5,
    "eval": {"score_threshold": 0.001},  # of the exported file, for AP (its decoder's NMS, as bloodcv eval)
    "dedup": {"thumb_threshold": 0.05, "min_inliers": 15},
    "label_corrections": None,    # reviewed fixes of TXL-PBC's boxes for train and val (bloodcv.data.corrections)
    "cache_dir": "runs/cache",    # the near-duplicate scores (minutes to compute), keyed by files and settings
    "max_train_images": None,     # smoke runs: use only the first N training images
    "max_eval_images": None,
    "max_steps_per_epoch": None,
    "export": {"path": "models/cell_detector.pt", "score_threshold": 0.25, "nms_iou_threshold": 0.45,
               "nms_iou_threshold_by_label": {}, "multi_label": False},
}


# ------------------------------------------------------------------------------------------ EMA
class ModelEMA:
    """Exponential moving average of the weights and buffers; decay ramps up as d (1 - exp(-n / tau))."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)

    def state_dict(self):
        return {"model": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, s):
        self.ema.load_state_dict(s["model"])
        self.updates = s["updates"]


# ------------------------------------------------------------------------------------ optimiser
def build_optimizer(model: torch.nn.Module, cfg: Dict) -> torch.optim.Optimizer:
    """Three groups as YOLOv5: conv weights with weight decay; BatchNorm weights and all biases without."""
    decay, no_decay, biases = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias":
                biases.append(p)
            elif isinstance(module, torch.nn.BatchNorm2d):
                no_decay.append(p)
            else:
                decay.append(p)
    lr = cfg["lr"]
    if cfg["optimizer"] == "adamw":
        opt = torch.optim.AdamW(no_decay, lr=lr, betas=(cfg["momentum"], 0.999), weight_decay=0.0)
    elif cfg["optimizer"] == "sgd":
        opt = torch.optim.SGD(no_decay, lr=lr, momentum=cfg["momentum"], nesterov=True)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {cfg['optimizer']!r}")
    opt.add_param_group({"params": decay, "weight_decay": cfg["weight_decay"]})
    opt.add_param_group({"params": biases, "weight_decay": 0.0})
    for g in opt.param_groups:
        g["initial_lr"] = lr
    return opt


def lr_factor(epoch_progress: float, epochs: int, lrf: float) -> float:
    """Cosine decay from 1 to lrf over the epochs (epoch_progress: fractional epochs done)."""
    x = min(max(epoch_progress / max(epochs, 1), 0.0), 1.0)
    return ((1 - math.cos(x * math.pi)) / 2) * (lrf - 1) + 1


def set_learning_rate(opt, cfg: Dict, step: int, steps_per_epoch: int):
    """Linear warm-up (biases from warmup_bias_lr, SGD momentum from 0.8), then cosine decay."""
    f = lr_factor(step / steps_per_epoch, cfg["epochs"], cfg["lrf"])
    warmup = max(round(cfg["warmup_epochs"] * steps_per_epoch), 1 if cfg["warmup_epochs"] > 0 else 0)
    for j, g in enumerate(opt.param_groups):
        target = g["initial_lr"] * f
        if step < warmup:
            start = cfg["warmup_bias_lr"] if j == 2 else 0.0
            g["lr"] = float(np.interp(step, [0, warmup], [start, target]))
            if "momentum" in g:
                g["momentum"] = float(np.interp(step, [0, warmup], [0.8, cfg["momentum"]]))
        else:
            g["lr"] = target
            if "momentum" in g:
                g["momentum"] = cfg["momentum"]


# ---------------------------------------------------------------------------------------- anchors
def kmean_anchors(samples: Sequence[Sample], input_size: int, n: int = 9, iters: int = 300,
                  seed: int = 0, anchor_t: float = 4.0):
    """k-means on the boxes' (w, h) letterboxed to input_size, with 1 - IoU of co-centred boxes as the
    distance; returns (anchors sorted by area [n, 2], best possible recall at anchor_t, mean best IoU)."""
    wh = []
    for s in samples:
        r = input_size / max(s.width, s.height)
        b = s.boxes
        wh.append(np.stack([(b[:, 2] - b[:, 0]) * r, (b[:, 3] - b[:, 1]) * r], 1))
    wh = np.concatenate(wh)
    wh = wh[(wh > 2).all(1)]

    def iou(a, k):
        inter = np.minimum(a[:, None, 0], k[None, :, 0]) * np.minimum(a[:, None, 1], k[None, :, 1])
        return inter / (a[:, None].prod(2) + k[None].prod(2) - inter)

    rng = np.random.default_rng(seed)
    k = wh[rng.choice(len(wh), n, replace=False)].astype(np.float64)
    for _ in range(iters):
        assign = iou(wh, k).argmax(1)
        new = np.array([np.median(wh[assign == j], 0) if (assign == j).any() else k[j] for j in range(n)])
        if np.allclose(new, k):
            break
        k = new
    k = k[np.argsort(k.prod(1))]
    r = wh[:, None] / k[None]
    ratio = np.maximum(r, 1 / r).max(2).min(1)
    return k, float((ratio < anchor_t).mean()), float(iou(wh, k).max(1).mean())


# --------------------------------------------------------------------------------------- training
def detection_splits(cfg: Dict, log=print) -> Dict:
    """The recipe's splits (bloodcv.data.splits.make_detection_splits) as the config's keys set them."""
    corrections = cfg["label_corrections"]
    return make_detection_splits(resolve_path(cfg["dataset_root"], cfg), seed=cfg["seed"],
                                 cache_dir=resolve_path(cfg["cache_dir"], cfg),
                                 label_corrections=resolve_path(corrections, cfg) if corrections else None, log=log,
                                 **cfg["dedup"])


class DetectorTrainer:
    """The detector recipe; a subclass recipe replaces build_model, build_loss, describe_model and exported.
    splits: {"train", "val", "test": [Sample], "summary": {...}} or None to build them from cfg["dataset_root"]."""

    def __init__(self, cfg: Dict, out_dir, splits: Optional[Dict] = None, log_file: bool = True):
        if cfg["input_size"] % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {cfg['input_size']}")
        self.cfg = cfg
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = Log(self.out / "train.log" if log_file else None)
        torch.set_num_threads(int(cfg["threads"]))
        seed_everything(cfg["seed"])
        if splits is None:
            splits = detection_splits(cfg, log=self.log)
        self.splits = splits
        train = splits["train"][:cfg["max_train_images"]] if cfg["max_train_images"] else splits["train"]
        self.val = splits["val"][:cfg["max_eval_images"]] if cfg["max_eval_images"] else splits["val"]
        self.test = splits["test"][:cfg["max_eval_images"]] if cfg["max_eval_images"] else splits["test"]
        S = cfg["input_size"]
        self.train_ds = DetectionDataset(train, S, augment=cfg["augment"], seed=cfg["seed"])
        self.model = self.build_model().to(memory_format=torch.channels_last)
        self.loss_fn = self.build_loss()
        self.optimizer = build_optimizer(self.model, cfg)
        self.ema = ModelEMA(self.model, cfg["ema_decay"], cfg["ema_tau"])
        self.bs = cfg["batch_size"]
        n = len(self.train_ds)
        self.steps_per_epoch = max(1, n // self.bs) if n >= self.bs else 1
        if cfg["max_steps_per_epoch"]:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg["max_steps_per_epoch"])
        self.epoch = 0          # epochs completed
        self.step = 0           # optimiser steps done
        self.history: List[Dict] = []
        self.train_seconds = 0.0
        self.step_losses: List[float] = []

    # ---------------------------------------------------------------- what a subclass recipe replaces
    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        return YoloDetector(len(LABELS), cfg["width"], cfg["depth"], anchors=self._anchors(), input_size=cfg["input_size"])

    def build_loss(self):
        return YoloLoss(self.model, self.cfg["input_size"], self.cfg["loss"])

    def describe_model(self) -> str:
        cfg = self.cfg
        return (f"model {cfg['name']}: width {cfg['width']}, depth {cfg['depth']}, {count_parameters(self.model)} "
                f"parameters, input {cfg['input_size']}, anchors {self.model.config['anchors']}")

    def evaluate(self, samples: Sequence[Sample]) -> Dict:
        """AP of the EMA weights on samples: exported to a model file and scored as `bloodcv eval --detector`
        scores it, at the config's eval.score_threshold."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.export(Path(tmp) / "model.pt", quiet=True)
            result = evaluate_detector(path, samples, LABELS, self.cfg["eval"]["score_threshold"])
        result.pop("report")
        return result

    def _anchors(self):
        a = self.cfg.get("anchors")
        if a is None:
            return None
        return [[float(v) for pair in level for v in pair] if isinstance(level[0], (list, tuple)) else level
                for level in a]

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_path(self) -> Path:
        return self.out / "last.pt"

    def save_checkpoint(self):
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "ema": self.ema.state_dict(), "epoch": self.epoch, "step": self.step,
                 "rng": rng_state(), "history": self.history, "config": self.cfg,
                 "train_seconds": self.train_seconds}
        save_checkpoint(self.checkpoint_path(), state)

    def load_checkpoint(self, path=None):
        state = torch.load(path or self.checkpoint_path(), map_location="cpu")
        changed = sorted(k for k in set(state.get("config", {})) | set(self.cfg)
                         if k != "base_dir" and state.get("config", {}).get(k) != self.cfg.get(k))
        if changed:
            self.log(f"warning: the checkpoint was trained with other settings for {changed}: resuming with the "
                     "current config is not an exact continuation")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history = state["history"]
        self.train_seconds = state.get("train_seconds", 0.0)
        set_rng_state(state["rng"])
        self.log(f"resumed from {path or self.checkpoint_path()} after epoch {self.epoch} (step {self.step})")

    # ---------------------------------------------------------------- training
    def batches(self, epoch: int):
        close = self.cfg["close_mosaic_epochs"]
        self.train_ds.set_epoch(epoch, mosaic=epoch < self.cfg["epochs"] - close)
        order = epoch_order(len(self.train_ds), self.cfg["seed"], epoch)
        for b in range(self.steps_per_epoch):
            idx = order[b * self.bs:(b + 1) * self.bs] or order[:self.bs]
            yield collate([self.train_ds[i] for i in idx])

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        set_learning_rate(self.optimizer, self.cfg, self.step, self.steps_per_epoch)
        self.model.train()
        x = images.float().div_(255).contiguous(memory_format=torch.channels_last)
        loss, items = self.loss_fn(self.model(x), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["grad_clip"])
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        self.step_losses.append(float(loss.detach()) / images.shape[0])
        return items

    def train_epoch(self, progress: bool = True):
        from tqdm import tqdm
        epoch = self.epoch
        t0 = time.time()
        sums = torch.zeros(3)
        bar = tqdm(self.batches(epoch), total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg['epochs']}",
                   disable=not progress, mininterval=1.0 if sys.stderr.isatty() else 60.0, file=sys.stderr)
        for k, (images, targets, _) in enumerate(bar):
            items = self.train_step(images, targets)
            sums += items
            m = sums / (k + 1)
            bar.set_postfix(box=f"{m[0]:.4f}", obj=f"{m[1]:.4f}", cls=f"{m[2]:.4f}",
                            lr=f"{self.optimizer.param_groups[0]['lr']:.5f}", refresh=False)
        bar.close()
        self.epoch += 1
        dt = time.time() - t0
        self.train_seconds += dt
        m = (sums / self.steps_per_epoch).tolist()
        rec = {"epoch": self.epoch, "box": round(m[0], 5), "obj": round(m[1], 5), "cls": round(m[2], 5),
               "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(dt, 1)}
        return rec

    def run(self, export_only: bool, resume: bool, progress: bool, export: bool = True, export_path=None) -> int:
        """What the command line does: train (or resume) then export, or only evaluate and export the checkpoint."""
        if export_only:
            self.load_checkpoint()
            self.final_metrics()
        else:
            self.fit(resume=resume, progress=progress, export=False)
        if export or export_only:
            self.export(export_path)
        return 0

    def fit(self, resume: bool = False, progress: bool = True, export: bool = True):
        cfg = self.cfg
        if resume:
            if self.checkpoint_path().exists():
                self.load_checkpoint()
            else:
                self.log(f"--resume: no checkpoint at {self.checkpoint_path()}, starting from scratch")
        self.log(self.describe_model())
        self.log(f"training on {len(self.train_ds)} images, {self.steps_per_epoch} steps of {self.bs} per epoch, "
                 f"{cfg['epochs']} epochs, threads {torch.get_num_threads()}")
        while self.epoch < cfg["epochs"]:
            rec = self.train_epoch(progress)
            if self.epoch % cfg["val_interval"] == 0 or self.epoch == cfg["epochs"]:
                t = time.time()
                rec["val"] = self.evaluate(self.val)
                rec["val_seconds"] = round(time.time() - t, 1)
            self.history.append(rec)
            self.log(json.dumps(rec))
            self.save_checkpoint()
        metrics = self.final_metrics()
        if export:
            self.export()
        return metrics

    def final_metrics(self) -> Dict:
        cfg = self.cfg
        last_val = next((h["val"] for h in reversed(self.history) if "val" in h), None)
        if last_val is None or self.history[-1].get("epoch") != self.epoch:
            last_val = self.evaluate(self.val)
        t = time.time()
        test = self.evaluate(self.test)
        self.log(f"validation (TXL-PBC val): {json.dumps(last_val)}")
        self.log(f"test (BCCD test, {time.time() - t:.0f} s): {json.dumps(test)}")
        metrics = {
            "name": cfg["name"], "epochs": self.epoch, "input_size": cfg["input_size"],
            "train_seconds": round(self.train_seconds, 1), "iou_threshold": 0.5,
            "ap_method": "bloodcv.eval (COCO AP, as bloodcv eval --detector) of the exported EMA model file at score "
                         f"threshold {cfg['eval']['score_threshold']}, its own decoder, suppression and tiling",
            "val": {"split": "TXL-PBC val minus near-duplicates of BCCD test", **last_val},
            "test": {"split": "BCCD ImageSets/Main/test.txt (BCCD's own VOC boxes)", **test},
            "data": self.splits.get("summary", {}),
            "history": self.history,
        }
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        plot_history(self.history, self.out / "curves.png", f"{cfg['name']}: training curves")
        return metrics

    # ---------------------------------------------------------------- export
    def export(self, path=None, quiet: bool = False) -> Path:
        """Traces the EMA weights into a bloodcv model file at path (default: the config's export.path)."""
        model, meta = self.exported()
        path = Path(path) if path else resolve_path(self.cfg["export"]["path"], self.cfg)
        S = self.cfg["input_size"]
        example = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(0))
        export_model(model, path, meta, example, method="trace", atol=1e-4)
        if not quiet:
            self.log(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB)")
            if plot_history(self.history, path.with_name(path.stem + ".curves.png"), f"{self.cfg['name']}: training curves"):
                self.log(f"training curves: {path.with_name(path.stem + '.curves.png')}")
        return path

    def exported(self):
        """(the module to trace, in eval mode, and its bloodcv.json description): what a subclass recipe replaces."""
        cfg = self.cfg
        S = cfg["input_size"]
        model = copy.deepcopy(self.ema.ema).float().eval().to(memory_format=torch.contiguous_format).fuse()
        metrics_path = self.out / "metrics.json"
        summary = {}
        if metrics_path.exists():
            m = json.loads(metrics_path.read_text())
            summary = {k: m[k] for k in ("val", "test") if k in m}
            summary = {k: {"split": v["split"], "AP50": v["AP50"], "mAP50": v["mAP50"]} for k, v in summary.items()}
        data = self.splits.get("summary", {})
        meta = {
            "task": "detection", "name": cfg["name"], "labels": list(LABELS), "input_size": [S, S],
            **({"tile_size": cfg["export"]["tile_size"]} if cfg["export"].get("tile_size") else {}),
            "input": {"color": "rgb", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                      "resize": "letterbox", "pad_value": PAD_VALUE},
            "decoder": {"kind": "yolov5", "score_threshold": cfg["export"]["score_threshold"],
                        "nms_iou_threshold": cfg["export"]["nms_iou_threshold"],
                        **({"nms_iou_threshold_by_label": cfg["export"]["nms_iou_threshold_by_label"]}
                           if cfg["export"]["nms_iou_threshold_by_label"] else {}),
                        "multi_label": cfg["export"]["multi_label"]},
            "training": {
                "recipe": "python -m bloodcv.train detector --config configs/detector_yolo.json",
                "architecture": {"kind": "YOLOv5-style (C3, SPPF, FPN+PAN, 3 scales)", **model.config,
                                 "strides": [8, 16, 32], "parameters": count_parameters(model)},
                "epochs": self.epoch, "seed": cfg["seed"], "train_seconds": round(self.train_seconds, 1),
                "data": {k: {kk: vv for kk, vv in v.items() if kk != "dropped"} if isinstance(v, dict) else v
                         for k, v in data.items() if k in ("train", "val", "test", "label_corrections")},
                "dedup": {k: v for k, v in data.get("dedup", {}).items() if k != "dropped"},
                "metrics": summary,
                "licences": "TXL-PBC (MIT), BCCD (MIT)",
            },
        }
        return model, meta


# -------------------------------------------------------------------------------------------- CLI
HELP = "train (or export) the default cell detector (YOLOv5-style)"


def add_arguments(d: argparse.ArgumentParser) -> None:
    add_common_arguments(d, "configs/detector_yolo.json", "folder for checkpoints (last.pt), train.log and metrics.json "
                                                          "(default: the config's out, runs/detector)")
    d.add_argument("--no-export", action="store_true", help="train and evaluate without exporting")
    d.add_argument("--anchors", action="store_true", help="only print k-means anchors for the training split")
    d.add_argument("--max-train-images", type=int, default=None, help="smoke runs: use the first N training images")
    d.add_argument("--max-eval-images", type=int, default=None, help="smoke runs: evaluate on the first N images")


def run(args) -> int:
    over = {**common_overrides(args), **{key: getattr(args, key) for key in ("max_train_images", "max_eval_images")
                                         if getattr(args, key) is not None}}
    cfg = apply_settings(load_config(args.config, DEFAULT_CONFIG, over), args.settings)
    if args.anchors:
        torch.set_num_threads(int(cfg["threads"]))
        splits = detection_splits(cfg)
        k, bpr, miou = kmean_anchors(splits["train"], cfg["input_size"], seed=cfg["seed"],
                                     anchor_t=cfg["loss"].get("anchor_t", 4.0))
        print(json.dumps({"anchors": np.round(k, 1).reshape(3, 3, 2).tolist(), "best_possible_recall": bpr,
                          "mean_best_iou": miou}))
        return 0
    out = Path(args.out) if args.out else resolve_path(cfg["out"], cfg)
    return DetectorTrainer(cfg, out).run(args.export_only, args.resume, not args.no_progress, not args.no_export,
                                         args.export_path)
