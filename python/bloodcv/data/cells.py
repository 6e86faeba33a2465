"""Where single-cell training samples come from, for the classifier recipe (bloodcv.training.classifier).

Two kinds of source:

- "folders": one folder per class of images that each show one cell, centred (PBC, the bone-marrow set).
  The cell's box is estimated from the stain (bloodcv.training.classifier.estimate_cell_box).
- "coco": a COCO set of typed cells (annotations.json and its images), e.g. the reviewed cells that
  `bloodcv serve` exports (GET /api/samples/{id}/export?format=coco, unzipped): corrections become training data.
- "bccd": whole smear fields with boxes and types: BCCD's VOC WBC boxes (read by bloodcv.eval.read_voc)
  joined with wbc_labels.csv, for the fields with one listed type and one WBC box. BCCD's own
  ImageSets/Main/test.txt fields are the test split and never train. With "detector", the detector's own
  WBC box on each training field (IoU >= 0.5 with the annotated one) is a second training sample, so that
  the classifier sees cells framed as the pipeline frames them.

A config names its sources and maps each source's folders or types to the recipe's labels:

    "sources": [{"name": "pbc", "kind": "folders", "root": "../shared/datasets/pbc",
                 "classes": {"neutrophil": ["neutrophil"], ...}},
                {"name": "bccd", "kind": "bccd", "root": "../shared/datasets/bccd",
                 "types": {"NEUTROPHIL": "neutrophil", ...}, "detector": "models/cell_detector.pt"}]
"""
from __future__ import annotations

import csv
import json
import math
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .readers import IMAGE_SUFFIXES


class CellSample(NamedTuple):
    file: str                  # the image file
    label: int                 # index into the recipe's labels
    group: str                 # the unit of splitting and balancing: a class folder, or "<source>/<folder or type>"
    source: str = ""           # the source's name ("" for a config without "sources")
    box: tuple | None = None   # the cell in image pixels; None: the image is the cell, centred
    fixed_split: str | None = None  # the split a dataset imposes (BCCD's test ids), else drawn by the seed


def folder_samples(root, folders: dict[str, int], source: str = "") -> list[CellSample]:
    """Samples of class folders (folder → label index), sorted by folder then file name. Without a source
    name, files are given relative to root and grouped by folder, as single-source configs always were."""
    root = Path(root)
    samples = []
    for folder in sorted(folders):
        d = root / folder
        if not d.is_dir():
            raise FileNotFoundError(f"class folder {d} does not exist")
        files = sorted(p.name for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"class folder {d} holds no images")
        group = f"{source}/{folder}" if source else folder
        samples += [CellSample(str(d / name) if source else f"{folder}/{name}", folders[folder], group, source) for name in files]
    return samples


def bccd_samples(root, types: dict[str, str], labels: list[str], source: str = "bccd") -> list[CellSample]:
    """BCCD fields with one listed white-cell type (mapped by `types` to a label) and one WBC box."""
    from .. import eval as bev

    root = Path(root)
    voc = root / "BCCD"
    test_ids = set((voc / "ImageSets" / "Main" / "test.txt").read_text().split())
    listed = {}
    with open(root / "wbc_labels.csv") as f:
        for row in csv.DictReader(f):
            category = (row.get("category") or "").strip()
            if category and "," not in category and category in types:
                listed[row["image"].strip()] = labels.index(types[category])
    truth = bev.read_voc(str(voc / "Annotations"), ["WBC", "RBC", "Platelets"])
    wbc = truth.labels.index("WBC")
    samples = []
    for name in sorted(set(listed) & set(truth.images)):
        image = voc / "JPEGImages" / f"{name}.jpg"
        annotated = truth.boxes(name)
        cells = annotated["boxes"][annotated["labels"] == wbc]
        if len(cells) != 1 or not image.exists():
            continue
        label = listed[name]
        samples.append(CellSample(str(image), label, f"{source}/{labels[label]}", source, tuple(float(v) for v in cells[0]),
                                  "test" if name in test_ids else None))
    return samples


def coco_samples(root, types: dict[str, str], labels: list[str], source: str) -> list[CellSample]:
    """Typed cells of a COCO set: root/annotations.json (read by bloodcv.eval.read_coco) with its images beside
    it under their file_name, as `bloodcv serve` exports a sample's reviewed cells. Each box whose category
    `types` maps to a label is a sample; the others (red cells, untyped white cells) are not."""
    from .. import eval as bev

    root = Path(root)
    files = {}
    for entry in json.loads((root / "annotations.json").read_text()).get("images", []):
        files[Path(entry["file_name"]).stem] = root / entry["file_name"]
    truth = bev.read_coco(str(root / "annotations.json"))
    samples = []
    for name in truth.images:
        annotated = truth.boxes(name)
        for box, category in zip(annotated["boxes"], annotated["labels"]):
            mapped = types.get(truth.labels[int(category)])
            if mapped is None:
                continue
            if mapped not in labels:
                raise ValueError(f"source {source!r}: type {truth.labels[int(category)]!r} maps to {mapped!r}, not one of {labels}")
            label = labels.index(mapped)
            samples.append(CellSample(str(files[name]), label, f"{source}/{mapped}", source, tuple(float(v) for v in box)))
    return samples


def split_samples(samples: list[CellSample], fractions: dict, seed: int) -> dict[str, list[int]]:
    """Indices per split name: a sample with a fixed split goes there; the others are split per group in
    the proportions of the splits that group has no fixed samples in (stratified_split's rule)."""
    names = list(fractions)
    out = {n: [] for n in names}
    free: dict[str, list[int]] = {}
    fixed_groups: dict[str, set] = {}
    for i, s in enumerate(samples):
        if s.fixed_split:
            out[s.fixed_split].append(i)
            fixed_groups.setdefault(s.group, set()).add(s.fixed_split)
        else:
            free.setdefault(s.group, []).append(i)
    for group, idx in sorted(free.items()):
        open_names = [n for n in names if n not in fixed_groups.get(group, set())]
        part = stratified_split([samples[i] for i in idx], {n: fractions[n] for n in open_names}, seed)
        for n, local in part.items():
            out[n] += [idx[j] for j in local]
    return {n: sorted(v) for n, v in out.items()}


def stratified_split(samples, fractions: dict, seed: int) -> dict[str, list[int]]:
    """Indices of samples per split name, in the order of `fractions`; each group (samples[i][2]) split in
    the same proportions (largest-remainder rounding), shuffled with a generator seeded by (seed,
    crc32(group)), so a group's split does not depend on which other groups a config uses."""
    names = list(fractions)
    total = sum(fractions.values())
    out = {n: [] for n in names}
    by_group: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_group.setdefault(s[2], []).append(i)
    for group, idx in sorted(by_group.items()):
        rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
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


def detector_samples(samples: list[CellSample], indices: list[int], detector_path, min_iou: float = 0.5) -> list[CellSample]:
    """For each sample with a box (a field with an annotated cell), the detector's WBC box that overlaps it
    best, when IoU >= min_iou, as a new sample of the same cell."""
    import bloodcv

    detector = bloodcv.TorchScriptDetector(str(detector_path))
    pipeline = bloodcv.Pipeline(detector)  # tiled at the detector's own field, as bloodcv analyze does
    wbc = detector.labels().index("WBC")
    out = []
    for i in indices:
        s = samples[i]
        if s.box is None:
            continue
        cells = pipeline.analyze(s.file).arrays()
        found = cells["boxes"][cells["labels"] == wbc]
        if not len(found):
            continue
        ious = bloodcv.box_iou(np.asarray([s.box], np.float32), found)[0]
        best = int(np.argmax(ious))
        if ious[best] >= min_iou:
            out.append(s._replace(box=tuple(float(v) for v in found[best])))
    return out
