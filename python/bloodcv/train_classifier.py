"""Training recipe for the single-cell classifiers (PBC white-cell types, or groups of them).

Run it through the dispatcher:

    .venv/bin/python -m bloodcv.train classifier --config configs/classifier_pbc.json [--resume] [--out DIR]

Data: one folder per class of single-cell images, the cell centred (PBC: Acevedo et al., Data in Brief 30
(2020) 105474, CC BY 4.0). A config either lists the folders ("classes": [...], the labels are the folder
names) or groups folders into labels ("classes": {"mononuclear": ["lymphocyte", "monocyte"], ...}).

What the recipe does, in order:

1. Split: stratified by source folder, seeded (each folder shuffled by its own generator seeded with
   (seed, crc32(folder)), so a folder's split does not depend on which other folders a config uses), saved
   as split.csv in the run directory.
2. Cell box: the runtime classifies the crop of a detector's box plus `crop_padding` per side, stretched to
   the input size. The PBC images show the cell in a wide field, so the recipe estimates each cell's box
   (the stained region nearest the centre, `estimate_cell_box`) and trains on crops framed the way the
   runtime frames them. The estimate agrees with the hand-drawn white-cell boxes of the PBC images in
   TXL-PBC (median IoU about 0.9); the crop-size jitter covers the rest.
3. Cache: each image is decoded once and kept at its own resolution in one uint8 tensor (runs/cache/,
   rebuilt when the files or the settings change), so that every training input is one bilinear
   resampling of the original pixels, as the runtime's crop-and-stretch is (a smoother, twice-resampled
   cache cost the first model 1.5 points of accuracy on the runtime's sharper inputs).
4. Training: augmentation on whole batches (one affine resampling for crop padding, aspect, shift, 90°
   rotations, flips and a small rotation; brightness, contrast, saturation and hue jitter; Gaussian blur;
   Gaussian noise), cross-entropy with label smoothing (plus, with "metric_loss", the centre-based triplet
   or the contrastive loss of bloodcv.models.metric_loss on the model's embedding), AdamW, linear warm-up
   then cosine decay per step.
   The epoch's order and augmentation come from a generator seeded with (seed, epoch); a checkpoint after
   every epoch holds the model, optimizer, scheduler, epoch and RNG states, and --resume continues from it
   exactly.
5. Test: the held-out split is classified through the runtime's own path (crop of the box plus
   crop_padding with pad value 114, cv2 INTER_LINEAR stretch, normalisation), giving accuracy, per-class
   recall and precision and the confusion matrix in metrics.json.
6. Export: bloodcv.export.export_model with the bloodcv.json description (docs/model_format.md).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import shlex
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .models import build_classifier
from .models.metric_loss import metric_loss

HELP = "train a single-cell classifier (PBC white-cell types) and export it"

PBC_CITATION = ("Acevedo A., Merino A., Alférez S., Molina Á., Boldú L., Rodellar J. A dataset of microscopic "
                "peripheral blood cell images for development of automatic recognition systems. Data in Brief 30 "
                "(2020) 105474. Mendeley Data, doi:10.17632/snkd93bnjr.1. Licence CC BY 4.0.")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

DEFAULTS = {
    "name": "classifier",
    "data_root": "../shared/datasets/pbc",
    "data_name": "PBC (peripheral blood cell images, normal cells)",
    "data_citation": PBC_CITATION,
    "data_licence": "CC BY 4.0",
    "classes": None,                      # list of folders, or {label: [folders]}
    "split": {"train": 0.70, "val": 0.15, "test": 0.15},
    "seed": 0,
    "input_size": 96,
    "input": {"color": "rgb", "scale": 1 / 255, "mean": [0.77, 0.63, 0.68], "std": [0.2, 0.2, 0.2],
              "resize": "stretch", "pad_value": 114},
    "crop_padding": 0.2,
    "cache_dir": "runs/cache",
    "box": {"dark": 0.85, "purple": 25.0, "close": 15, "fallback_side": 0.36},
    "model": {"name": "resnet_ibn"},
    "epochs": 30,
    "batch_size": 64,
    "optimizer": "adamw",
    "lr": 2e-3,
    "weight_decay": 0.05,
    "momentum": 0.9,
    "warmup_epochs": 1.0,
    "label_smoothing": 0.1,
    "metric_loss": None,                  # {"kind": "center_triplet" | "contrastive", "weight", "margin"}
    "num_threads": 1,
    "augment": {
        "padding": [0.05, 0.45],          # crop padding per side drawn in this range (runtime: crop_padding)
        "aspect": 0.1,                    # each side of the crop scaled by U(1 - a, 1 + a)
        "shift": 0.08,                    # crop centre moved by U(-s, s) · box side
        "rotate90": True,
        "flip": True,
        "rotate_deg": 10.0,
        "brightness": 0.15,
        "contrast": 0.15,
        "saturation": 0.15,
        "hue": 0.03,                      # fraction of a full turn of the chroma plane
        "blur_p": 0.25, "blur_sigma": [0.3, 1.2],
        "noise_p": 0.25, "noise_sigma": 0.03,
    },
    "export": "models/classifier.pt",
    "out": "runs/classifier",
}


# --- configuration --------------------------------------------------------------------------------------
def load_config(path=None, overrides: dict | None = None) -> dict:
    cfg = json.loads(json.dumps(DEFAULTS))
    user = json.loads(Path(path).read_text()) if path else {}
    for source in (user, overrides or {}):
        for k, v in source.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict) and k not in ("classes", "model"):
                cfg[k].update(v)
            else:
                cfg[k] = v
    if not cfg["classes"]:
        raise ValueError("the config needs 'classes': a list of folders or {label: [folders]}")
    return cfg


def label_groups(cfg: dict) -> tuple[list[str], dict[str, int]]:
    """(labels, folder → label index)."""
    classes = cfg["classes"]
    if isinstance(classes, dict):
        labels = list(classes)
        folders = {f: i for i, lab in enumerate(labels) for f in classes[lab]}
    else:
        labels = list(classes)
        folders = {f: i for i, f in enumerate(labels)}
    return labels, folders


# --- data and split -------------------------------------------------------------------------------------
def list_samples(root, folders: dict[str, int]) -> list[tuple[str, int, str]]:
    """[(path relative to root, label index, folder)], sorted by folder then file name."""
    root = Path(root)
    samples = []
    for folder in sorted(folders):
        d = root / folder
        if not d.is_dir():
            raise FileNotFoundError(f"class folder {d} does not exist")
        files = sorted(p.name for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"class folder {d} holds no images")
        samples += [(f"{folder}/{name}", folders[folder], folder) for name in files]
    return samples


def stratified_split(samples, fractions: dict, seed: int) -> dict[str, list[int]]:
    """Indices of samples per split name, in the order of `fractions`; each folder split in the same
    proportions (largest-remainder rounding), shuffled with a generator seeded by (seed, crc32(folder))."""
    names = list(fractions)
    total = sum(fractions.values())
    out = {n: [] for n in names}
    by_folder: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_folder.setdefault(s[2], []).append(i)
    for folder, idx in sorted(by_folder.items()):
        rng = np.random.default_rng([seed, zlib.crc32(folder.encode())])
        order = [idx[j] for j in rng.permutation(len(idx))]
        exact = [len(idx) * fractions[n] / total for n in names]
        counts = [int(math.floor(e)) for e in exact]
        for j in sorted(range(len(names)), key=lambda j: counts[j] - exact[j])[: len(idx) - sum(counts)]:
            counts[j] += 1
        start = 0
        for n, c in zip(names, counts):
            out[n] += sorted(order[start:start + c])
            start += c
    return out


def write_split(path, samples, split: dict[str, list[int]], labels: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "label", "file"])
        for name, idx in split.items():
            for i in idx:
                w.writerow([name, labels[samples[i][1]], samples[i][0]])


def split_summary(samples, split, labels) -> dict:
    return {name: {"total": len(idx), **{lab: sum(1 for i in idx if samples[i][1] == k) for k, lab in enumerate(labels)}}
            for name, idx in split.items()}


# --- cell box and crops ---------------------------------------------------------------------------------
def estimate_cell_box(bgr: np.ndarray, dark: float = 0.85, purple: float = 25.0, close: int = 15,
                      fallback_side: float = 0.36, **_) -> tuple[np.ndarray, bool]:
    """(x1, y1, x2, y2) of the stained cell nearest the image centre, and whether it was found.

    Stained pixels: green channel below `dark` · the image's median green and blue − green > `purple`
    (nuclei, granules, basophilic cytoplasm and platelets are purple; red cells and background are not).
    The mask is opened, closed (joins nuclear lobes and granules) and its component nearest the centre,
    weighted towards large components, gives the box. When nothing is found, or the component lies far from
    the centre, a centred square of fallback_side · image width is returned with False."""
    import cv2
    h, w = bgr.shape[:2]
    b = bgr[:, :, 0].astype(np.float32)
    g = bgr[:, :, 1].astype(np.float32)
    mask = ((g < dark * np.median(g)) & (b - g > purple)).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close, close)))
    n, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
    best, best_d = None, float("inf")
    for i in range(1, n):
        area = stats[i, cv2.CC_STAT_AREA]
        if area < 30:
            continue
        d = math.hypot(centroids[i, 0] - w / 2, centroids[i, 1] - h / 2) / area ** 0.25
        if d < best_d:
            best, best_d = i, d
    if best is not None:
        x, y, bw, bh = (int(v) for v in stats[best, :4])
        cx, cy = x + bw / 2, y + bh / 2
        if math.hypot(cx - w / 2, cy - h / 2) < 0.25 * w and max(bw, bh) >= 0.05 * w:
            return np.array([x, y, x + bw, y + bh], np.float32), True
    s = fallback_side * w / 2
    return np.array([w / 2 - s, h / 2 - s, w / 2 + s, h / 2 + s], np.float32), False


def crop_like_runtime(bgr: np.ndarray, box, padding: float, pad_value: float = 114) -> np.ndarray:
    """The crop TorchScriptClassifier::classify takes: the box plus padding · its size per side (at least
    1 px), floor/ceil to pixels, what lies outside the image filled with pad_value."""
    x1, y1, x2, y2 = (float(v) for v in box)
    px, py = max((x2 - x1) * padding, 1.0), max((y2 - y1) * padding, 1.0)
    wx1, wy1 = int(math.floor(x1 - px)), int(math.floor(y1 - py))
    wx2, wy2 = int(math.ceil(x2 + px)), int(math.ceil(y2 + py))
    crop = np.full((wy2 - wy1, wx2 - wx1, 3), int(round(pad_value)), np.uint8)
    ix1, iy1 = max(wx1, 0), max(wy1, 0)
    ix2, iy2 = min(wx2, bgr.shape[1]), min(wy2, bgr.shape[0])
    if ix2 > ix1 and iy2 > iy1:
        crop[iy1 - wy1:iy2 - wy1, ix1 - wx1:ix2 - wx1] = bgr[iy1:iy2, ix1:ix2]
    return crop


def runtime_input(bgr_crop: np.ndarray, size: int, inp: dict) -> torch.Tensor:
    """[3, size, size] as the runtime's fit_to_input ("stretch", cv2 INTER_LINEAR) and to_tensor make it."""
    import cv2
    if bgr_crop.shape[:2] != (size, size):
        bgr_crop = cv2.resize(bgr_crop, (size, size), interpolation=cv2.INTER_LINEAR)
    img = bgr_crop[:, :, ::-1] if inp["color"] == "rgb" else bgr_crop
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    mean = torch.tensor(inp["mean"]).view(3, 1, 1)
    std = torch.tensor(inp["std"]).view(3, 1, 1)
    return (t * inp["scale"] - mean) / std


def build_cache(root, files: list[str], cfg: dict, cache_dir=None, progress: bool = True) -> dict:
    """{"images": uint8 [N, 3, H, W] RGB (each image at the top left of an H×W canvas of the largest size,
    the rest pad_value), "boxes": float [N, 4] estimated cell boxes in pixels, "found": bool [N],
    "files"}, cached on disk under cache_dir keyed by the files, their sizes and the settings."""
    import cv2
    root = Path(root)
    key_src = json.dumps([str(root.resolve()), files, [os.path.getsize(root / f) for f in files], cfg["box"],
                          cfg["input"]["pad_value"], 3])
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"cells_native_{key}.pt" if cache_dir else None
    if path is not None and path.exists():
        return torch.load(path)
    decoded, boxes, found = [], torch.empty(len(files), 4), torch.empty(len(files), dtype=torch.bool)
    for i, f in enumerate(_progress(files, "cache", progress)):
        bgr = cv2.imread(str(root / f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise IOError(f"cannot read {root / f}")
        box, ok = estimate_cell_box(bgr, **cfg["box"])
        boxes[i], found[i] = torch.from_numpy(box), ok
        decoded.append(bgr)
    h = max(b.shape[0] for b in decoded)
    w = max(b.shape[1] for b in decoded)
    images = torch.full((len(files), 3, h, w), int(round(cfg["input"]["pad_value"])), dtype=torch.uint8)
    for i in range(len(decoded)):
        bgr, decoded[i] = decoded[i], None
        images[i, :, :bgr.shape[0], :bgr.shape[1]] = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)
    cache = {"images": images, "boxes": boxes, "found": found, "files": list(files)}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        torch.save(cache, tmp)
        tmp.replace(path)
    return cache


def normalised_boxes(boxes: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres, half-sizes) [N, 2] of pixel boxes in grid_sample's [-1, 1] coordinates of a width×height
    image (align_corners=False: -1 and 1 are the outer edges of the border pixels)."""
    size = torch.tensor([width, height], dtype=torch.float32)
    centre = (boxes[:, :2] + boxes[:, 2:]) / size - 1
    half = (boxes[:, 2:] - boxes[:, :2]) / size
    return centre, half


# --- batches and augmentation ---------------------------------------------------------------------------
def _uniform(g, n, lo, hi):
    return lo + (hi - lo) * torch.rand(n, generator=g)


def make_batch(images: torch.Tensor, centre: torch.Tensor, half: torch.Tensor, cfg: dict,
               g: torch.Generator | None = None, augment: bool = False) -> torch.Tensor:
    """Normalised float [B, 3, s, s] model inputs from uint8 images [B, 3, H, W]: the box (centre and
    half-size in [-1, 1] image coordinates, normalised_boxes) plus padding per side (crop_padding without
    augmentation, a random one with), stretched to s² by one bilinear resampling, as the runtime's
    crop-and-resize (outside the image: pad_value)."""
    n = images.shape[0]
    s = cfg["input_size"]
    a = cfg["augment"]
    x = images.float().sub_(float(cfg["input"]["pad_value"]))  # sampled with zero padding: pad_value outside
    hw, hh = half[:, 0], half[:, 1]
    if augment:
        pad = _uniform(g, n, *a["padding"])
        sx = hw * (1 + 2 * pad) * _uniform(g, n, 1 - a["aspect"], 1 + a["aspect"])
        sy = hh * (1 + 2 * pad) * _uniform(g, n, 1 - a["aspect"], 1 + a["aspect"])
        side = torch.maximum(hw, hh)  # shift in units of the box's longer side
        tx = _uniform(g, n, -a["shift"], a["shift"]) * 2 * side
        ty = _uniform(g, n, -a["shift"], a["shift"]) * 2 * side
        ang = _uniform(g, n, -a["rotate_deg"], a["rotate_deg"]) * math.pi / 180
        if a["rotate90"]:
            ang = ang + torch.randint(0, 4, (n,), generator=g).float() * (math.pi / 2)
        flip = (torch.rand(n, generator=g) < 0.5).float() * 2 - 1 if a["flip"] else torch.ones(n)
    else:
        p = cfg["crop_padding"]
        sx, sy = hw * (1 + 2 * p), hh * (1 + 2 * p)
        tx = ty = ang = torch.zeros(n)
        flip = torch.ones(n)
    # input = diag(sx, sy) · R(ang) · diag(flip, 1) · output + t: an axis-aligned crop whose content turns.
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([sx * cos * flip, -sx * sin, centre[:, 0] + tx], 1),
                         torch.stack([sy * sin * flip, sy * cos, centre[:, 1] + ty], 1)], 1)
    grid = F.affine_grid(theta, [n, 3, s, s], align_corners=False)
    pad_value = float(cfg["input"]["pad_value"])
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + pad_value
    x = x / 255.0
    if augment:
        x = _color_jitter(x, a, g)
        x = _blur(x, a, g)
        if a["noise_p"] > 0:
            on = (torch.rand(n, generator=g) < a["noise_p"]).float()
            sigma = on * _uniform(g, n, 0, a["noise_sigma"])
            x = x + sigma.view(n, 1, 1, 1) * torch.randn(x.shape, generator=g)
        x = x.clamp(0, 1)
    inp = cfg["input"]
    mean = torch.tensor(inp["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(inp["std"]).view(1, 3, 1, 1)
    if inp["color"] == "bgr":
        x = x.flip(1)
    return (x * (255.0 * inp["scale"]) - mean) / std


_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _color_jitter(x, a, g):
    n = x.shape[0]
    b = _uniform(g, n, 1 - a["brightness"], 1 + a["brightness"]).view(n, 1, 1, 1)
    c = _uniform(g, n, 1 - a["contrast"], 1 + a["contrast"]).view(n, 1, 1, 1)
    sat = _uniform(g, n, 1 - a["saturation"], 1 + a["saturation"])
    hue = _uniform(g, n, -a["hue"], a["hue"]) * 2 * math.pi
    x = x * b
    gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = (x - gray.mean((2, 3), keepdim=True)) * c + gray.mean((2, 3), keepdim=True)
    # Hue turn and saturation scale in YIQ: Y kept, the (I, Q) chroma vector rotated and scaled.
    cos, sin = torch.cos(hue) * sat, torch.sin(hue) * sat
    one, zero = torch.ones(n), torch.zeros(n)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                       torch.stack([zero, sin, cos], 1)], 1)
    m = torch.linalg.inv(_TO_YIQ) @ rot @ _TO_YIQ  # [n, 3, 3]
    return torch.einsum("nij,njhw->nihw", m, x).clamp(0, 1)


def _blur(x, a, g):
    n, c, h, w = x.shape
    if a["blur_p"] <= 0:
        return x
    on = torch.rand(n, generator=g) < a["blur_p"]
    sigma = _uniform(g, n, *a["blur_sigma"])
    if not on.any():
        return x
    r = 2
    t = torch.arange(-r, r + 1).float()
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    k = k / k.sum(1, keepdim=True)
    k = torch.where(on.view(-1, 1), k, (t == 0).float().expand(n, -1))  # identity kernel when off
    k = k.repeat_interleave(c, 0)  # [n·c, 5]
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


# --- training -------------------------------------------------------------------------------------------
def _progress(it, desc, enabled=True, total=None):
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    tty = sys.stderr.isatty()
    return tqdm(it, desc=desc, total=total, mininterval=0.5 if tty else 30, dynamic_ncols=tty, leave=tty)


def _param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, cfg, steps_per_epoch: int):
    if cfg["optimizer"] == "adamw":
        opt = torch.optim.AdamW(_param_groups(model, cfg["weight_decay"]), lr=cfg["lr"])
    elif cfg["optimizer"] == "sgd":
        opt = torch.optim.SGD(_param_groups(model, cfg["weight_decay"]), lr=cfg["lr"], momentum=cfg["momentum"],
                              nesterov=True)
    else:
        raise ValueError(f"optimizer must be adamw or sgd, got {cfg['optimizer']!r}")
    total = max(1, cfg["epochs"] * steps_per_epoch)
    warm = min(int(cfg["warmup_epochs"] * steps_per_epoch), total - 1)

    def factor(step):
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)


def _seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def save_checkpoint(path, **state):
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    tmp.replace(path)


@torch.no_grad()
def predict(model, images, centre, half, cfg, batch_size=64) -> torch.Tensor:
    """Logits of the cached images framed as the runtime frames them (no augmentation)."""
    model.eval()
    out = [model(make_batch(images[i:i + batch_size], centre[i:i + batch_size], half[i:i + batch_size], cfg))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def classification_metrics(pred, target, labels) -> dict:
    k = len(labels)
    cm = torch.zeros(k, k, dtype=torch.long)
    for t, p in zip(target.tolist(), pred.tolist()):
        cm[t, p] += 1
    recall = {lab: (cm[i, i] / cm[i].sum()).item() if cm[i].sum() else None for i, lab in enumerate(labels)}
    precision = {lab: (cm[i, i] / cm[:, i].sum()).item() if cm[:, i].sum() else None for i, lab in enumerate(labels)}
    f1 = {lab: (2 * recall[lab] * precision[lab] / (recall[lab] + precision[lab]))
          if recall[lab] is not None and precision[lab] and recall[lab] + precision[lab] > 0 else 0.0 for lab in labels}
    n = int(cm.sum())
    return {"n": n, "accuracy": (cm.diag().sum() / max(n, 1)).item(),
            "balanced_accuracy": float(np.mean([v for v in recall.values() if v is not None])),
            "macro_f1": float(np.mean(list(f1.values()))),
            "recall": recall, "precision": precision, "f1": f1,
            "confusion_matrix": {"rows_true_cols_pred": labels, "matrix": cm.tolist()}}


def train(cfg: dict, out_dir, data: dict, resume: bool = False, max_epochs: int | None = None,
          max_steps_per_epoch: int | None = None, progress: bool = True, log=print) -> dict:
    """Trains on data = {"images", "centre", "half", "labels" (long), "train", "val" (index lists)}; writes
    out_dir/last.pt after every epoch and returns {"model", "history", "epoch"}. With resume, continues
    from out_dir/last.pt. max_epochs stops early (the schedule still spans cfg["epochs"])."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "last.pt"
    labels_t = data["labels"]
    num_classes = int(cfg["num_classes"])
    train_idx = torch.tensor(data["train"], dtype=torch.long)
    bs = cfg["batch_size"]
    steps = len(train_idx) // bs if len(train_idx) >= bs else 1  # drop the last partial batch
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)

    _seed_all(cfg["seed"])
    model = build_classifier(cfg["model"], num_classes, cfg["input_size"])
    if cfg["metric_loss"] and not hasattr(model, "logits_and_embedding"):
        raise ValueError(f"metric_loss needs a model with an embedding (resnet_ibn, overlap_vit), not {cfg['model']['name']!r}")
    opt, sched = make_optimizer(model, cfg, steps)
    history, start_epoch, elapsed = [], 0, 0.0
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {ckpt_path}")
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        history, start_epoch, elapsed = ck["history"], ck["epoch"] + 1, ck.get("elapsed_s", 0.0)
        log(f"resumed from {ckpt_path} after epoch {ck['epoch'] + 1}/{cfg['epochs']}")
    weights = None
    if cfg.get("class_weights") == "balanced":
        counts = torch.bincount(labels_t[train_idx], minlength=num_classes).float()
        weights = counts.sum() / (num_classes * counts.clamp(min=1))
    end_epoch = cfg["epochs"] if max_epochs is None else min(cfg["epochs"], max_epochs)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        g = _epoch_generator(cfg["seed"], epoch)
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        model.train()
        losses, metric_losses, correct, seen = [], [], 0, 0
        bar = _progress(range(steps), f"epoch {epoch + 1}/{cfg['epochs']}", progress, total=steps)
        for step in bar:
            idx = order[step * bs:(step + 1) * bs]
            x = make_batch(data["images"][idx], data["centre"][idx], data["half"][idx], cfg, g, augment=True)
            y = labels_t[idx]
            if cfg["metric_loss"]:
                logits, embedding = model.logits_and_embedding(x)
                metric = metric_loss(cfg["metric_loss"], embedding, y)
                metric_losses.append(metric.item())
            else:
                logits, metric = model(x), 0.0
            loss = F.cross_entropy(logits, y, weight=weights, label_smoothing=cfg["label_smoothing"]) + metric
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "train_acc": correct / max(seen, 1),
                  "step_losses": losses, "lr": sched.get_last_lr()[0]}
        if metric_losses:
            record["train_metric_loss"] = float(np.mean(metric_losses))
        if data.get("val"):
            vi = torch.tensor(data["val"], dtype=torch.long)
            logits = predict(model, data["images"][vi], data["centre"][vi], data["half"][vi], cfg)
            record["val_loss"] = F.cross_entropy(logits, labels_t[vi]).item()
            record["val_acc"] = (logits.argmax(1) == labels_t[vi]).float().mean().item()
        elapsed += time.time() - t0
        record["elapsed_s"] = elapsed
        history.append(record)
        save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                        epoch=epoch, rng=_rng_state(), history=history, elapsed_s=elapsed, config=cfg)
        log(f"epoch {epoch + 1}/{cfg['epochs']}: loss {record['train_loss']:.4f} train acc {record['train_acc']:.4f}"
            + (f" val loss {record['val_loss']:.4f} val acc {record['val_acc']:.4f}" if "val_acc" in record else "")
            + f" lr {record['lr']:.2e} ({time.time() - t0:.0f} s, {elapsed / 60:.1f} min in all)")
    return {"model": model, "history": history, "epoch": len(history)}


# --- evaluation on the held-out split, through the runtime's path ------------------------------------------
@torch.no_grad()
def evaluate_runtime_path(model, root, files, boxes, targets, labels, cfg, padding=None, batch_size=128,
                          progress=True) -> dict:
    """Metrics of the model on the original image files, each cropped around its box as the C++ runtime
    crops a detection (crop_like_runtime, runtime_input)."""
    import cv2
    model.eval()
    pad = cfg["crop_padding"] if padding is None else padding
    preds = []
    batch = []
    for i, f in enumerate(_progress(files, f"test (padding {pad})", progress)):
        bgr = cv2.imread(str(Path(root) / f), cv2.IMREAD_COLOR)
        batch.append(runtime_input(crop_like_runtime(bgr, boxes[i], pad, cfg["input"]["pad_value"]),
                                   cfg["input_size"], cfg["input"]))
        if len(batch) == batch_size or i == len(files) - 1:
            preds.append(model(torch.stack(batch)).argmax(1))
            batch = []
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    return classification_metrics(pred, torch.as_tensor(targets), labels)


def export(model, cfg, labels, path, training: dict) -> Path:
    from .export import export_model
    s = cfg["input_size"]
    meta = {"format": "bloodcv-model", "version": 1, "task": "classification", "name": cfg["name"],
            "labels": labels, "input_size": [s, s], "input": dict(cfg["input"], resize="stretch"),
            "crop_padding": cfg["crop_padding"], "training": training}
    torch.manual_seed(0)
    example = torch.randn(2, 3, s, s)
    return export_model(model.eval(), path, meta, example)


def _metrics_summary(m: dict) -> dict:
    return {"accuracy": round(m["accuracy"], 4), "balanced_accuracy": round(m["balanced_accuracy"], 4),
            "macro_f1": round(m["macro_f1"], 4), "n": m["n"],
            "recall": {k: round(v, 4) for k, v in m["recall"].items()}}


def run(args) -> int:
    overrides = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.data_root:
        overrides["data_root"] = args.data_root
    cfg = load_config(args.config, overrides)
    out_dir = Path(args.out or cfg["out"])
    export_path = Path(args.export_path or cfg["export"])
    torch.set_num_threads(int(cfg["num_threads"]))
    try:
        import cv2
        cv2.setNumThreads(int(cfg["num_threads"]))
    except ImportError:
        pass
    torch.use_deterministic_algorithms(True, warn_only=True)
    labels, folders = label_groups(cfg)
    cfg["num_classes"] = len(labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(out_dir / "train.log", "a")

    def log(msg):
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    command = "python -m bloodcv.train classifier " + " ".join(shlex.quote(a) for a in args.argv)
    log(f"command: {command}")
    root = Path(cfg["data_root"])
    samples = list_samples(root, folders)
    split = stratified_split(samples, cfg["split"], cfg["seed"])
    write_split(out_dir / "split.csv", samples, split, labels)
    summary = split_summary(samples, split, labels)
    log(f"{len(samples)} images, {len(labels)} labels {labels}; split " +
        ", ".join(f"{k} {v['total']}" for k, v in summary.items()))
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=1))

    t0 = time.time()
    files = [s[0] for s in samples]
    cache = build_cache(root, files, cfg, cfg["cache_dir"], progress=not args.quiet)
    found = cache["found"]
    log(f"cache ready ({time.time() - t0:.0f} s): {tuple(cache['images'].shape)} uint8, "
        f"cell box found in {int(found.sum())}/{len(found)} (the rest: centred fallback box)")
    targets = torch.tensor([s[1] for s in samples], dtype=torch.long)
    centre, half = normalised_boxes(cache["boxes"], cache["images"].shape[3], cache["images"].shape[2])
    data = {"images": cache["images"], "centre": centre, "half": half, "labels": targets,
            "train": split["train"], "val": split.get("val", [])}

    if args.export_only:
        ck_path = out_dir / "last.pt"
        if not ck_path.exists():
            raise FileNotFoundError(f"--export-only: no checkpoint {ck_path}")
        ck = torch.load(ck_path)
        model = build_classifier(cfg["model"], len(labels), cfg["input_size"])
        model.load_state_dict(ck["model"])
        history = ck["history"]
        if len(history) < cfg["epochs"]:
            log(f"warning: the checkpoint holds {len(history)} of {cfg['epochs']} epochs")
    else:
        result = train(cfg, out_dir, data, resume=args.resume, max_steps_per_epoch=args.max_steps,
                       progress=not args.quiet, log=log)
        model, history = result["model"], result["history"]

    test_idx = split.get("test", [])
    test_files = [files[i] for i in test_idx]
    test_boxes = cache["boxes"][test_idx].numpy() if test_idx else np.zeros((0, 4))
    metrics = {"name": cfg["name"], "labels": labels, "input_size": cfg["input_size"], "model": cfg["model"],
               "parameters": sum(p.numel() for p in model.parameters()), "epochs": len(history),
               "train_wall_time_s": round(history[-1]["elapsed_s"], 1) if history else 0.0,
               "split": {"seed": cfg["seed"], "fractions": cfg["split"], "counts": summary, "file": "split.csv"},
               "cell_box_found": {"found": int(found.sum()), "total": len(found)},
               "history": [{k: v for k, v in h.items() if k != "step_losses"} for h in history]}
    if test_idx:
        t1 = time.time()
        test = evaluate_runtime_path(model, root, test_files, test_boxes, targets[test_idx], labels, cfg,
                                     progress=not args.quiet)
        metrics["test"] = test
        metrics["test_crop_padding_sweep"] = {}
        for p in cfg.get("eval_paddings", [0.1, 0.35]):
            m = evaluate_runtime_path(model, root, test_files, test_boxes, targets[test_idx], labels, cfg, padding=p,
                                      progress=False)
            metrics["test_crop_padding_sweep"][str(p)] = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"]}
        cached = predict(model, cache["images"][test_idx], centre[test_idx], half[test_idx], cfg).argmax(1)
        metrics["test_cached_path_accuracy"] = (cached == targets[test_idx]).float().mean().item()
        log(f"test ({time.time() - t1:.0f} s): accuracy {test['accuracy']:.4f}, balanced {test['balanced_accuracy']:.4f}; "
            + ", ".join(f"{k} {v:.3f}" for k, v in test["recall"].items()))
        log("test confusion matrix (rows true, columns predicted):\n" + "\n".join(
            f"  {lab:>12s} " + " ".join(f"{v:4d}" for v in row)
            for lab, row in zip(labels, test["confusion_matrix"]["matrix"])))
        for p, m in metrics["test_crop_padding_sweep"].items():
            log(f"test at crop_padding {p}: accuracy {m['accuracy']:.4f}")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))

    training = {"data": {"dataset": cfg["data_name"], "root": cfg["data_root"],
                         "classes": cfg["classes"], "citation": cfg["data_citation"], "licence": cfg["data_licence"]},
                "split": {"seed": cfg["seed"], "fractions": cfg["split"],
                          "counts": {k: v["total"] for k, v in summary.items()},
                          "method": "stratified by class folder, each shuffled with numpy default_rng((seed, crc32(folder)))"},
                "command": command, "config": str(args.config), "model": cfg["model"], "epochs": len(history),
                "recipe": "bloodcv.train_classifier: crops around an estimated cell box framed like the runtime, "
                          "AdamW/cosine, label smoothing, flips/rot90/colour/blur/noise/crop jitter",
                "metrics": _metrics_summary(metrics["test"]) if "test" in metrics else None}
    export(model, cfg, labels, export_path, training)
    log(f"exported {export_path} ({export_path.stat().st_size / 1e6:.2f} MB)")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="JSON config (configs/classifier_pbc.json)")
    p.add_argument("--out", help="run directory (checkpoints, split.csv, metrics.json, train.log); default: the config's")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last.pt")
    p.add_argument("--export-only", action="store_true", help="evaluate and export the run directory's last.pt")
    p.add_argument("--export-path", help="model file to write; default: the config's 'export'")
    p.add_argument("--data-root", help="dataset root (class folders); default: the config's")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--max-steps", type=int, help="at most this many steps per epoch (smoke runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
