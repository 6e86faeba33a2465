"""Reviewed fixes of a dataset's boxes, kept as data beside the recipe that uses them.

A corrections file (JSON) lists, per image (the file's stem), what a reviewer changed and why:

    {"corrections": [
      {"image": "<stem>", "box": [x1, y1, x2, y2], "label": "WBC", "to": "RBC", "why": "..."},   relabel
      {"image": "<stem>", "box": [x1, y1, x2, y2], "label": "RBC", "to": null, "why": "..."},    remove
      {"image": "<stem>", "add": [x1, y1, x2, y2], "label": "WBC", "why": "..."}                 add
    ]}

Boxes are in the file's pixels, as the readers give them. A relabel or removal names an existing box by its
label and a box that overlaps it by IoU >= 0.9, and must name exactly one: when the dataset changes under
the file, applying it fails instead of silently doing nothing.

duplicate_boxes finds one kind of error without a model: one cell boxed twice with the same label. Only one
of the two can ever match a detection, so the other counts as a missed cell in every evaluation."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from .readers import LABELS, Sample

MATCH_IOU = 0.9
# White cells lie apart in a smear; two boxes of one label overlapping this much are one cell boxed twice.
DUPLICATE_IOU = 0.5


def read_label_corrections(path) -> List[Dict]:
    """The checked entries of a corrections file; ValueError naming the file and entry on a malformed one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read label corrections: {e}") from None
    entries = data.get("corrections") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected an object with a list 'corrections'")
    for k, e in enumerate(entries):
        where = f"{path}: corrections[{k}]"
        if not isinstance(e, dict) or not isinstance(e.get("image"), str) or not e.get("why"):
            raise ValueError(f"{where}: needs 'image' (a file stem) and 'why'")
        if e.get("label") not in LABELS:
            raise ValueError(f"{where}: 'label' must be one of {list(LABELS)}, got {e.get('label')!r}")
        if ("box" in e) == ("add" in e):
            raise ValueError(f"{where}: needs exactly one of 'box' (a box to change) and 'add' (a box to add)")
        box = e.get("box", e.get("add"))
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"{where}: a box is [x1, y1, x2, y2] with x1 < x2 and y1 < y2, got {box!r}")
        if "box" in e and ("to" not in e or (e["to"] is not None and e["to"] not in LABELS)):
            raise ValueError(f"{where}: 'to' must be one of {list(LABELS)} or null (remove the box)")
    return entries


def apply_label_corrections(samples: Sequence[Sample], entries: Sequence[Dict]) -> List[Sample]:
    """samples with the entries that name them applied (new Sample objects; the others unchanged). An entry
    naming an image among samples but no box, or more than one, is a ValueError."""
    from ..ops import box_iou  # here, as the readers: the package's data modules load without the C++ extension
    by_image: Dict[str, List[Dict]] = {}
    for e in entries:
        by_image.setdefault(e["image"], []).append(e)
    out = []
    for s in samples:
        todo = by_image.get(s.name)
        if not todo:
            out.append(s)
            continue
        boxes, classes, ignore = s.boxes.copy(), s.classes.copy(), s.ignore.copy()
        keep = np.ones(len(boxes), bool)
        added = []
        for e in todo:
            label = LABELS.index(e["label"])
            if "add" in e:
                added.append((e["add"], label))
                continue
            overlap = np.asarray(box_iou(np.array([e["box"]], np.float32), boxes))[0]
            hits = np.flatnonzero((classes == label) & keep & (overlap >= MATCH_IOU))
            if len(hits) != 1:
                raise ValueError(f"label correction of {s.name} ({s.image}): {len(hits)} {e['label']} boxes match "
                                 f"{e['box']} at IoU >= {MATCH_IOU}, expected one")
            if e["to"] is None:
                keep[hits[0]] = False
            else:
                classes[hits[0]] = LABELS.index(e["to"])
        boxes, classes, ignore = boxes[keep], classes[keep], ignore[keep]
        if added:
            boxes = np.concatenate([boxes, np.array([b for b, _ in added], np.float32)])
            classes = np.concatenate([classes, np.array([c for _, c in added], np.int64)])
            ignore = np.concatenate([ignore, np.zeros(len(added), bool)])
        out.append(replace(s, boxes=boxes, classes=classes, ignore=ignore))
    return out


def duplicate_boxes(sample: Sample, label: str, min_iou: float = DUPLICATE_IOU) -> List[Dict]:
    """Pairs of sample's boxes of label that overlap by IoU >= min_iou, most overlapping first: for each,
    "boxes" (the two, in file order) and "iou". Candidates for a reviewer, who keeps the box that fits. Meant
    for cells that lie apart (white cells): red cells overlap in thick areas, so their pairs are often two cells."""
    from ..ops import box_iou
    if label not in LABELS:
        raise ValueError(f"label must be one of {list(LABELS)}, got {label!r}")
    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    index = np.flatnonzero(sample.classes == LABELS.index(label))
    if len(index) < 2:
        return []
    overlap = np.triu(np.asarray(box_iou(sample.boxes[index], sample.boxes[index])), 1)
    pairs = [(float(overlap[i, j]), i, j) for i, j in zip(*np.nonzero(overlap >= min_iou))]
    return [{"boxes": [sample.boxes[index[i]].tolist(), sample.boxes[index[j]].tolist()], "iou": round(iou, 3)}
            for iou, i, j in sorted(pairs, key=lambda p: -p[0])]
