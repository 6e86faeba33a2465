// Evaluation: COCO-style AP/AR as the COCO evaluator computes them, the precision / recall / F1 table
// by IoU threshold that the bone-marrow papers report, counting error, and classification metrics.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "bloodcv/box.hpp"

namespace bloodcv::eval {

// --- data ------------------------------------------------------------------------------------------
struct GroundTruthBox {
  Box box;
  std::int64_t label = 0;
  bool ignore = false;  // COCO iscrowd or VOC difficult: may be matched, never counted as missed
};

struct ImageGroundTruth {
  std::string image;  // file name without extension: how predictions find their image
  cv::Size size;
  std::vector<GroundTruthBox> boxes;
};

struct GroundTruth {
  std::vector<std::string> labels;
  std::vector<ImageGroundTruth> images;
};

struct ImagePredictions {
  std::string image;
  std::vector<Detection> detections;
};

struct Predictions {
  std::vector<std::string> labels;
  std::vector<ImagePredictions> images;
};

// Pascal VOC XML: one file, or every .xml of a directory. Labels: `labels` if given (others are an
// error), else in order of first appearance.
GroundTruth read_voc(const std::string& path, std::vector<std::string> labels = {});
// YOLO txt ("class cx cy w h", normalised): every .txt of `labels_dir`, sized by the image of the same
// stem in `images_dir`. Names from `labels`, else from classes.txt beside or above labels_dir.
GroundTruth read_yolo(const std::string& labels_dir, const std::string& images_dir, std::vector<std::string> labels = {});
// COCO instances JSON (images, annotations with bbox [x, y, w, h] and iscrowd, categories).
GroundTruth read_coco(const std::string& path);
// Predictions, in any form bloodcv analyze writes them: its output directory (the analysis reports in it;
// coco_results.json if it holds none), one analysis report, or COCO results JSON with bloodcv's
// coco_images.json beside it (image ids → file names, category ids → names). All give the same detections.
Predictions read_predictions(const std::string& path);

// Image ids, one per line (a VOC ImageSets file); an extension is dropped.
std::vector<std::string> read_image_ids(const std::string& path);
// The ground truth of the named images only; a name the ground truth lacks is an error (it names them).
GroundTruth select_images(GroundTruth truth, const std::vector<std::string>& names);

// --- detection metrics -----------------------------------------------------------------------------
struct AreaRange {
  std::string name;
  double min_area, max_area;
};

struct DetectionEvalOptions {
  std::vector<double> iou_thresholds{0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95};
  std::vector<int> max_detections{1, 10, 100};  // a field of view can hold more than 100 red cells: raise the last
  std::vector<AreaRange> areas{{"all", 0, 1e10}, {"small", 0, 32 * 32}, {"medium", 32 * 32, 96 * 96}, {"large", 96 * 96, 1e10}};
  std::optional<float> count_score_threshold;  // unset: each class's F1-best confidence at IoU 0.5
  bool predicted_images_only = false;  // score only the ground-truth images that the predictions cover
};

// Precision, recall and F1 at the confidence that maximises F1, and AP, at one IoU threshold.
struct ThresholdRow {
  double iou = 0, precision = 0, recall = 0, f1 = 0, confidence = 0, ap = -1;
};

struct ClassDetectionMetrics {
  std::string label;
  int ground_truth = 0;                    // not-ignored boxes
  double ap = -1, ap50 = -1, ap75 = -1;    // -1: no ground truth of this class
  std::vector<ThresholdRow> by_iou;
  double count_mae = 0;                    // mean over images of |predicted - true| count
  float count_threshold = 0;
};

struct DetectionReport {
  // COCO summary, as printed by COCOeval.summarize(): AP, AP50, AP75, AP small/medium/large (at the last
  // max_detections), AR at each max_detections, AR small/medium/large. -1 where undefined.
  std::vector<std::pair<std::string, double>> coco;
  std::vector<ThresholdRow> by_iou;  // all classes together, ranked by score across classes
  std::vector<ClassDetectionMetrics> classes;
  double count_mae = 0;  // mean over classes of count_mae
  int images = 0, predictions = 0;      // ground-truth images scored; detections on them
  int images_without_predictions = 0;   // scored images the predictions do not cover: every cell missed
  std::vector<std::string> unmatched_prediction_images;  // predicted images not in the ground truth (ignored)
  DetectionEvalOptions options;         // max_detections sorted ascending, as COCO expects

  double metric(const std::string& name) const;  // a COCO summary entry by name, e.g. "AP50"
};

// Images are matched by name; images without predictions have none (unless predicted_images_only).
// Prediction labels are matched to ground-truth labels by name; a label the ground truth lacks is an
// error, and so are predictions of which no image is in the ground truth. max_detections is used in
// ascending order whatever the order given: AP is taken at the largest.
DetectionReport evaluate_detections(const GroundTruth& truth, const Predictions& predictions, const DetectionEvalOptions& options = {});

std::string to_markdown(const DetectionReport& report);
std::string to_json(const DetectionReport& report);

// --- classification metrics ------------------------------------------------------------------------
struct ClassificationReport {
  std::vector<std::string> labels;
  std::vector<std::vector<int>> confusion;  // [true][predicted]
  double accuracy = 0;
  std::vector<double> precision, recall, f1;
  std::vector<int> support;
  double macro_precision = 0, macro_recall = 0, macro_f1 = 0;
  double weighted_precision = 0, weighted_recall = 0, weighted_f1 = 0;
};

ClassificationReport evaluate_classification(const std::vector<std::int64_t>& truth, const std::vector<std::int64_t>& predicted,
                                             const std::vector<std::string>& labels);
std::string to_markdown(const ClassificationReport& report);
std::string to_json(const ClassificationReport& report);
cv::Mat draw_confusion(const ClassificationReport& report, int cell_px = 48);  // a BGR image, row-normalised shading
inline constexpr std::size_t kMaxClassificationLabels = 4096;  // evaluate_classification refuses more
inline constexpr int kMaxConfusionImageLabels = 150;          // draw_confusion refuses more

// --- detect, then classify ---------------------------------------------------------------------------
// A true cell with a known type counts as correct when a predicted cell overlaps it with IoU >= 0.5
// (each predicted cell used once, highest score first) and carries the same type.
struct TypedBox {
  Box box;
  std::string type;
  float score = 1;
};

struct ChainReport {
  int cells = 0, detected = 0, correct = 0;
  double detection_recall = 0, end_to_end_accuracy = 0;
  ClassificationReport types;  // over the detected cells: true type vs predicted type
};

ChainReport evaluate_chain(const std::map<std::string, std::vector<TypedBox>>& truth,
                           const std::map<std::string, std::vector<TypedBox>>& predicted, double iou_threshold = 0.5);

}  // namespace bloodcv::eval
