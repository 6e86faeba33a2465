"""The detector recipes' splits: TXL-PBC train and val without the near-duplicates of BCCD's test images."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict

import numpy as np

from .corrections import apply_label_corrections, read_label_corrections
from .dedup import FEATURE_MATCHER_VERSION, duplicate_scores, thumbnail_distances
from .readers import LABELS, list_voc_split, list_yolo_split, read_ids


def make_detection_splits(root, seed: int = 0, thumb_threshold: float = 0.05, min_inliers: int = 15,
                          thumb_size: int = 32, cache_dir=None, label_corrections=None, log=print) -> Dict:
    """Train / val / test samples and a summary, deterministic given the files and seed.

    train: TXL-PBC train, val: TXL-PBC val, test: BCCD ImageSets/Main/test.txt (VOC boxes). TXL-PBC
    images that are near-duplicates of a test image (find_duplicates' two tests) are dropped from train
    and val; a val image whose thumbnail equals a train image's is dropped from val. train is shuffled
    with seed. The duplicate scores take minutes; with cache_dir they are kept in
    cache_dir/dedup_cache.json, keyed by the file list and the settings. label_corrections: a corrections
    file (bloodcv.data.corrections) applied to TXL-PBC train and val; BCCD's test boxes are never changed."""
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
    corrections = read_label_corrections(label_corrections) if label_corrections else []
    if corrections:
        train, val = apply_label_corrections(train, corrections), apply_label_corrections(val, corrections)
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
        **({"label_corrections": {"file": Path(label_corrections).name, "entries": len(corrections)}} if corrections else {}),
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


