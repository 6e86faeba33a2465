"""What the application computes from its records: cells as JSON, counts and differentials (the library's
differential_of), the review queue, labelme / COCO exports and labelme imports."""
from __future__ import annotations

import io
import json
import math
import zipfile
from collections import Counter
from typing import Iterable, Optional, Sequence

from .. import differential_of
from .db import Cell, Image, Sample

LABORATORY_DIFFERENTIAL = 100  # a laboratory differential counts 100 white cells


def live(cells: Iterable[Cell]) -> list[Cell]:
    return [c for c in cells if not c.deleted]


def top3(probabilities: dict) -> list[dict]:
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])[:3]
    return [{"type": t, "probability": p} for t, p in ranked]


def cell_json(c: Cell) -> dict:
    probabilities = json.loads(c.probabilities or "{}")
    return {"id": c.id, "image": c.image_id, "box": [c.x1, c.y1, c.x2, c.y2], "label": c.label, "score": c.score,
            "type": c.type, "type_score": c.type_score, "type_probabilities": probabilities, "top3": top3(probabilities),
            "entropy": c.entropy, "uncertain": c.type == "uncertain", "origin": c.origin, "deleted": c.deleted,
            "reviewed": c.reviewed}


def counts(cells: Sequence[Cell]) -> dict:
    """{"labels": cells per detector label, "types": typed cells per type} over the live cells."""
    cells = live(cells)
    return {"labels": dict(Counter(c.label for c in cells)), "types": dict(Counter(c.type for c in cells if c.type))}


def differential(cells: Sequence[Cell], types: Sequence[str], limit: Optional[int] = None) -> dict:
    """The differential of the live typed cells (the first `limit` of them in image and cell order, as a
    laboratory counts a fixed number), as the pipeline computes it."""
    typed = [c for c in live(cells) if c.type]
    if limit is not None:
        typed = typed[:limit]
    type_counts = {t: 0 for t in types}
    for c in typed:
        type_counts[c.type] = type_counts.get(c.type, 0) + 1
    return differential_of(type_counts)


def sample_differential(sample: Sample, types: Sequence[str]) -> dict:
    """The sample's differential over its first 100 white cells (fewer: said in the note), and over all."""
    cells = [c for image in sample.images if image.status == "done" for c in image.cells]
    lab = differential(cells, types, LABORATORY_DIFFERENTIAL)
    if lab["cells"] + lab["uncertain"] < LABORATORY_DIFFERENTIAL:
        short = f"only {lab['cells'] + lab['uncertain']} of the {LABORATORY_DIFFERENTIAL} white cells of a laboratory differential"
        lab["note"] = f"{lab['note']}; {short}" if lab["note"] else short
    return {"laboratory": lab, "all": differential(cells, types), "counts": counts(cells)}


def priority(c: Cell, num_types: int) -> tuple[float, str]:
    """How much a person should look at a cell, in [0, 1], and why: the classifier's normalised entropy for
    a typed cell, and 1 - the detector's score (a box near the threshold may be a false detection)."""
    detector = 1.0 - c.score
    typed = (c.entropy or 0.0) / math.log(num_types) if c.type and num_types > 1 else 0.0
    return (typed, "type uncertain (entropy)") if typed >= detector else (detector, "low detector score")


def review_queue(cells: Iterable[Cell], num_types: int, limit: int) -> list[dict]:
    items = []
    for c in cells:
        p, reason = priority(c, num_types)
        items.append({**cell_json(c), "sample": c.image.sample_id, "priority": round(p, 4), "reason": reason})
    items.sort(key=lambda item: (-item["priority"], item["id"]))
    return items[:limit]


# --- exports and imports ---------------------------------------------------------------------------------
def exported_label(c: Cell) -> str:
    """A cell's name in exports: its type where it has a real one, else its detector label."""
    return c.type if c.type and c.type != "uncertain" else c.label


def labelme_json(image: Image, image_file: str) -> dict:
    """One image's cells as labelme writes a file: rectangles with two corner points."""
    return {"version": "5.2.1", "flags": {"reviewed": image.reviewed},
            "shapes": [{"label": exported_label(c), "points": [[c.x1, c.y1], [c.x2, c.y2]], "group_id": None,
                        "description": f"bloodcv cell {c.id}, {c.origin}", "shape_type": "rectangle", "flags": {}}
                       for c in live(image.cells)],
            "imagePath": image_file, "imageData": None, "imageHeight": image.height, "imageWidth": image.width}


def export_name(image: Image) -> str:
    return f"image_{image.id:06d}"


def export_zip(images: Sequence[Image], store, fmt: str, detector_labels: Sequence[str], types: Sequence[str]) -> bytes:
    """A zip of the images and their cells: labelme (one <name>.json beside each image) or COCO
    (annotations.json and images/)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        if fmt == "labelme":
            for image in images:
                ext = image.stored_name.rsplit(".", 1)[1]
                file = f"{export_name(image)}.{ext}"
                z.write(store.path(image.stored_name), file)
                z.writestr(f"{export_name(image)}.json", json.dumps(labelme_json(image, file), indent=2))
        elif fmt == "coco":
            names = list(types) + [label for label in detector_labels if label not in types]
            category = {name: i + 1 for i, name in enumerate(names)}
            coco = {"info": {"description": "bloodcv export"}, "images": [], "annotations": [],
                    "categories": [{"id": i, "name": n, "supercategory": "cell"} for n, i in category.items()]}
            for image in images:
                ext = image.stored_name.rsplit(".", 1)[1]
                file = f"images/{export_name(image)}.{ext}"
                z.write(store.path(image.stored_name), file)
                coco["images"].append({"id": image.id, "file_name": file, "width": image.width, "height": image.height,
                                       "reviewed": image.reviewed})
                for c in live(image.cells):
                    name = exported_label(c)
                    if name not in category:
                        category[name] = len(category) + 1
                        coco["categories"].append({"id": category[name], "name": name, "supercategory": "cell"})
                    coco["annotations"].append({
                        "id": c.id, "image_id": image.id, "category_id": category[name],
                        "bbox": [c.x1, c.y1, c.x2 - c.x1, c.y2 - c.y1], "area": (c.x2 - c.x1) * (c.y2 - c.y1), "iscrowd": 0,
                        "attributes": {"detector_label": c.label, "score": c.score, "origin": c.origin, "reviewed": c.reviewed}})
            z.writestr("annotations.json", json.dumps(coco, indent=1))
        else:
            raise ValueError(f"format must be labelme or coco, got {fmt!r}")
    return buffer.getvalue()


def labelme_cells(document: dict, image: Image, detector_labels: Sequence[str], types: Sequence[str],
                  white_label: str) -> list[Cell]:
    """The cells of a labelme file for image: rectangles (or any polygon, by its enclosing box) whose label is
    a detector label or a type (a type makes a white cell of that type). Raises ValueError naming the shape."""
    if not isinstance(document, dict) or not isinstance(document.get("shapes"), list):
        raise ValueError("a labelme file is a JSON object with a \"shapes\" list")
    cells = []
    for i, shape in enumerate(document["shapes"]):
        try:
            label, points = shape["label"], [(float(x), float(y)) for x, y in shape["points"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"shape {i}: needs \"label\" and \"points\" [[x, y], ...]") from None
        if len(points) < 2:
            raise ValueError(f"shape {i}: needs at least two points")
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        box = (max(0.0, min(xs)), max(0.0, min(ys)), min(float(image.width), max(xs)), min(float(image.height), max(ys)))
        if not (box[2] > box[0] and box[3] > box[1]) or not all(math.isfinite(v) for v in box):
            raise ValueError(f"shape {i}: its box {box} has no area inside the {image.width}x{image.height} image")
        if label in types:
            det_label, cell_type = white_label, label
        elif label in detector_labels:
            det_label, cell_type = label, None
        else:
            raise ValueError(f"shape {i}: label {label!r} is neither a detector label ({', '.join(detector_labels)}) "
                             f"nor a cell type ({', '.join(types)})")
        cells.append(Cell(image_id=image.id, x1=box[0], y1=box[1], x2=box[2], y2=box[3], label=det_label, score=1.0,
                          type=cell_type, type_score=1.0 if cell_type else None, probabilities="{}", entropy=None,
                          origin="user", reviewed=True))
    return cells
