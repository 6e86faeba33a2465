"""Annotated images for the detector recipes, read by the library's own readers (bloodcv.eval.read_voc,
read_yolo): one reader per format, one pixel convention (boxes in pixels as the file states them), the
same boxes the evaluation scores against."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence

import numpy as np

LABELS = ("WBC", "RBC", "Platelets")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass
class Sample:
    """One annotated image: boxes are N x 4 (x1, y1, x2, y2) pixels, classes N indices into LABELS, ignore N
    flags (VOC difficult: trained on, never counted as missed by the evaluation; default none)."""
    image: Path
    boxes: np.ndarray
    classes: np.ndarray
    width: int
    height: int
    source: str = ""
    name: str = field(default="")
    ignore: np.ndarray = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        self.ignore = (np.zeros(len(self.boxes), bool) if self.ignore is None
                       else np.asarray(self.ignore, dtype=bool).reshape(-1))
        if not self.name:
            self.name = Path(self.image).stem


def _samples(truth, images: dict, source: str) -> List[Sample]:
    out = []
    for name in truth.images:
        if name not in images:
            continue
        a = truth.boxes(name)
        width, height = a["size"]
        out.append(Sample(images[name], a["boxes"], a["labels"], width, height, source, name, a["ignore"]))
    return out


def list_yolo_split(images_dir, labels_dir, source: str = "") -> List[Sample]:
    """Samples of every image in images_dir that has labels_dir/<stem>.txt (YOLO, classes LABELS), sorted by name."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    if not images_dir.is_dir() or not labels_dir.is_dir():
        return []
    images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    from .. import eval as bev  # here, not at the top: single-cell training runs where the C++ extension is not built
    truth = bev.read_yolo(str(labels_dir), str(images_dir), list(LABELS))
    return sorted(_samples(truth, images, source), key=lambda s: s.name)


def list_voc_split(root, ids: Sequence[str], source: str = "") -> List[Sample]:
    """Samples for VOC ids (root/JPEGImages/<id>.jpg, root/Annotations/<id>.xml) in the order of ids; ids
    without both files are skipped."""
    root = Path(root)
    out = []
    for i in ids:
        image, xml = root / "JPEGImages" / f"{i}.jpg", root / "Annotations" / f"{i}.xml"
        if image.exists() and xml.exists():
            from .. import eval as bev
            out += _samples(bev.read_voc(str(xml), list(LABELS)), {i: image}, source)
    return out


def read_ids(path) -> List[str]:
    """Image ids of a VOC ImageSets file; [] when there is no such file."""
    from .. import eval as bev
    return bev.read_image_ids(str(path)) if Path(path).exists() else []
