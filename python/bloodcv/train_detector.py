"""Training recipes for bloodcv's default models.

    python -m bloodcv.train detector --config configs/detector_yolo.json [--out runs/detector] [--resume]
    python -m bloodcv.train detector --config configs/detector_yolo.json --export-only
    python -m bloodcv.train detector --config configs/detector_yolo.json --anchors

The detector recipe trains bloodcv.models.YoloDetector (YOLOv5-style) from scratch on TXL-PBC train,
validates on TXL-PBC val and tests on BCCD's own test split, with every TXL-PBC near-duplicate of a
BCCD test image left out (bloodcv.data.make_detection_splits). One thread (torch.set_num_threads(1)),
deterministic for a seed; a checkpoint after every epoch (model, optimizer, EMA, epoch, RNG states) that
--resume continues from exactly (batches depend only on the seed, the epoch and the image index). At the
end the EMA weights are exported as a bloodcv model file (docs/model_format.md, decoder "yolov5").
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torchvision

from . import data as D
from .export import export_model
from .models import YoloDetector, count_parameters
from .models.loss import YoloLoss


DEFAULT_CONFIG = {
    "name": "yolo-cells-n",
    "seed": 0,
    "threads": 1,
    "dataset_root": "../shared/datasets",
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
    "augment": {},                # overrides of bloodcv.data.DEFAULT_AUGMENT
    "close_mosaic_epochs": 3,     # no mosaic in the last epochs
    "val_interval": 5,
    "eval": {"conf_threshold": 0.001, "iou_threshold": 0.6, "max_det": 300, "batch_size": 16},
    "dedup": {"thumb_threshold": 0.05, "min_inliers": 15},
    "cache_dir": "runs/cache",    # the near-duplicate scores (minutes to compute), keyed by files and settings
    "max_train_images": None,     # smoke runs: use only the first N training images
    "max_eval_images": None,
    "max_steps_per_epoch": None,
    "export": {"path": "models/cell_detector.pt", "score_threshold": 0.25, "nms_iou_threshold": 0.45,
               "multi_label": False},
}


# --------------------------------------------------------------------------------------- config
def load_config(path: Optional[str], overrides: Optional[Dict] = None) -> Dict:
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg["base_dir"] = str(Path(path).resolve().parent.parent) if path else os.getcwd()
    if path:
        user = json.loads(Path(path).read_text())
        for k, v in user.items():
            if k.startswith("_"):
                continue
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
    for k, v in (overrides or {}).items():
        cfg[k] = v
    if cfg["input_size"] % 32:
        raise ValueError(f"input_size must be a multiple of 32, got {cfg['input_size']}")
    return cfg


def resolve_path(p, cfg: Dict) -> Path:
    """Relative paths in a config are relative to the parent of the config's folder: the repository
    root for configs/*.json (the current directory without a config file)."""
    p = Path(p)
    return p if p.is_absolute() else (Path(cfg["base_dir"]) / p).resolve()


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_states() -> Dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_states(s: Dict):
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


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


# ------------------------------------------------------------------------------- post-processing
def postprocess(pred: torch.Tensor, conf_threshold: float = 0.25, iou_threshold: float = 0.45,
                max_det: int = 300, max_nms: int = 30000) -> List[torch.Tensor]:
    """Decoded [B, N, 5 + C] -> per image [n, 6] (x1, y1, x2, y2, score, class), best class per box,
    score = objectness x class score, class-wise NMS (torchvision.ops.batched_nms)."""
    out = []
    for x in pred:
        scores, labels = (x[:, 5:] * x[:, 4:5]).max(1)
        keep = scores > conf_threshold
        x, scores, labels = x[keep], scores[keep], labels[keep]
        if scores.numel() > max_nms:
            top = scores.topk(max_nms).indices
            x, scores, labels = x[top], scores[top], labels[top]
        boxes = torchvision.ops.box_convert(x[:, :4], "cxcywh", "xyxy")
        k = torchvision.ops.batched_nms(boxes, scores, labels, iou_threshold)[:max_det]
        out.append(torch.cat((boxes[k], scores[k, None], labels[k, None].float()), 1))
    return out


# --------------------------------------------------------------------------------------- metrics
def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-12)


def average_precision(detections: Sequence, ground_truth: Sequence, num_classes: int,
                      iou_threshold: float = 0.5) -> Dict:
    """COCO-style AP at one IoU threshold, per class.

    detections: per image (boxes [n, 4] xyxy, scores [n], labels [n]); ground_truth: per image (boxes
    [m, 4], labels [m]). Within an image, detections of a class, by decreasing score, each take the
    unmatched ground-truth box of that class with the highest IoU >= iou_threshold (true positive) or
    none (false positive). Over all images, precision is made monotone (its running maximum from high
    recall down) and averaged at the 101 recall points 0, 0.01, ..., 1 (0 beyond the highest recall).
    Classes without ground truth get None. Also returns precision and recall at every class's final
    point and the number of ground-truth boxes."""
    ap, info = [], []
    for c in range(num_classes):
        scores, tps, npos = [], [], 0
        for (db, ds, dl), (gb, gl) in zip(detections, ground_truth):
            db, ds, dl = np.asarray(db).reshape(-1, 4), np.asarray(ds).reshape(-1), np.asarray(dl).reshape(-1)
            gb, gl = np.asarray(gb).reshape(-1, 4), np.asarray(gl).reshape(-1)
            g = gb[gl == c]
            npos += len(g)
            m = dl == c
            b, s = db[m], ds[m]
            order = np.argsort(-s, kind="mergesort")
            b, s = b[order], s[order]
            iou = box_iou_np(b, g)
            taken = np.zeros(len(g), bool)
            for i in range(len(b)):
                cand = np.where(~taken & (iou[i] >= iou_threshold), iou[i], -1.0)
                j = int(np.argmax(cand)) if len(g) else -1
                hit = j >= 0 and cand[j] >= 0
                if hit:
                    taken[j] = True
                tps.append(hit)
                scores.append(s[i])
        if npos == 0:
            ap.append(None)
            info.append({"gt": 0, "detections": len(scores)})
            continue
        order = np.argsort(-np.asarray(scores), kind="mergesort")
        tp = np.asarray(tps, dtype=np.float64)[order]
        ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
        recall = ctp / npos
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        env = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        rs = np.linspace(0, 1, 101)
        idx = np.searchsorted(recall, rs, side="left")
        q = np.array([env[i] if i < len(env) else 0.0 for i in idx])
        ap.append(float(q.mean()))
        info.append({"gt": int(npos), "detections": len(scores),
                     "max_recall": float(recall[-1]) if len(recall) else 0.0})
    return {"ap": ap, "info": info}


# ------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: torch.nn.Module, samples: Sequence[D.Sample], input_size: int, cfg_eval: Dict,
             labels: Sequence[str] = D.LABELS, dataset: Optional[D.DetectionDataset] = None,
             score_threshold_report: float = 0.25, predict=None) -> Dict:
    """AP50 per class and their mean on samples, boxes compared in original image pixels."""
    was_training = model.training
    model.eval()
    ds = dataset or D.DetectionDataset(samples, input_size, augment=None)
    dets, gts = [], []
    counts = np.zeros((2, len(labels)), np.int64)  # detections above score_threshold_report, truth
    bs = cfg_eval.get("batch_size", 16)
    for start in range(0, len(ds), bs):
        items = [ds[i] for i in range(start, min(start + bs, len(ds)))]
        imgs = torch.stack([it[0] for it in items]).float().div_(255).contiguous(memory_format=torch.channels_last)
        outs = (predict(model, imgs) if predict else
                postprocess(model(imgs), cfg_eval["conf_threshold"], cfg_eval["iou_threshold"], cfg_eval["max_det"]))
        for (_, _, i), o in zip(items, outs):
            s = ds.samples[i]
            sx, sy, dx, dy = D.letterbox_transform(s.width, s.height, input_size)
            o = o.numpy()
            boxes = (o[:, :4] - [dx, dy, dx, dy]) / [sx, sy, sx, sy]
            boxes = np.clip(boxes, 0, [s.width, s.height, s.width, s.height])
            dets.append((boxes, o[:, 4], o[:, 5].astype(np.int64)))
            gts.append((s.boxes, s.classes))
            counts[0] += np.bincount(o[o[:, 4] >= score_threshold_report, 5].astype(np.int64),
                                     minlength=len(labels))[:len(labels)]
            counts[1] += np.bincount(s.classes, minlength=len(labels))[:len(labels)]
    res = average_precision(dets, gts, len(labels), 0.5)
    per_class = {name: (round(a, 4) if a is not None else None) for name, a in zip(labels, res["ap"])}
    valid = [a for a in res["ap"] if a is not None]
    model.train(was_training)
    return {"AP50": per_class, "mAP50": round(float(np.mean(valid)), 4) if valid else None,
            "images": len(ds), "gt_boxes": {n: int(v) for n, v in zip(labels, counts[1])},
            f"detections_at_score_{score_threshold_report}": {n: int(v) for n, v in zip(labels, counts[0])},
            "max_recall": {n: round(i.get("max_recall", 0.0), 4) for n, i in zip(labels, res["info"])}}


# ---------------------------------------------------------------------------------------- anchors
def kmean_anchors(samples: Sequence[D.Sample], input_size: int, n: int = 9, iters: int = 300,
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
class DetectorTrainer:
    """The detector recipe. splits: {"train", "val", "test": [Sample], "summary": {...}} or None to
    build them from cfg["dataset_root"]."""

    def __init__(self, cfg: Dict, out_dir, splits: Optional[Dict] = None, log_file: bool = True):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "train.log" if log_file else None
        torch.set_num_threads(int(cfg["threads"]))
        seed_everything(cfg["seed"])
        if splits is None:
            root = resolve_path(cfg["dataset_root"], cfg)
            splits = D.make_detection_splits(root, seed=cfg["seed"], cache_dir=resolve_path(cfg["cache_dir"], cfg), log=self.log,
                                             **cfg["dedup"])
        self.splits = splits
        train = splits["train"][:cfg["max_train_images"]] if cfg["max_train_images"] else splits["train"]
        self.val = splits["val"][:cfg["max_eval_images"]] if cfg["max_eval_images"] else splits["val"]
        self.test = splits["test"][:cfg["max_eval_images"]] if cfg["max_eval_images"] else splits["test"]
        S = cfg["input_size"]
        self.train_ds = D.DetectionDataset(train, S, augment=cfg["augment"], seed=cfg["seed"])
        self.val_ds = D.DetectionDataset(self.val, S, augment=None)
        self.test_ds = D.DetectionDataset(self.test, S, augment=None)
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
        return YoloDetector(len(D.LABELS), cfg["width"], cfg["depth"], anchors=self._anchors(), input_size=cfg["input_size"])

    def build_loss(self):
        return YoloLoss(self.model, self.cfg["input_size"], self.cfg["loss"])

    def describe_model(self) -> str:
        cfg = self.cfg
        return (f"model {cfg['name']}: width {cfg['width']}, depth {cfg['depth']}, {count_parameters(self.model)} "
                f"parameters, input {cfg['input_size']}, anchors {self.model.config['anchors']}")

    def predict(self, model: torch.nn.Module, images: torch.Tensor) -> List[torch.Tensor]:
        """Per image [n, 6] (x1, y1, x2, y2, score, class) in input pixels, for evaluation."""
        e = self.cfg["eval"]
        return postprocess(model(images), e["conf_threshold"], e["iou_threshold"], e["max_det"])

    def evaluate(self, model, samples, dataset) -> Dict:
        return evaluate(model, samples, self.cfg["input_size"], self.cfg["eval"], dataset=dataset, predict=self.predict)

    def _anchors(self):
        a = self.cfg.get("anchors")
        if a is None:
            return None
        return [[float(v) for pair in level for v in pair] if isinstance(level[0], (list, tuple)) else level
                for level in a]

    def log(self, msg: str):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(line + "\n")

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_path(self) -> Path:
        return self.out / "last.pt"

    def save_checkpoint(self):
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "ema": self.ema.state_dict(), "epoch": self.epoch, "step": self.step,
                 "rng": rng_states(), "history": self.history, "config": self.cfg,
                 "train_seconds": self.train_seconds}
        tmp = self.out / "last.pt.partial"
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path())

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
        set_rng_states(state["rng"])
        self.log(f"resumed from {path or self.checkpoint_path()} after epoch {self.epoch} (step {self.step})")

    # ---------------------------------------------------------------- training
    def batches(self, epoch: int):
        close = self.cfg["close_mosaic_epochs"]
        self.train_ds.set_epoch(epoch, mosaic=epoch < self.cfg["epochs"] - close)
        order = D.epoch_order(len(self.train_ds), self.cfg["seed"], epoch)
        for b in range(self.steps_per_epoch):
            idx = order[b * self.bs:(b + 1) * self.bs] or order[:self.bs]
            yield D.collate([self.train_ds[i] for i in idx])

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
                rec["val"] = self.evaluate(self.ema.ema, self.val, self.val_ds)
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
            last_val = self.evaluate(self.ema.ema, self.val, self.val_ds)
        t = time.time()
        test = self.evaluate(self.ema.ema, self.test, self.test_ds)
        self.log(f"validation (TXL-PBC val): {json.dumps(last_val)}")
        self.log(f"test (BCCD test, {time.time() - t:.0f} s): {json.dumps(test)}")
        metrics = {
            "name": cfg["name"], "epochs": self.epoch, "input_size": cfg["input_size"],
            "train_seconds": round(self.train_seconds, 1), "iou_threshold": 0.5,
            "ap_method": "COCO-style 101-point interpolated AP at IoU 0.5 per class; boxes of the EMA model, "
                         f"score > {cfg['eval']['conf_threshold']}, class-wise NMS IoU {cfg['eval']['iou_threshold']}",
            "val": {"split": "TXL-PBC val minus near-duplicates of BCCD test", **last_val},
            "test": {"split": "BCCD ImageSets/Main/test.txt (BCCD's own VOC boxes)", **test},
            "data": self.splits.get("summary", {}),
            "history": self.history,
        }
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        return metrics

    # ---------------------------------------------------------------- export
    def export(self, path=None) -> Path:
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
            "task": "detection", "name": cfg["name"], "labels": list(D.LABELS), "input_size": [S, S],
            **({"tile_size": cfg["export"]["tile_size"]} if cfg["export"].get("tile_size") else {}),
            "input": {"color": "rgb", "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                      "resize": "letterbox", "pad_value": D.PAD_VALUE},
            "decoder": {"kind": "yolov5", "score_threshold": cfg["export"]["score_threshold"],
                        "nms_iou_threshold": cfg["export"]["nms_iou_threshold"],
                        "multi_label": cfg["export"]["multi_label"]},
            "training": {
                "recipe": "python -m bloodcv.train detector --config configs/detector_yolo.json",
                "architecture": {"kind": "YOLOv5-style (C3, SPPF, FPN+PAN, 3 scales)", **model.config,
                                 "strides": [8, 16, 32], "parameters": count_parameters(model)},
                "epochs": self.epoch, "seed": cfg["seed"], "train_seconds": round(self.train_seconds, 1),
                "data": {k: {kk: vv for kk, vv in v.items() if kk != "dropped"} if isinstance(v, dict) else v
                         for k, v in data.items() if k in ("train", "val", "test")},
                "dedup": {k: v for k, v in data.get("dedup", {}).items() if k != "dropped"},
                "metrics": summary,
                "licences": "TXL-PBC (MIT), BCCD (MIT)",
            },
        }
        path = Path(path) if path else resolve_path(cfg["export"]["path"], cfg)
        example = torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(0))
        export_model(model, path, meta, example, method="trace", atol=1e-4)
        self.log(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB)")
        return path


# -------------------------------------------------------------------------------------------- CLI
HELP = "train (or export) the default cell detector (YOLOv5-style)"


def add_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("--config", default="configs/detector_yolo.json",
                   help="JSON config (keys: see bloodcv.train_detector.DEFAULT_CONFIG; default: %(default)s)")
    d.add_argument("--out", default="runs/detector",
                   help="folder for checkpoints (last.pt), train.log, metrics.json "
                        "(default: %(default)s)")
    d.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (same config)")
    d.add_argument("--export-only", action="store_true",
                   help="no training: load OUT/last.pt, evaluate (metrics.json) and export")
    d.add_argument("--no-export", action="store_true", help="train and evaluate without exporting")
    d.add_argument("--export-path", default=None, help="where to export (default: the config's export.path, "
                                                         "relative to the repository root)")
    d.add_argument("--anchors", action="store_true", help="only print k-means anchors for the training split")
    d.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    d.add_argument("--max-steps-per-epoch", type=int, default=None, help="smoke runs: cap the steps of an epoch")
    d.add_argument("--max-train-images", type=int, default=None, help="smoke runs: use the first N training images")
    d.add_argument("--max-eval-images", type=int, default=None, help="smoke runs: evaluate on the first N images")
    d.add_argument("--dataset-root", default=None, help="override the config's dataset_root")
    d.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def run(args) -> int:
    over = {key: getattr(args, key) for key in ("epochs", "max_steps_per_epoch", "max_train_images", "max_eval_images",
                                                "dataset_root") if getattr(args, key) is not None}
    cfg = load_config(args.config, over)
    if args.anchors:
        torch.set_num_threads(int(cfg["threads"]))
        splits = D.make_detection_splits(resolve_path(cfg["dataset_root"], cfg), seed=cfg["seed"],
                                         cache_dir=resolve_path(cfg["cache_dir"], cfg),
                                         **cfg["dedup"])
        k, bpr, miou = kmean_anchors(splits["train"], cfg["input_size"], seed=cfg["seed"],
                                     anchor_t=cfg["loss"].get("anchor_t", 4.0))
        print(json.dumps({"anchors": np.round(k, 1).reshape(3, 3, 2).tolist(), "best_possible_recall": bpr,
                          "mean_best_iou": miou}))
        return 0
    return DetectorTrainer(cfg, args.out).run(args.export_only, args.resume, not args.no_progress, not args.no_export,
                                              args.export_path)
