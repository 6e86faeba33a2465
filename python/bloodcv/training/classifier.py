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
import shlex
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cells import (CellSample, bccd_samples, coco_samples, detector_samples, folder_samples, split_samples,
                          stratified_split)
from ..models import build_classifier
from ..models.metric_loss import metric_loss
from .common import Log, plot_history, progress as progress_bar, rng_state, save_checkpoint, seed_everything, set_rng_state
from .config import add_common_arguments, apply_settings, common_overrides, load_config as load_any_config, resolve_path

HELP = "train a single-cell classifier (PBC white-cell types) and export it"

PBC_CITATION = ("Acevedo A., Merino A., Alférez S., Molina Á., Boldú L., Rodellar J. A dataset of microscopic "
                "peripheral blood cell images for development of automatic recognition systems. Data in Brief 30 "
                "(2020) 105474. Mendeley Data, doi:10.17632/snkd93bnjr.1. Licence CC BY 4.0.")
DEFAULTS = {
    "name": "classifier",
    "dataset_root": "../shared/datasets/pbc",  # the class folders (a config without "sources")
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
    "out": "runs/classifier",
    "box": {"dark": 0.85, "purple": 25.0, "close": 15, "fallback_side": 0.36},
    "cell_context": 0.6,                  # cells of annotated fields: cached with this · their side around them
    "cell_max_side": 400,                 # ... and at most this many pixels a side
    "sources": None,                      # [{"name", "kind": "folders" | "bccd", ...}] (bloodcv.data.cells)
    "exclude_sources": [],                # sources that only test (leave-one-source-out)
    "sampling": "shuffle",                # or "balanced": each (source, class) group drawn ∝ its size ** -balance_power
    "balance_power": 0.5,
    "calibrate": False,                   # temperature scaling on the validation split, written to the model file
    "uncertain_below": 0.5,               # with calibrate: the model file's threshold for "uncertain"
    "stain_targets": False,               # Reinhard and Macenko targets of the training cells in the model file
    "stain_default": "none",              # ... and the method the model file recommends to pipelines
    "common_types": [],                   # per-source test: balanced accuracy over these labels too
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
    "class_weights": None,                # "balanced": cross-entropy weighted by inverse class frequency
    "init_weights": None,                 # a bloodcv classifier file: its tensors start the training (see load_initial_weights)
    "eval_paddings": [0.1, 0.35],         # the test split also at these crop paddings
    "threads": 1,
    "device": "cpu",                      # or "cuda": the training loop's device (evaluation and export stay on the CPU)
    "max_steps_per_epoch": None,          # smoke runs
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
        # Other laboratories' stains and optics (0 / off by default; each draws random numbers only when on):
        "stain_scale": 0.0,               # each stain's amount (H&E colour deconvolution) scaled by U(1 - s, 1 + s)
        "stain_shift": 0.0,               # ... and shifted by U(-s, s) in optical density
        "white_balance": 0.0,             # each channel's gain U(1 - w, 1 + w)
        "gamma": 0.0,                     # intensity ** exp(U(-g, g))
        "grayscale_p": 0.0,
        "downscale_p": 0.0, "downscale": [0.35, 1.0],   # resolution: down by U(lo, hi), back up (bilinear)
        "jpeg_p": 0.0, "jpeg_quality": [30, 95],
    },
    "export": {"path": "models/classifier.pt"},
}


# --- configuration --------------------------------------------------------------------------------------
def load_config(path=None, overrides: dict | None = None) -> dict:
    """DEFAULTS ← the file ← overrides (bloodcv.training.config); "classes" and "model" are replaced whole."""
    cfg = load_any_config(path, DEFAULTS, overrides, replaced=("classes", "model"))
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
def list_samples(root, folders: dict[str, int]) -> list[CellSample]:
    """Samples of one dataset's class folders (folder → label index), files relative to root."""
    return folder_samples(root, folders)


def samples_of(cfg: dict, labels: list[str], folders: dict[str, int]) -> tuple[list[CellSample], dict[str, list[int]]]:
    """The samples of every source and their split; the training sources' detector boxes join their train
    split; sources in cfg["exclude_sources"] keep only their test split (leave-one-source-out)."""
    if not cfg.get("sources"):
        samples = list_samples(resolve_path(cfg["dataset_root"], cfg), folders)
        return samples, stratified_split(samples, cfg["split"], cfg["seed"])
    samples = []
    for source in cfg["sources"]:
        unknown = set(source) - {"name", "kind", "root", "classes", "types", "detector", "citation", "licence", "description"}
        if unknown:
            raise ValueError(f"source {source.get('name')!r}: unknown keys {sorted(unknown)}")
        if source["kind"] == "folders":
            mapping = {folder: labels.index(label) for label, fs in source["classes"].items() for folder in fs}
            samples += folder_samples(resolve_path(source["root"], cfg), mapping, source["name"])
        elif source["kind"] == "bccd":
            samples += bccd_samples(resolve_path(source["root"], cfg), source["types"], labels, source["name"])
        elif source["kind"] == "coco":
            samples += coco_samples(resolve_path(source["root"], cfg), source["types"], labels, source["name"])
        else:
            raise ValueError(f"source {source['name']!r}: kind must be folders, bccd or coco, got {source['kind']!r}")
    split = split_samples(samples, cfg["split"], cfg["seed"])
    excluded = set(cfg.get("exclude_sources") or [])
    unknown = excluded - {src["name"] for src in cfg["sources"]}
    if unknown:
        raise ValueError(f"exclude_sources names no source: {sorted(unknown)}")
    for name in ("train", "val"):
        split[name] = [i for i in split.get(name, []) if samples[i].source not in excluded]
    for source in cfg["sources"]:
        if source.get("detector") and source["name"] not in excluded:
            extra = detector_samples(samples, [i for i in split["train"] if samples[i].source == source["name"]],
                                     resolve_path(source["detector"], cfg))
            split["train"] += list(range(len(samples), len(samples) + len(extra)))
            samples += extra
    return samples, split


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
    """The crop TorchScriptClassifier::classify takes: the box clipped to the image, plus padding · its size
    per side (at least 1 px), floor/ceil to pixels, what lies outside the image filled with pad_value."""
    height, width = bgr.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
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


def cell_image(bgr: np.ndarray, box, cfg: dict) -> tuple[np.ndarray, np.ndarray, bool]:
    """(pixels, cell box in them, whether the box was found) for the cache. An image without a box is one
    centred cell: kept whole, its box estimated. A field with a box: the box with cell_context · its longer
    side around it (room for the widest training crop), at most cell_max_side pixels a side (INTER_AREA)."""
    import cv2
    if box is None:
        found_box, ok = estimate_cell_box(bgr, **cfg["box"])
        return bgr, found_box, ok
    x1, y1, x2, y2 = (float(v) for v in box)
    margin = cfg["cell_context"] * max(x2 - x1, y2 - y1)
    rx1, ry1 = max(0, int(math.floor(x1 - margin))), max(0, int(math.floor(y1 - margin)))
    rx2, ry2 = min(bgr.shape[1], int(math.ceil(x2 + margin))), min(bgr.shape[0], int(math.ceil(y2 + margin)))
    crop = bgr[ry1:ry2, rx1:rx2]
    local = np.array([x1 - rx1, y1 - ry1, x2 - rx1, y2 - ry1], np.float32)
    scale = min(1.0, cfg["cell_max_side"] / max(crop.shape[:2]))
    if scale < 1.0:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        local *= scale
    return crop, local, True


def build_cache(root, files: list[str], cfg: dict, cache_dir=None, progress: bool = True, boxes=None) -> dict:
    """{"images": uint8 [N, 3, H, W] RGB (each cell image at the top left of an H×W canvas of the largest size,
    the rest pad_value), "boxes": float [N, 4] cell boxes in those pixels, "found": bool [N], "files"}, cached
    on disk under cache_dir keyed by the files, their sizes and the settings. files are relative to root (or
    absolute); boxes: per file the cell's box in image pixels, or None for a centred single cell (cell_image)."""
    import cv2
    root = Path(root)
    boxes = boxes or [None] * len(files)
    key_parts = [str(root.resolve()), files, [os.path.getsize(root / f) for f in files], cfg["box"], cfg["input"]["pad_value"], 3]
    if any(b is not None for b in boxes):  # single-cell datasets keep the key (and cache) they always had
        key_parts += [[None if b is None else [round(float(v), 3) for v in b] for b in boxes], cfg["cell_context"], cfg["cell_max_side"]]
    key = hashlib.sha1(json.dumps(key_parts).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"cells_native_{key}.pt" if cache_dir else None
    if path is not None and path.exists():
        return torch.load(path)
    decoded, cell_boxes, found = [], torch.empty(len(files), 4), torch.empty(len(files), dtype=torch.bool)
    for i, f in enumerate(progress_bar(files, "cache", progress)):
        bgr = cv2.imread(str(root / f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise IOError(f"cannot read {root / f}")
        pixels, box, ok = cell_image(bgr, boxes[i], cfg)
        cell_boxes[i], found[i] = torch.from_numpy(np.asarray(box, np.float32)), ok
        decoded.append(pixels)
    h = max(b.shape[0] for b in decoded)
    w = max(b.shape[1] for b in decoded)
    images = torch.full((len(files), 3, h, w), int(round(cfg["input"]["pad_value"])), dtype=torch.uint8)
    for i in range(len(decoded)):
        bgr, decoded[i] = decoded[i], None
        images[i, :, :bgr.shape[0], :bgr.shape[1]] = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)
    cache = {"images": images, "boxes": cell_boxes, "found": found, "files": list(files)}
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
    half-size in [-1, 1] image coordinates, normalised_boxes; clipped to the image) plus padding per side (crop_padding without
    augmentation, a random one with), stretched to s² by one bilinear resampling, as the runtime's
    crop-and-resize (outside the image: pad_value). The random draws come from g on the CPU whatever the
    images' device (the noise field from a generator on that device seeded from g)."""
    n = images.shape[0]
    dev = images.device
    s = cfg["input_size"]
    a = cfg["augment"]
    # The box clipped to the image first, as the runtime clips a detection before adding its context.
    low, high = (centre - half).clamp(-1, 1), (centre + half).clamp(-1, 1)
    centre, half = (low + high) / 2, (high - low) / 2
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
                         torch.stack([sy * sin * flip, sy * cos, centre[:, 1] + ty], 1)], 1).to(dev)
    grid = F.affine_grid(theta, [n, 3, s, s], align_corners=False)
    pad_value = float(cfg["input"]["pad_value"])
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + pad_value
    x = x / 255.0
    if augment:
        x = _stain_and_optics(x, a, g)
        x = _color_jitter(x, a, g)
        if a["grayscale_p"] > 0:
            on = (torch.rand(n, generator=g) < a["grayscale_p"]).view(n, 1, 1, 1).to(dev)
            gray = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)
            x = torch.where(on, gray, x)
        x = _blur(x, a, g)
        x = _downscale(x, a, g)
        x = _jpeg(x, a, g)
        if a["noise_p"] > 0:
            on = (torch.rand(n, generator=g) < a["noise_p"]).float()
            sigma = on * _uniform(g, n, 0, a["noise_sigma"])
            # The noise field is drawn where the images are, from a seed drawn from g (millions of numbers).
            field = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=g)))
            x = x + sigma.view(n, 1, 1, 1).to(dev) * torch.randn(x.shape, generator=field, device=dev)
        x = x.clamp(0, 1)
    inp = cfg["input"]
    mean = torch.tensor(inp["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(inp["std"], device=dev).view(1, 3, 1, 1)
    if inp["color"] == "bgr":
        x = x.flip(1)
    return (x * (255.0 * inp["scale"]) - mean) / std


# Ruifrok and Johnston's haematoxylin, eosin and residual optical-density vectors (rows; RGB columns).
_STAINS = torch.nn.functional.normalize(torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]), dim=1)


def _stain_and_optics(x, a, g):
    """Another laboratory's stain batch (H&E amounts scaled and shifted in optical density), white balance
    and gamma; each only when its amount is above 0."""
    n, dev = x.shape[0], x.device
    if a["stain_scale"] > 0 or a["stain_shift"] > 0:
        stains = _STAINS.to(dev)
        od = -torch.log(x.clamp(min=1 / 255))
        amounts = torch.einsum("nchw,ck->nkhw", od, torch.linalg.inv(stains))
        scale = torch.ones(n, 3)
        shift = torch.zeros(n, 3)
        scale[:, :2] = _uniform(g, 2 * n, 1 - a["stain_scale"], 1 + a["stain_scale"]).view(n, 2)
        shift[:, :2] = _uniform(g, 2 * n, -a["stain_shift"], a["stain_shift"]).view(n, 2)
        amounts = (amounts * scale.view(n, 3, 1, 1).to(dev)
                   + shift.view(n, 3, 1, 1).to(dev) * (amounts[:, :2].sum(1, keepdim=True) > 0.05))
        x = torch.exp(-torch.einsum("nkhw,kc->nchw", amounts, stains)).clamp(0, 1)
    if a["white_balance"] > 0:
        x = (x * _uniform(g, 3 * n, 1 - a["white_balance"], 1 + a["white_balance"]).view(n, 3, 1, 1).to(dev)).clamp(0, 1)
    if a["gamma"] > 0:
        x = x.clamp(min=1e-4) ** torch.exp(_uniform(g, n, -a["gamma"], a["gamma"])).view(n, 1, 1, 1).to(dev)
    return x


def _downscale(x, a, g):
    """Lower resolution (another microscope, objective or camera): down by a random factor and back up."""
    if a["downscale_p"] <= 0:
        return x
    n, _, h, w = x.shape
    on = torch.rand(n, generator=g) < a["downscale_p"]
    factor = _uniform(g, n, *a["downscale"])
    out = x.clone()
    for i in torch.nonzero(on).flatten().tolist():
        size = (max(4, int(round(h * factor[i].item()))), max(4, int(round(w * factor[i].item()))))
        small = F.interpolate(x[i:i + 1], size=size, mode="bilinear", align_corners=False, antialias=True)
        out[i:i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def _jpeg(x, a, g):
    """JPEG compression at a random quality, as other scanners and cameras save their images."""
    if a["jpeg_p"] <= 0:
        return x
    import cv2
    n = x.shape[0]
    on = torch.rand(n, generator=g) < a["jpeg_p"]
    quality = torch.randint(a["jpeg_quality"][0], a["jpeg_quality"][1] + 1, (n,), generator=g)
    out = x.clone()
    for i in torch.nonzero(on).flatten().tolist():
        rgb = (x[i].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality[i])])
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1]
        out[i] = torch.from_numpy(np.ascontiguousarray(decoded)).permute(2, 0, 1).to(x.device).float() / 255
    return out


_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _color_jitter(x, a, g):
    n, dev = x.shape[0], x.device
    b = _uniform(g, n, 1 - a["brightness"], 1 + a["brightness"]).view(n, 1, 1, 1).to(dev)
    c = _uniform(g, n, 1 - a["contrast"], 1 + a["contrast"]).view(n, 1, 1, 1).to(dev)
    sat = _uniform(g, n, 1 - a["saturation"], 1 + a["saturation"])
    hue = _uniform(g, n, -a["hue"], a["hue"]) * 2 * math.pi
    x = x * b
    gray = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = (x - gray.mean((2, 3), keepdim=True)) * c + gray.mean((2, 3), keepdim=True)
    # Hue turn and saturation scale in YIQ: Y kept, the (I, Q) chroma vector rotated and scaled.
    cos, sin = torch.cos(hue) * sat, torch.sin(hue) * sat
    one, zero = torch.ones(n), torch.zeros(n)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                       torch.stack([zero, sin, cos], 1)], 1)
    m = (torch.linalg.inv(_TO_YIQ) @ rot @ _TO_YIQ).to(dev)  # [n, 3, 3]
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
    k = k.repeat_interleave(c, 0).to(x.device)  # [n·c, 5]
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


# --- training -------------------------------------------------------------------------------------------
def load_initial_weights(model, path) -> list[str]:
    """Copies into model every tensor of the bloodcv classifier file at path with the same name and shape, and
    returns the names left as initialised (the head, when the labels differ). Another architecture is refused:
    a model tensor the file lacks means the networks differ, not just their heads."""
    from ..export import load_model
    source = load_model(path)[0].state_dict()
    own = model.state_dict()
    absent = [k for k in own if k not in source]
    if absent:
        raise ValueError(f"init_weights {path}: another architecture (lacks {', '.join(absent[:3])}"
                         f"{', …' if len(absent) > 3 else ''})")
    fresh = [k for k in own if source[k].shape != own[k].shape]
    if len(fresh) == len(own):
        raise ValueError(f"init_weights {path}: no tensor has this model's shape")
    model.load_state_dict({k: (own[k] if k in fresh else source[k]) for k in own})
    return fresh


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


@torch.no_grad()
def predict(model, images, centre, half, cfg, batch_size=64) -> torch.Tensor:
    """Logits of the cached images framed as the runtime frames them (no augmentation)."""
    model.eval()
    dev = next(model.parameters()).device
    out = [model(make_batch(images[i:i + batch_size].to(dev), centre[i:i + batch_size], half[i:i + batch_size], cfg)).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def epoch_order(train_idx: torch.Tensor, groups, cfg: dict, g: torch.Generator) -> torch.Tensor:
    """Positions into train_idx for one epoch: a permutation ("shuffle"), or ("balanced") len(train_idx)
    draws with replacement, each sample weighted by its (source, class) group's size ** -balance_power, so
    that small groups (BCCD's few lymphocytes) are seen more often without drowning the large ones."""
    if cfg["sampling"] == "shuffle":
        return torch.randperm(len(train_idx), generator=g)
    if cfg["sampling"] != "balanced":
        raise ValueError(f"sampling must be shuffle or balanced, got {cfg['sampling']!r}")
    group = torch.as_tensor(groups)[train_idx]
    sizes = torch.bincount(group).float()
    weights = sizes[group] ** -cfg["balance_power"]
    return torch.multinomial(weights, len(train_idx), replacement=True, generator=g)


def train(cfg: dict, out_dir, data: dict, resume: bool = False, max_epochs: int | None = None,
          max_steps_per_epoch: int | None = None, progress: bool = True, log=print) -> dict:
    """Trains on data = {"images", "centre", "half", "labels" (long), "train", "val" (index lists)}; writes
    out_dir/last.pt after every epoch and returns {"model", "history", "epoch"}. With resume, continues
    from out_dir/last.pt. max_epochs stops early (the schedule still spans cfg["epochs"]). On cfg["device"]
    the model and the cached images live there (the returned model is back on the CPU)."""
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

    device = torch.device(cfg["device"])
    images = data["images"].to(device)
    seed_everything(cfg["seed"])
    model = build_classifier(cfg["model"], num_classes, cfg["input_size"]).to(device)
    if cfg["metric_loss"] and not hasattr(model, "logits_and_embedding"):
        raise ValueError(f"metric_loss needs a model with an embedding (resnet_ibn, overlap_vit), not {cfg['model']['name']!r}")
    if cfg["init_weights"] and not resume:
        fresh = load_initial_weights(model, resolve_path(cfg["init_weights"], cfg))
        log(f"initialised from {cfg['init_weights']}" + (f"; as built: {', '.join(fresh)}" if fresh else ""))
    opt, sched = make_optimizer(model, cfg, steps)
    history, start_epoch, elapsed = [], 0, 0.0
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {ckpt_path}")
        ck = torch.load(ckpt_path, map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        set_rng_state(ck["rng"])
        history, start_epoch, elapsed = ck["history"], ck["epoch"] + 1, ck.get("elapsed_s", 0.0)
        log(f"resumed from {ckpt_path} after epoch {ck['epoch'] + 1}/{cfg['epochs']}")
    weights = None
    if cfg["class_weights"] == "balanced":
        counts = torch.bincount(labels_t[train_idx], minlength=num_classes).float()
        weights = (counts.sum() / (num_classes * counts.clamp(min=1))).to(device)
    end_epoch = cfg["epochs"] if max_epochs is None else min(cfg["epochs"], max_epochs)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        g = _epoch_generator(cfg["seed"], epoch)
        order = train_idx[epoch_order(train_idx, data.get("groups"), cfg, g)]
        model.train()
        losses, metric_losses, correct, seen = [], [], 0, 0
        bar = progress_bar(range(steps), f"epoch {epoch + 1}/{cfg['epochs']}", progress, total=steps)
        for step in bar:
            idx = order[step * bs:(step + 1) * bs]
            x = make_batch(images[idx.to(device)], data["centre"][idx], data["half"][idx], cfg, g, augment=True)
            y = labels_t[idx].to(device)
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
            logits = predict(model, images[vi.to(device)], data["centre"][vi], data["half"][vi], cfg)
            record["val_loss"] = F.cross_entropy(logits, labels_t[vi]).item()
            record["val_acc"] = (logits.argmax(1) == labels_t[vi]).float().mean().item()
        elapsed += time.time() - t0
        record["elapsed_s"] = elapsed
        history.append(record)
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                    "epoch": epoch, "rng": rng_state(), "history": history, "elapsed_s": elapsed, "config": cfg})
        log(f"epoch {epoch + 1}/{cfg['epochs']}: loss {record['train_loss']:.4f} train acc {record['train_acc']:.4f}"
            + (f" val loss {record['val_loss']:.4f} val acc {record['val_acc']:.4f}" if "val_acc" in record else "")
            + f" lr {record['lr']:.2e} ({time.time() - t0:.0f} s, {elapsed / 60:.1f} min in all)")
    return {"model": model.cpu(), "history": history, "epoch": len(history)}


# --- evaluation on the held-out split, through the runtime's path ------------------------------------------
@torch.no_grad()
def runtime_logits(model, root, files, boxes, cfg, padding=None, batch_size=128, progress=True) -> torch.Tensor:
    """Logits of the model on the original image files, each cropped around its box (image pixels) as the
    C++ runtime crops a detection (crop_like_runtime, runtime_input)."""
    import cv2
    model.eval()
    pad = cfg["crop_padding"] if padding is None else padding
    out, batch = [], []
    for i, f in enumerate(progress_bar(files, f"test (padding {pad})", progress)):
        bgr = cv2.imread(str(Path(root) / f), cv2.IMREAD_COLOR)
        batch.append(runtime_input(crop_like_runtime(bgr, boxes[i], pad, cfg["input"]["pad_value"]), cfg["input_size"], cfg["input"]))
        if len(batch) == batch_size or i == len(files) - 1:
            out.append(model(torch.stack(batch)))
            batch = []
    return torch.cat(out) if out else torch.empty(0, cfg["num_classes"])


def evaluate_runtime_path(model, root, files, boxes, targets, labels, cfg, padding=None, batch_size=128,
                          progress=True) -> dict:
    """Metrics of the model on the original image files, cropped as the C++ runtime crops (runtime_logits)."""
    logits = runtime_logits(model, root, files, boxes, cfg, padding, batch_size, progress)
    from .evaluation import classification_metrics
    return classification_metrics(logits.argmax(1).tolist(), torch.as_tensor(targets).tolist(), labels)


# --- calibration ----------------------------------------------------------------------------------------
def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, bins: int = 15) -> float:
    """ECE: over equal-width bins of the top probability, the gap between mean confidence and accuracy,
    weighted by the bin's share of the samples."""
    if len(targets) == 0:
        return float("nan")
    prob = torch.softmax(logits / temperature, 1)
    confidence, predicted = prob.max(1)
    correct = (predicted == targets).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.float().mean().item() * abs(confidence[inside].mean().item() - correct[inside].mean().item())
    return ece


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of softmax(logits / T) (Guo et al.
    2017), by golden-section search over log T in [-3, 3]."""
    def nll(log_t):
        return F.cross_entropy(logits / math.exp(log_t), targets).item()
    lo, hi = -3.0, 3.0
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def stain_targets(images: torch.Tensor, boxes: torch.Tensor, indices, cfg: dict, count: int = 64) -> dict:
    """Reinhard and Macenko targets (model-file "stain" entries) of a mosaic of `count` training cells,
    each cropped as the runtime crops it, drawn with the recipe's seed."""
    import cv2
    import bloodcv
    rng = np.random.default_rng(cfg["seed"])
    chosen = rng.choice(np.asarray(indices), size=min(count, len(indices)), replace=False)
    side = int(math.ceil(math.sqrt(len(chosen))))
    s = cfg["input_size"]
    mosaic = np.full((side * s, side * s, 3), 255, np.uint8)
    for k, i in enumerate(chosen):
        bgr = np.ascontiguousarray(images[i].permute(1, 2, 0).numpy()[:, :, ::-1])
        crop = crop_like_runtime(bgr, boxes[i].tolist(), cfg["crop_padding"], cfg["input"]["pad_value"])
        mosaic[(k // side) * s:(k // side + 1) * s, (k % side) * s:(k % side + 1) * s] = cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA)
    return {method: json.loads(bloodcv.fit_stain_target(method, mosaic)) for method in ("reinhard", "macenko")}


def export(model, cfg, labels, path, training: dict, extra: dict | None = None) -> Path:
    from ..export import export_model
    s = cfg["input_size"]
    meta = {"format": "bloodcv-model", "version": 1, "task": "classification", "name": cfg["name"],
            "labels": labels, "input_size": [s, s], "input": dict(cfg["input"], resize="stretch"),
            "crop_padding": cfg["crop_padding"], "training": training, **(extra or {})}
    torch.manual_seed(0)
    example = torch.randn(2, 3, s, s)
    return export_model(model.eval(), path, meta, example)


def _metrics_summary(m: dict) -> dict:
    return {"accuracy": round(m["accuracy"], 4), "balanced_accuracy": round(m["balanced_accuracy"], 4),
            "macro_f1": round(m["macro_f1"], 4), "n": m["n"],
            "recall": {k: round(v, 4) for k, v in m["recall"].items()}}


def run(args) -> int:
    from .evaluation import classification_metrics  # the C++ extension: the training loop above runs without it
    overrides = common_overrides(args)
    if args.exclude_source:
        overrides["exclude_sources"] = args.exclude_source
    cfg = apply_settings(load_config(args.config, overrides), args.settings)
    out_dir = Path(args.out) if args.out else resolve_path(cfg["out"], cfg)
    export_path = Path(args.export_path) if args.export_path else resolve_path(cfg["export"]["path"], cfg)
    torch.set_num_threads(int(cfg["threads"]))
    import cv2
    cv2.setNumThreads(int(cfg["threads"]))
    torch.use_deterministic_algorithms(True, warn_only=True)
    labels, folders = label_groups(cfg)
    cfg["num_classes"] = len(labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Log(out_dir / "train.log")

    command = "python -m bloodcv.train classifier " + " ".join(shlex.quote(a) for a in args.argv)
    log(f"command: {command}")
    multi_source = bool(cfg.get("sources"))
    root = Path("." if multi_source else resolve_path(cfg["dataset_root"], cfg))  # several sources: files are full paths
    samples, split = samples_of(cfg, labels, folders)
    write_split(out_dir / "split.csv", samples, split, labels)
    summary = split_summary(samples, split, labels)
    log(f"{len(samples)} images, {len(labels)} labels {labels}; split " +
        ", ".join(f"{k} {v['total']}" for k, v in summary.items()))
    if multi_source:
        log("by source: " + "; ".join(f"{src['name']}: " + ", ".join(
            f"{k} {sum(1 for i in idx if samples[i].source == src['name'])}" for k, idx in split.items()) for src in cfg["sources"])
            + (f" (excluded from training: {', '.join(cfg['exclude_sources'])})" if cfg["exclude_sources"] else ""))
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=1))

    t0 = time.time()
    files = [s.file for s in samples]
    cache = build_cache(root, files, cfg, resolve_path(cfg["cache_dir"], cfg), progress=not args.no_progress, boxes=[s.box for s in samples])
    found = cache["found"]
    log(f"cache ready ({time.time() - t0:.0f} s): {tuple(cache['images'].shape)} uint8, "
        f"cell box found in {int(found.sum())}/{len(found)} (the rest: centred fallback box)")
    targets = torch.tensor([s.label for s in samples], dtype=torch.long)
    centre, half = normalised_boxes(cache["boxes"], cache["images"].shape[3], cache["images"].shape[2])
    group_names = sorted({s.group for s in samples})
    data = {"images": cache["images"], "centre": centre, "half": half, "labels": targets,
            "groups": [group_names.index(s.group) for s in samples], "train": split["train"], "val": split.get("val", [])}

    if args.export_only:
        ck_path = out_dir / "last.pt"
        if not ck_path.exists():
            raise FileNotFoundError(f"--export-only: no checkpoint {ck_path}")
        ck = torch.load(ck_path, map_location="cpu")
        model = build_classifier(cfg["model"], len(labels), cfg["input_size"])
        model.load_state_dict(ck["model"])
        history = ck["history"]
        if len(history) < cfg["epochs"]:
            log(f"warning: the checkpoint holds {len(history)} of {cfg['epochs']} epochs")
    else:
        result = train(cfg, out_dir, data, resume=args.resume, max_steps_per_epoch=cfg["max_steps_per_epoch"],
                       progress=not args.no_progress, log=log)
        model, history = result["model"], result["history"]

    test_idx = split.get("test", [])
    test_files = [files[i] for i in test_idx]
    # The runtime crops around a box in image pixels: the annotated one, or the one estimated on the whole image.
    test_boxes = np.array([samples[i].box if samples[i].box is not None else cache["boxes"][i].tolist() for i in test_idx],
                          np.float32).reshape(-1, 4)
    metrics = {"name": cfg["name"], "labels": labels, "input_size": cfg["input_size"], "model": cfg["model"],
               "parameters": sum(p.numel() for p in model.parameters()), "epochs": len(history),
               "train_wall_time_s": round(history[-1]["elapsed_s"], 1) if history else 0.0,
               "split": {"seed": cfg["seed"], "fractions": cfg["split"], "counts": summary, "file": "split.csv"},
               "cell_box_found": {"found": int(found.sum()), "total": len(found)},
               "history": [{k: v for k, v in h.items() if k != "step_losses"} for h in history]}
    temperature = 1.0
    if cfg["calibrate"] and data["val"]:
        vi = torch.tensor(data["val"], dtype=torch.long)
        val_logits = predict(model, data["images"][vi], centre[vi], half[vi], cfg)
        temperature = fit_temperature(val_logits, targets[vi])
        metrics["calibration"] = {"temperature": temperature, "uncertain_below": cfg["uncertain_below"],
                                  "val_ece_before": expected_calibration_error(val_logits, targets[vi]),
                                  "val_ece_after": expected_calibration_error(val_logits, targets[vi], temperature)}
        log(f"calibration: temperature {temperature:.3f}; validation ECE {metrics['calibration']['val_ece_before']:.4f} → "
            f"{metrics['calibration']['val_ece_after']:.4f}")
    if test_idx:
        t1 = time.time()
        logits = runtime_logits(model, root, test_files, test_boxes, cfg, progress=not args.no_progress)
        test = classification_metrics(logits.argmax(1).tolist(), targets[test_idx].tolist(), labels)
        metrics["test"] = test
        metrics["test_crop_padding_sweep"] = {}
        for p in cfg["eval_paddings"]:
            m = evaluate_runtime_path(model, root, test_files, test_boxes, targets[test_idx], labels, cfg, padding=p,
                                      progress=False)
            metrics["test_crop_padding_sweep"][str(p)] = {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"]}
        cached = predict(model, cache["images"][test_idx], centre[test_idx], half[test_idx], cfg).argmax(1)
        metrics["test_cached_path_accuracy"] = (cached == targets[test_idx]).float().mean().item()
        if multi_source:
            metrics["test_by_source"] = source_metrics(samples, test_idx, logits, targets[test_idx], labels, temperature, out_dir,
                                                       cfg, log)
        log(f"test ({time.time() - t1:.0f} s): accuracy {test['accuracy']:.4f}, balanced {test['balanced_accuracy']:.4f}; "
            + ", ".join(f"{k} {v:.3f}" for k, v in test["recall"].items() if v is not None))
        write_confusion_images(logits.argmax(1).tolist(), targets[test_idx].tolist(), labels,
                               [out_dir / "confusion.png", export_path.with_name(export_path.stem + ".confusion.png")])
        log("test confusion matrix (rows true, columns predicted):\n" + "\n".join(
            f"  {lab:>12s} " + " ".join(f"{v:4d}" for v in row)
            for lab, row in zip(labels, test["confusion_matrix"]["matrix"])))
        for p, m in metrics["test_crop_padding_sweep"].items():
            log(f"test at crop_padding {p}: accuracy {m['accuracy']:.4f}")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))

    training = {"data": {"dataset": cfg["data_name"], "root": cfg["dataset_root"],
                         "classes": cfg["classes"], "citation": cfg["data_citation"], "licence": cfg["data_licence"]}
                if not multi_source else {"sources": cfg["sources"], "excluded": cfg["exclude_sources"]},
                "split": {"seed": cfg["seed"], "fractions": cfg["split"],
                          "counts": {k: v["total"] for k, v in summary.items()},
                          "method": "stratified by class folder, each shuffled with numpy default_rng((seed, crc32(folder)))"
                                    + ("; BCCD's own test ids are the BCCD test split" if multi_source else "")},
                "command": command, "config": str(args.config), "model": cfg["model"], "epochs": len(history),
                "initialised_from": cfg["init_weights"],
                "recipe": "bloodcv.training.classifier: crops around an estimated cell box framed like the runtime, "
                          "AdamW/cosine, label smoothing, flips/rot90/colour/blur/noise/crop jitter"
                          + (", stain/white-balance/gamma/grayscale/resolution/JPEG jitter" if cfg["augment"]["stain_scale"] > 0 else ""),
                "metrics": _metrics_summary(metrics["test"]) if "test" in metrics else None}
    extra = {}
    if cfg["calibrate"] and "calibration" in metrics:
        c = metrics["calibration"]
        extra["calibration"] = {"temperature": round(c["temperature"], 5), "uncertain_below": c["uncertain_below"],
                                "method": "temperature scaling on the validation split",
                                "ece": {"validation_before": round(c["val_ece_before"], 5), "validation_after": round(c["val_ece_after"], 5)}}
    if cfg["stain_targets"]:
        extra["stain"] = {"default": cfg.get("stain_default", "none"), **stain_targets(data["images"], cache["boxes"], data["train"], cfg)}
    export(model, cfg, labels, export_path, training, extra)
    log(f"exported {export_path} ({export_path.stat().st_size / 1e6:.2f} MB)")
    for curves in (out_dir / "curves.png", export_path.with_name(export_path.stem + ".curves.png")):
        if plot_history(history, curves, f"{cfg['name']}: training curves"):
            log(f"training curves: {curves}")
    return 0


def write_confusion_images(predicted, truth, labels, paths) -> None:
    """The test split's confusion matrix as bloodcv.eval draws it (the image a model card shows), at each path."""
    import cv2
    from .. import eval as bev
    image = bev.evaluate_classification(truth, predicted, labels).confusion_image()
    for path in paths:
        cv2.imwrite(str(path), image)


def source_metrics(samples, test_idx, logits, targets, labels, temperature, out_dir, cfg, log) -> dict:
    """Per source: the metrics of its test split, the balanced accuracy over the common white-cell types it
    has (cfg["common_types"]), the calibration error before and after temperature scaling, and its
    confusion matrix as confusion_<source>.png (bloodcv.eval's classification report)."""
    import cv2
    from . import eval as bev
    out = {}
    sources = [samples[i].source for i in test_idx]
    for name in sorted(set(sources)):
        rows = torch.tensor([k for k, src in enumerate(sources) if src == name])
        m = classification_metrics(logits[rows].argmax(1).tolist(), targets[rows].tolist(), labels)
        present = [t for t in cfg.get("common_types", []) if m["recall"].get(t) is not None]
        m["balanced_accuracy_common"] = float(np.mean([m["recall"][t] for t in present])) if present else None
        m["ece_before"] = expected_calibration_error(logits[rows], targets[rows])
        m["ece_after"] = expected_calibration_error(logits[rows], targets[rows], temperature)
        report = bev.evaluate_classification(targets[rows].tolist(), logits[rows].argmax(1).tolist(), labels)
        cv2.imwrite(str(out_dir / f"confusion_{name}.png"), report.confusion_image())
        out[name] = m
        log(f"test on {name} ({m['n']} cells): accuracy {m['accuracy']:.4f}, balanced {m['balanced_accuracy']:.4f}"
            + (f", balanced on {'/'.join(present)} {m['balanced_accuracy_common']:.4f}" if present else "")
            + f", ECE {m['ece_before']:.4f} → {m['ece_after']:.4f}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, None, "run directory (checkpoints, split.csv, metrics.json, train.log); default: the config's out")
    p.add_argument("--exclude-source", action="append", default=None, metavar="NAME",
                   help="train without this source (it is still tested): leave-one-source-out; may be repeated")
