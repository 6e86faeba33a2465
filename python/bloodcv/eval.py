"""Evaluation: COCO-style AP/AR (as pycocotools computes them), the P/R/F1 table by IoU threshold,
counting error, classification metrics, and the detect-then-classify chain. The C++ implementation
(bloodcv::eval) does the work; see `bloodcv eval --help` for the command-line version."""
from ._core.eval import (ChainReport, ClassificationReport, DetectionReport, GroundTruth, Predictions,
                         evaluate_chain, evaluate_classification, evaluate_detections, ground_truth, predictions,
                         read_coco, read_image_ids, read_predictions, read_voc, read_yolo, select_images)

__all__ = ["ChainReport", "ClassificationReport", "DetectionReport", "GroundTruth", "Predictions", "evaluate_chain",
           "evaluate_classification", "evaluate_detections", "ground_truth", "predictions", "read_coco",
           "read_image_ids", "read_predictions", "read_voc", "read_yolo", "select_images"]
