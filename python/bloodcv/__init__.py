"""bloodcv: find, classify and count cells in blood and bone-marrow smear images.

Every component is C++ (bloodcv._core) behind an interface that Python can implement too (Detector,
Classifier, Tiler, TileMerger, Suppressor, OutputDecoder, StainNormalizer, ImageSource). Whole slides are
read region by region (OpenSlideSource; Pipeline.analyze(source)); bloodcv.distributed spreads many over Dask. Boxes go in and come out as numpy arrays or torch tensors; images are numpy arrays in
OpenCV's BGR order (cv2.imread's; bloodcv.read_image gives the same), or file paths.
"""
from ._core import (AnalysisResult, Classifier, Detector, GridTiler, HardNms, ImageSource, IouAwareNms, MacenkoNormalizer,
                    MatImageSource, OpenSlideSource, SlidePlan, draw_slide_overview, is_slide, open_image_source, read_overview,
                    tissue_mask, write_slide_reports,
                    NonMaxMerge, Pipeline, PooledMerger, ReinhardNormalizer, SeamMerger, SoftNms, StainNormalizer,
                    Suppressor, Tile, TileMerger, Tiler, TorchScriptClassifier, TorchScriptDetector, WeightedBoxFusion,
                    __version__, OutputDecoder, decoder_kinds, default_model_dir, differential_of, fit_stain_target, make_merger, make_stain_normalizer,
                    read_image, register_decoder)
from .ops import (Suppression, batched_nms, box_convert, box_ios, box_iou, clip_boxes_to_image,
                  distance_box_iou, generalized_box_iou, merge_tile_detections, nms)

__all__ = [
    "AnalysisResult", "Classifier", "Detector", "MacenkoNormalizer", "Pipeline", "ReinhardNormalizer", "StainNormalizer",
    "Tiler", "TorchScriptClassifier", "TorchScriptDetector", "fit_stain_target", "make_stain_normalizer",
    "PooledMerger", "SeamMerger", "TileMerger", "make_merger", "OutputDecoder", "decoder_kinds", "register_decoder",
    "default_model_dir", "differential_of",
    "ImageSource", "MatImageSource", "OpenSlideSource", "SlidePlan", "draw_slide_overview", "is_slide", "open_image_source",
    "read_overview", "tissue_mask", "write_slide_reports",
    "read_image", "GridTiler", "HardNms", "IouAwareNms", "NonMaxMerge", "SoftNms", "Suppression", "Suppressor", "Tile",
    "WeightedBoxFusion", "__version__", "batched_nms", "box_convert", "box_ios", "box_iou",
    "clip_boxes_to_image", "distance_box_iou", "generalized_box_iou", "merge_tile_detections", "nms",
]
