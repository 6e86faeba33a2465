"""Detection data for the cell-detector recipe: readers, de-duplicated splits, augmentation, batches.

- Readers: YOLO txt labels (``class cx cy w h``, normalised) and Pascal VOC XML.
- Splits (make_detection_splits): TXL-PBC train for training, TXL-PBC val for validation and BCCD's own
  ``test.txt`` images for evaluation. TXL-PBC holds BCCD images under other names, so every TXL-PBC
  image whose content nearly equals a BCCD test image (normalised grayscale thumbnails, find_duplicates)
  is dropped from training and validation.
- DetectionDataset: images cached in memory at the training scale; augmentation as YOLOv5 and the
  blood-cell papers do (mosaic, random scale/translate crops, flips, 90-degree rotations,
  HSV/brightness/contrast jitter, blur, noise), letterboxed (centred, pad 114) to a square input.
  Augmentation draws from a generator seeded by (seed, epoch, index): batches do not depend on the
  process history, so a resumed run sees exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

cv2.setNumThreads(0)  # no OpenCV worker threads: training keeps to one core

LABELS = ("WBC", "RBC", "Platelets")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
PAD_VALUE = 114


@dataclass
class Sample:
    """One annotated image: boxes are N x 4 (x1, y1, x2, y2) pixels, classes N indices into LABELS."""
    image: Path
    boxes: np.ndarray
    classes: np.ndarray
    width: int
    height: int
    source: str = ""
    name: str = field(default="")

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if not self.name:
            self.name = Path(self.image).stem


# ----------------------------------------------------------------------------------------- readers
def image_size(path) -> tuple:
    """(width, height) of an image file, read from its header where PIL can, else by decoding it."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any reader failure falls back to OpenCV
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise OSError(f"cannot read image {path}")
        return img.shape[1], img.shape[0]


def read_yolo_labels(path, width: int, height: int):
    """(boxes N x 4 xyxy pixels, classes N) from a YOLO txt file; a missing file means no objects."""
    path = Path(path)
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5:
                rows.append([float(v) for v in parts[:5]])
    a = np.array(rows, dtype=np.float64).reshape(-1, 5)
    cx, cy, w, h = a[:, 1] * width, a[:, 2] * height, a[:, 3] * width, a[:, 4] * height
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    return boxes.astype(np.float32), a[:, 0].astype(np.int64)


def read_voc(path, labels: Sequence[str] = LABELS):
    """(boxes N x 4 xyxy pixels, classes N, width, height) from a Pascal VOC XML file.

    VOC pixel indices are 1-based inclusive; boxes come back as (xmin - 1, ymin - 1, xmax, ymax), so a
    box covers the pixels it names. Objects whose name is not in labels are skipped."""
    root = ET.parse(str(path)).getroot()
    size = root.find("size")
    width = int(float(size.findtext("width"))) if size is not None else 0
    height = int(float(size.findtext("height"))) if size is not None else 0
    boxes, classes = [], []
    index = {name.lower(): i for i, name in enumerate(labels)}
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip().lower()
        bb = obj.find("bndbox")
        if name not in index or bb is None:
            continue
        x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x1 - 1, y1 - 1, x2, y2])
        classes.append(index[name])
    b = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    if width and height:
        b = np.clip(b, 0, [width, height, width, height])
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return b[keep], np.array(classes, dtype=np.int64).reshape(-1)[keep], width, height


def list_yolo_split(images_dir, labels_dir, source: str = "") -> List[Sample]:
    """Samples of every image in images_dir with its labels_dir/<stem>.txt (sorted by name)."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    out = []
    for p in sorted(images_dir.iterdir()) if images_dir.is_dir() else []:
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        w, h = image_size(p)
        boxes, classes = read_yolo_labels(labels_dir / (p.stem + ".txt"), w, h)
        ok = (classes >= 0) & (classes < len(LABELS))
        out.append(Sample(p, boxes[ok], classes[ok], w, h, source))
    return out


def list_voc_split(root, ids: Sequence[str], source: str = "") -> List[Sample]:
    """Samples for VOC ids (root/JPEGImages/<id>.jpg, root/Annotations/<id>.xml); absent images are skipped."""
    root = Path(root)
    out = []
    for i in ids:
        img = root / "JPEGImages" / f"{i}.jpg"
        xml = root / "Annotations" / f"{i}.xml"
        if not img.exists() or not xml.exists():
            continue
        boxes, classes, w, h = read_voc(xml)
        if not (w and h):
            w, h = image_size(img)
        out.append(Sample(img, boxes, classes, w, h, source))
    return out


def read_ids(path) -> List[str]:
    path = Path(path)
    return [l.strip() for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


# ------------------------------------------------------------------------------- de-duplication
# TXL-PBC holds BCCD images renamed, and also resized (416x416, aspect changed), cropped, rotated,
# mirrored and colour-shifted (Roboflow-style augmented copies). Two tests, either one marks a duplicate:
# - thumbnails: normalised 32x32 grayscale thumbnails, 1 - correlation < thumb_threshold (exact,
#   re-encoded, resized or squeezed copies);
# - local features: SIFT on the CLAHE-equalised green channel, Lowe ratio test and a RANSAC affine fit
#   against the reference image (and its mirror image); at least min_inliers consistent matches means the
#   same field of view (crops, rotations, colour changes). On TXL-PBC vs BCCD test, images of other
#   sources (PBC, Raabin) score at most 11 inliers, the copies 17 to 600+: the default threshold is 15.
def thumbnail(path, size: int = 32) -> np.ndarray:
    """Grayscale size x size thumbnail (area resampling), normalised to zero mean and unit norm."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise OSError(f"cannot read image {path}")
    t = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    t -= t.mean()
    return t / max(float(np.linalg.norm(t)), 1e-6)


def thumbnail_distances(candidates: Sequence, references: Sequence, size: int = 32) -> np.ndarray:
    """For each candidate image path, the smallest thumbnail distance (1 - correlation, 0 = same
    content) to any reference image; +inf when there are no references."""
    if not len(references):
        return np.full(len(candidates), np.inf)
    ref = np.stack([thumbnail(p, size) for p in references])
    out = np.empty(len(candidates))
    for i, p in enumerate(candidates):
        out[i] = float((1.0 - ref @ thumbnail(p, size)).min())
    return out


def _feature_image(path, max_side: int = 640) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read image {path}")
    g = img[:, :, 1]  # green: the best contrast for Giemsa-type stains
    r = min(1.0, max_side / max(g.shape))
    if r < 1:
        g = cv2.resize(g, (round(g.shape[1] * r), round(g.shape[0] * r)), interpolation=cv2.INTER_AREA)
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(g)


FEATURE_MATCHER_VERSION = 1


class FeatureMatcher:
    """Counts RANSAC-consistent SIFT matches between an image and each of a set of reference images.

    References are indexed with their mirror images; a candidate is compared in full with the
    shortlist of references that collect most of its approximate nearest-neighbour votes."""

    def __init__(self, references: Sequence, ref_features: int = 1500, features: int = 800,
                 shortlist: int = 5, ratio: float = 0.8, ransac_px: float = 5.0):
        self.sift_ref = cv2.SIFT_create(nfeatures=ref_features)
        self.sift = cv2.SIFT_create(nfeatures=features)
        self.shortlist, self.ratio, self.ransac_px = shortlist, ratio, ransac_px
        self.refs = []  # (reference index, points, descriptors)
        for i, p in enumerate(references):
            g = _feature_image(p)
            for img in (g, np.ascontiguousarray(g[:, ::-1])):
                kp, des = self.sift_ref.detectAndCompute(img, None)
                if des is not None and len(des) >= 8:
                    self.refs.append((i, np.float32([k.pt for k in kp]), des))
        self.bf = cv2.BFMatcher(cv2.NORM_L2)
        self.flann = None
        if self.refs:
            self.owner = np.concatenate([np.full(len(d), j) for j, (_, _, d) in enumerate(self.refs)])
            self.flann = cv2.FlannBasedMatcher(dict(algorithm=1, trees=4), dict(checks=64))
            self.flann.add([np.concatenate([d for _, _, d in self.refs])])
            self.flann.train()

    def best_match(self, path):
        """(inliers, reference index) of the best-matching reference; (0, -1) when none."""
        if self.flann is None:
            return 0, -1
        kp, des = self.sift.detectAndCompute(_feature_image(path), None)
        if des is None or len(des) < 8:
            return 0, -1
        pts = np.float32([k.pt for k in kp])
        votes = np.bincount(self.owner[[m.trainIdx for m in self.flann.match(des)]], minlength=len(self.refs))
        best = (0, -1)
        for j in sorted(np.argsort(-votes, kind="stable")[:self.shortlist].tolist()):
            ref_index, rpts, rdes = self.refs[j]
            pairs = self.bf.knnMatch(des, rdes, k=2)
            good = [a for a, b in (p for p in pairs if len(p) == 2) if a.distance < self.ratio * b.distance]
            if len(good) < 4:
                continue
            _, inl = cv2.estimateAffine2D(pts[[m.queryIdx for m in good]], rpts[[m.trainIdx for m in good]],
                                          method=cv2.RANSAC, ransacReprojThreshold=self.ransac_px,
                                          maxIters=2000, confidence=0.995)
            n = int(inl.sum()) if inl is not None else 0
            if n > best[0]:
                best = (n, ref_index)
        return best


def duplicate_scores(candidates: Sequence, references: Sequence, thumb_size: int = 32):
    """Per candidate: (smallest thumbnail distance, most feature inliers, index of that reference)."""
    thumb = thumbnail_distances(candidates, references, thumb_size)
    cv2.setRNGSeed(0)  # RANSAC sampling
    matcher = FeatureMatcher(references)
    feats = [matcher.best_match(p) for p in candidates]
    return thumb, np.array([f[0] for f in feats], np.int64), np.array([f[1] for f in feats], np.int64)


def find_duplicates(candidates: Sequence, references: Sequence, thumb_threshold: float = 0.05,
                    min_inliers: int = 15, thumb_size: int = 32) -> np.ndarray:
    """Boolean mask over candidates: True where the image is a near-duplicate of some reference
    (same or resized content by thumbnails, or the same field of view by local features)."""
    thumb, inliers, _ = duplicate_scores(candidates, references, thumb_size)
    return (thumb < thumb_threshold) | (inliers >= min_inliers)


# ------------------------------------------------------------------------------------------ splits
def make_detection_splits(root, seed: int = 0, thumb_threshold: float = 0.05, min_inliers: int = 15,
                          thumb_size: int = 32, cache_dir=None, log=print) -> Dict:
    """Train / val / test samples and a summary, deterministic given the files and seed.

    train: TXL-PBC train, val: TXL-PBC val, test: BCCD ImageSets/Main/test.txt (VOC boxes). TXL-PBC
    images that are near-duplicates of a test image (find_duplicates' two tests) are dropped from train
    and val; a val image whose thumbnail equals a train image's is dropped from val. train is shuffled
    with seed. The duplicate scores take minutes; with cache_dir they are kept in
    cache_dir/dedup_cache.json, keyed by the file list and the settings."""
    root = Path(root)
    txl = root / "txl-pbc" / "TXL_PBC"
    bccd = root / "bccd" / "BCCD"
    train = list_yolo_split(txl / "images" / "train", txl / "labels" / "train", "txl-pbc/train")
    val = list_yolo_split(txl / "images" / "val", txl / "labels" / "val", "txl-pbc/val")
    test = list_voc_split(bccd, read_ids(bccd / "ImageSets" / "Main" / "test.txt"), "bccd/test")
    if not train:
        raise FileNotFoundError(f"no TXL-PBC training images under {txl}")
    if not test:
        raise FileNotFoundError(f"no BCCD test images under {bccd}")
    cand = train + val
    key = hashlib.sha256(json.dumps([[str(s.image), Path(s.image).stat().st_size] for s in cand + test]
                                    + [thumb_size, FEATURE_MATCHER_VERSION]).encode()).hexdigest()
    cache = Path(cache_dir) / "dedup_cache.json" if cache_dir else None
    scores = None
    if cache and cache.exists():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            scores = data
    if scores is None:
        log(f"splits: comparing {len(cand)} TXL-PBC images with {len(test)} BCCD test images (takes minutes)")
        thumb, inl, ref = duplicate_scores([s.image for s in cand], [s.image for s in test], thumb_size)
        thumb_tv = thumbnail_distances([s.image for s in val], [s.image for s in train], thumb_size)
        scores = {"key": key, "thumb": thumb.tolist(), "inliers": inl.tolist(), "ref": ref.tolist(),
                  "thumb_val_train": thumb_tv.tolist()}
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(scores))
    thumb, inl, ref = np.array(scores["thumb"]), np.array(scores["inliers"]), np.array(scores["ref"])
    is_dup = (thumb < thumb_threshold) | (inl >= min_inliers)
    n_train = len(train)
    dup_tr, dup_va = is_dup[:n_train], is_dup[n_train:]
    dup_of = {s.name: test[int(r)].name if r >= 0 else None for s, r in zip(cand, ref)}
    dup_train = [s.name for s, d in zip(train, dup_tr) if d]
    dup_val = [s.name for s, d in zip(val, dup_va) if d]
    val_tv = np.array(scores["thumb_val_train"]) < thumb_threshold
    dup_val_train = [s.name for s, d, t in zip(val, dup_va, val_tv) if t and not d]
    train = [s for s, d in zip(train, dup_tr) if not d]
    val = [s for s, d, t in zip(val, dup_va, val_tv) if not d and not t]
    order = np.random.default_rng(seed).permutation(len(train))
    train = [train[i] for i in order]
    kept = ~is_dup
    summary = {
        "train": {"source": "txl-pbc/train", "images": len(train), "boxes": _box_counts(train)},
        "val": {"source": "txl-pbc/val", "images": len(val), "boxes": _box_counts(val)},
        "test": {"source": "bccd/ImageSets/Main/test.txt", "images": len(test), "boxes": _box_counts(test)},
        "dedup": {
            "method": (f"near-duplicate of a BCCD test image: grayscale {thumb_size}x{thumb_size} thumbnail "
                       f"distance (1 - correlation) < {thumb_threshold}, or >= {min_inliers} RANSAC-affine "
                       "SIFT inliers (CLAHE green channel, image or mirror image)"),
            "dropped_train_dup_of_test": len(dup_train), "dropped_val_dup_of_test": len(dup_val),
            "dropped_val_dup_of_train": len(dup_val_train),
            "max_inliers_kept": int(inl[kept].max()) if kept.any() else None,
            "min_inliers_dropped_by_features": int(inl[inl >= min_inliers].min()) if (inl >= min_inliers).any() else None,
            "dropped": {"train": {n: dup_of[n] for n in sorted(dup_train)},
                        "val": {n: dup_of[n] for n in sorted(dup_val)},
                        "val_dup_of_train": sorted(dup_val_train)},
        },
    }
    log(f"splits: train {len(train)} (dropped {len(dup_train)} near-duplicates of BCCD test images), "
        f"val {len(val)} (dropped {len(dup_val)} near-duplicates of BCCD test images, {len(dup_val_train)} "
        f"copies of training images), test {len(test)} BCCD images")
    return {"train": train, "val": val, "test": test, "summary": summary}


def _box_counts(samples):
    counts = np.zeros(len(LABELS), np.int64)
    for s in samples:
        counts += np.bincount(s.classes, minlength=len(LABELS))[:len(LABELS)]
    return dict(zip(LABELS, map(int, counts)))


# ----------------------------------------------------------------------------------- image helpers
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
