"""Detection batches for the detector recipes: images cached in memory at the training scale;
augmentation as YOLOv5 and the blood-cell papers do (mosaic, random scale/translate crops, flips,
90-degree rotations, HSV/brightness/contrast jitter, blur, noise), letterboxed (centred, pad 114) to a
square input. Augmentation draws from a generator seeded by (seed, epoch, index): batches do not depend on
the process history, so a resumed run sees exactly the batches of an uninterrupted one."""
from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

from .readers import Sample

cv2.setNumThreads(0)  # no OpenCV worker threads: training keeps to one core

PAD_VALUE = 114


def letterbox(img: np.ndarray, size: int, pad_value: int = PAD_VALUE):
    """Resize keeping the aspect ratio to fit size x size, centre, pad. Returns (image, scale, (dx, dy))."""
    h, w = img.shape[:2]
    r = min(size / w, size / h)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    dx, dy = (size - nw) / 2, (size - nh) / 2
    left, top = int(round(dx - 0.1)), int(round(dy - 0.1))
    out = cv2.copyMakeBorder(img, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT,
                             value=(pad_value,) * 3)
    return out, r, (left, top)


def load_rgb(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _sample_seed(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


# --------------------------------------------------------------------------------------- datasets
DEFAULT_AUGMENT = {
    "mosaic": 0.5,          # probability of a 4-image mosaic
    "scale": 0.4,           # random scale in [1 - scale, 1 + scale]
    "translate": 0.1,       # random shift, fraction of the input size
    "fliplr": 0.5, "flipud": 0.5, "rot90": 0.5,
    "hsv_h": 0.015, "hsv_s": 0.5, "hsv_v": 0.3,     # YOLOv5-style HSV gains
    "contrast": 0.2,        # contrast factor in [1 - c, 1 + c]
    "blur": 0.1, "noise": 0.1,  # probabilities of a Gaussian blur / additive Gaussian noise
    "min_box_area_ratio": 0.2,  # a box cut by a crop is kept when this much of its area remains
}


class DetectionDataset(torch.utils.data.Dataset):
    """Items: (uint8 tensor [3, S, S] RGB, targets float [n, 6] = (0, class, cx, cy, w, h) normalised,
    index). With augment=None the image is only letterboxed (for evaluation)."""

    def __init__(self, samples: Sequence[Sample], input_size: int, augment: Optional[dict] = None,
                 seed: int = 0, cache: bool = True):
        self.samples = list(samples)
        self.size = int(input_size)
        self.augment = None if augment is None else {**DEFAULT_AUGMENT, **augment}
        self.seed = seed
        self.epoch = 0
        self.mosaic_enabled = True
        self._cache: Dict[int, tuple] = {}
        self.cache = cache

    def __len__(self):
        return len(self.samples)

    def set_epoch(self, epoch: int, mosaic: bool = True):
        self.epoch = epoch
        self.mosaic_enabled = mosaic

    def load(self, i):
        """(RGB image with its long side = input size, boxes scaled to it, classes)."""
        if i in self._cache:
            return self._cache[i]
        s = self.samples[i]
        img = load_rgb(s.image)
        h, w = img.shape[:2]
        r = self.size / max(h, w)
        if r != 1:
            img = cv2.resize(img, (max(1, round(w * r)), max(1, round(h * r))),
                             interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
        sx, sy = img.shape[1] / w, img.shape[0] / h
        boxes = s.boxes * np.array([sx, sy, sx, sy], np.float32)
        item = (img, boxes, s.classes.copy())
        if self.cache:
            self._cache[i] = item
        return item

    def __getitem__(self, i):
        if self.augment is None:
            img, boxes, classes = self.load(i)
            img, _, (dx, dy) = letterbox(img, self.size)
            boxes = boxes + np.array([dx, dy, dx, dy], np.float32)
        else:
            rng = np.random.default_rng(_sample_seed(self.seed, self.epoch, i))
            img, boxes, classes = self._augmented(i, rng)
        return to_tensor(img), make_targets(boxes, classes, self.size), i

    # ------------------------------------------------------------------ augmentation
    def _augmented(self, i, rng):
        a, S = self.augment, self.size
        if self.mosaic_enabled and rng.random() < a["mosaic"]:
            img, boxes, classes = self._mosaic(i, rng)
            border = S // 2  # the mosaic canvas is 2S: the affine step crops it back to S
        else:
            img, boxes, classes = self.load(i)
            img, _, (dx, dy) = letterbox(img, S)
            boxes = boxes + np.array([dx, dy, dx, dy], np.float32)
            border = 0
        img, boxes, classes = random_affine(img, boxes, classes, S, rng, a["scale"], a["translate"], border,
                                            a["min_box_area_ratio"])
        img, boxes = flip_rotate(img, boxes, rng, a["fliplr"], a["flipud"], a["rot90"])
        img = color_jitter(img, rng, a["hsv_h"], a["hsv_s"], a["hsv_v"], a["contrast"])
        if rng.random() < a["blur"]:
            k = int(rng.choice([3, 5]))
            img = cv2.GaussianBlur(img, (k, k), 0)
        if rng.random() < a["noise"]:
            sigma = rng.uniform(2, 10)
            img = np.clip(img.astype(np.float32) + rng.normal(0, sigma, img.shape).astype(np.float32),
                          0, 255).astype(np.uint8)
        return img, boxes, classes

    def _mosaic(self, i, rng):
        S = self.size
        xc, yc = (int(rng.uniform(S * 0.5, S * 1.5)) for _ in range(2))
        idx = [i] + [int(j) for j in rng.integers(0, len(self.samples), 3)]
        canvas = np.full((2 * S, 2 * S, 3), PAD_VALUE, np.uint8)
        all_boxes, all_classes = [], []
        for k, j in enumerate(idx):
            img, boxes, classes = self.load(j)
            h, w = img.shape[:2]
            if k == 0:
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif k == 1:
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * S), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif k == 2:
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * S, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * S), min(2 * S, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            dx, dy = x1a - x1b, y1a - y1b
            b = boxes + np.array([dx, dy, dx, dy], np.float32)
            # keep what lies inside the pasted region
            region = np.array([x1a, y1a, x2a, y2a], np.float32)
            b, c = clip_boxes(b, classes, region, self.augment["min_box_area_ratio"])
            all_boxes.append(b)
            all_classes.append(c)
        return canvas, np.concatenate(all_boxes).reshape(-1, 4), np.concatenate(all_classes)


def clip_boxes(boxes, classes, region, min_area_ratio):
    """Clips boxes to region (x1, y1, x2, y2); drops those left with < min_area_ratio of their area
    or thinner than 2 px."""
    if not len(boxes):
        return boxes.reshape(-1, 4), classes
    area0 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    b = boxes.copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(region[0], region[2])
    b[:, [1, 3]] = b[:, [1, 3]].clip(region[1], region[3])
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = (w > 2) & (h > 2) & (w * h > min_area_ratio * np.maximum(area0, 1e-6))
    return b[keep], classes[keep]


def random_affine(img, boxes, classes, size, rng, scale=0.4, translate=0.1, border=0, min_area_ratio=0.2):
    """Random scale about the centre and shift, output size x size; border > 0 crops a 2*size canvas."""
    h, w = img.shape[:2]
    C = np.eye(3)
    C[0, 2], C[1, 2] = -w / 2, -h / 2
    s = rng.uniform(1 - scale, 1 + scale)
    Sm = np.diag([s, s, 1.0])
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * size
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * size
    M = T @ Sm @ C
    out = cv2.warpAffine(img, M[:2], (size, size), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3)
    if len(boxes):
        pts = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]], 1)  # n,4,2
        pts = pts @ M[:2, :2].T + M[:2, 2]
        nb = np.concatenate([pts.min(1), pts.max(1)], 1).astype(np.float32)
        # area test against the scaled, unclipped box
        nb_full = nb.copy()
        nb, keep_cls = clip_boxes(nb_full, np.arange(len(nb_full)), np.array([0, 0, size, size], np.float32),
                                  min_area_ratio)
        boxes, classes = nb, classes[keep_cls]
    return out, boxes.reshape(-1, 4).astype(np.float32), classes


def flip_rotate(img, boxes, rng, p_lr=0.5, p_ud=0.5, p_rot=0.5):
    """Horizontal / vertical flips and a 90-degree rotation of a square image and its boxes."""
    S = img.shape[1]
    b = boxes.copy()
    if rng.random() < p_lr:
        img = img[:, ::-1]
        b[:, [0, 2]] = S - b[:, [2, 0]]
    if rng.random() < p_ud:
        img = img[::-1]
        b[:, [1, 3]] = img.shape[0] - b[:, [3, 1]]
    if rng.random() < p_rot and img.shape[0] == img.shape[1]:
        img = np.rot90(img, 1)  # counter-clockwise: (x, y) -> (y, S - x)
        b = np.stack([b[:, 1], S - b[:, 2], b[:, 3], S - b[:, 0]], 1) if len(b) else b
    return np.ascontiguousarray(img), b.astype(np.float32).reshape(-1, 4)


def color_jitter(img, rng, hgain=0.015, sgain=0.5, vgain=0.3, contrast=0.2):
    """YOLOv5 HSV gains through lookup tables, then a contrast change about the mean."""
    if hgain or sgain or vgain:
        r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
        hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_RGB2HSV))
        x = np.arange(0, 256, dtype=r.dtype)
        lut_hue = ((x * r[0]) % 180).astype(np.uint8)
        lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
        lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
        hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if contrast:
        c = rng.uniform(1 - contrast, 1 + contrast)
        mean = img.mean()
        img = np.clip((img.astype(np.float32) - mean) * c + mean, 0, 255).astype(np.uint8)
    return img


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def make_targets(boxes, classes, size) -> torch.Tensor:
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    t = np.zeros((len(b), 6), np.float32)
    if len(b):
        t[:, 1] = classes
        t[:, 2] = (b[:, 0] + b[:, 2]) / 2 / size
        t[:, 3] = (b[:, 1] + b[:, 3]) / 2 / size
        t[:, 4] = (b[:, 2] - b[:, 0]) / size
        t[:, 5] = (b[:, 3] - b[:, 1]) / size
    return torch.from_numpy(t)


def collate(batch):
    """(uint8 images [B, 3, S, S], targets [n, 6] with column 0 the image's index in the batch, indices)."""
    images, targets, idx = zip(*batch)
    for k, t in enumerate(targets):
        t[:, 0] = k
    return torch.stack(images), torch.cat(targets, 0), list(idx)


def epoch_order(n: int, seed: int, epoch: int) -> List[int]:
    """The sample order of an epoch: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng(_sample_seed("order", seed, epoch)).permutation(n).tolist()


def letterbox_transform(width: int, height: int, size: int):
    """(sx, sy, dx, dy) of DetectionDataset's evaluation images: input pixel = original * (sx, sy) + (dx, dy)."""
    r = size / max(width, height)
    nw, nh = max(1, round(width * r)), max(1, round(height * r))
    r2 = min(size / nw, size / nh)
    if r2 != 1:  # letterbox() resizes again only when the cached image does not fit exactly
        nw, nh = max(1, round(nw * r2)), max(1, round(nh * r2))
    dx, dy = (size - nw) / 2, (size - nh) / 2
    return nw / width, nh / height, int(round(dx - 0.1)), int(round(dy - 0.1))
