"""Training data, in one module per concern:

- readers: annotated detection images (Sample) through the library's VOC and YOLO readers;
- corrections: reviewed fixes of a dataset's boxes, kept as data (a JSON file) and applied to Samples;
- dedup: near-duplicate images across datasets (thumbnails, SIFT + RANSAC);
- splits: the detector recipes' train / val / test splits without test near-duplicates;
- detection: the detector recipes' augmented, letterboxed batches (DetectionDataset);
- cells: single-cell samples of every source for the classifier recipe, and their splits.

The readers' names are re-exported here: `from bloodcv.data import Sample, LABELS`.
"""
from .readers import IMAGE_SUFFIXES, LABELS, Sample, list_voc_split, list_yolo_split, read_ids

__all__ = ["IMAGE_SUFFIXES", "LABELS", "Sample", "list_voc_split", "list_yolo_split", "read_ids"]
