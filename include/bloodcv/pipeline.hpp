// The analysis of one smear image: tiles → batched detection → merging across seams → classification
// of the chosen cells → counts and the differential. Every stage is passed in through its interface.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "bloodcv/classifier.hpp"
#include "bloodcv/detector.hpp"
#include "bloodcv/merge.hpp"
#include "bloodcv/stain.hpp"
#include "bloodcv/tiler.hpp"

namespace bloodcv {

struct Cell {
  Detection detection;                 // box in image pixels, detector score and label
  std::string label;                   // the detector's name for detection.label
  std::optional<Classification> type;  // set for the cells the classifier saw
  std::string type_label;              // the classifier's name for type->label, kUncertainType, or empty
  bool uncertain = false;              // typed, but its top probability is below the threshold
};

// The type of a classified cell whose top probability is below the classifier's threshold.
inline constexpr const char* kUncertainType = "uncertain";

// The differential: each type's share of the typed cells, the uncertain ones left out and said.
struct Differential {
  std::map<std::string, double> percent;  // every type but kUncertainType; empty when `cells` is 0
  int cells = 0;                          // the typed cells the percentages are of
  int uncertain = 0;                      // typed cells left out: below the classifier's threshold
  std::string note;                       // why the differential is empty or partial; empty otherwise
};
Differential differential_of(const std::map<std::string, int>& type_counts);

struct StageTimings {
  double stain_ms = 0, tiling_ms = 0, detection_ms = 0, merging_ms = 0, classification_ms = 0, total_ms = 0;
};

struct AnalysisResult {
  cv::Size image_size;
  std::size_t tiles = 0;
  std::vector<std::string> detector_labels;
  std::vector<std::string> classifier_labels;  // empty without a classifier
  std::vector<Cell> cells;                     // by decreasing detector score
  std::map<std::string, int> counts;           // cells per detector label (every label listed)
  std::map<std::string, int> type_counts;      // classified cells per type (every type listed, and
                                               // kUncertainType when the threshold is above 0)
  std::map<std::string, double> differential;  // percent of the differential's cells (differential_of)
  int differential_cells = 0;                  // its denominator: typed cells, the uncertain left out
  std::string differential_note;               // why it is empty or partial; empty otherwise
  StageTimings timings;
};

struct PipelineOptions {
  std::vector<std::string> classify_labels{"WBC"};  // detector labels whose cells are classified
  std::shared_ptr<const TileMerger> merger;         // null: SeamMerger with its defaults
  // Applied to the image before the classifier crops it (null: none); with stain_before_detection,
  // the detector sees the normalised image too.
  std::shared_ptr<const StainNormalizer> stain_normalizer;
  bool stain_before_detection = false;
  std::optional<float> uncertain_below;  // in [0, 1]; unset: the classifier's uncertainty_threshold()
};

// Thread safety: analyze() is const and keeps no state between calls, so one Pipeline may serve
// several threads at once when its components may; all of bloodcv's components may (detectors and
// classifiers run TorchScript inference, which is safe to call concurrently). A component written in
// Python runs under the GIL, one call at a time.
class Pipeline {
 public:
  // `classifier` may be null (detection and counts only). With a classifier, every
  // options.classify_labels entry must be one of the detector's labels (std::invalid_argument).
  Pipeline(std::shared_ptr<const Tiler> tiler, std::shared_ptr<const Detector> detector,
           std::shared_ptr<const Classifier> classifier = nullptr, PipelineOptions options = {});

  AnalysisResult analyze(const cv::Mat& image) const;      // any image to_bgr8 accepts
  AnalysisResult analyze(const std::string& path) const;  // read_image(path)

  const Tiler& tiler() const { return *tiler_; }
  const Detector& detector() const { return *detector_; }
  const Classifier* classifier() const { return classifier_.get(); }
  const PipelineOptions& options() const { return options_; }

 private:
  std::shared_ptr<const Tiler> tiler_;
  std::shared_ptr<const Detector> detector_;
  std::shared_ptr<const Classifier> classifier_;
  PipelineOptions options_;
};

// Where the default models are: $BLOODCV_MODELS if set, else the models/ folder bloodcv was built from.
std::string default_model_dir();
inline constexpr const char* kDefaultDetectorFile = "cell_detector.pt";
inline constexpr const char* kDefaultClassifierFile = "wbc_classifier.pt";

// Everything a pipeline of bloodcv's own components needs, as the CLI and config files give it.
// JSON (every key optional; an absent key keeps the default shown, an unknown key is an error):
//   {"detector": "cell_detector.pt in default_model_dir()",
//    "classifier": "wbc_classifier.pt in default_model_dir()", or null for none,
//    "tile": [640, 640] (default: the detector's tile_size()), "overlap": 0.15, "whole_image": false,
//    "classify_labels": ["WBC"], "device": "cpu", "half": false, "batch_size": 8, "score_threshold": null,
//    "merge": {"strategy": "seam" | "nmm" | "nms" | "wbf" | "soft-nms" (make_merger), and for seam:
//              "match_threshold": 0.5, "metric": "iou", "class_aware": true},
//    "stain_normalize": "none" | "reinhard" | "macenko" (default: the classifier file's "stain"."default", else none),
//    "stain_target": {...} (default: the classifier file's "stain".<method>), "stain_before_detection": false,
//    "uncertain_below": null (default: the classifier file's calibration.uncertain_below)}
// Relative model paths are taken relative to the config file.
struct PipelineConfig {
  PipelineConfig();  // the default models
  std::string detector;
  std::optional<std::string> classifier;
  std::optional<cv::Size> tile;  // unset: the detector's tile_size()
  double overlap = 0.15;
  bool whole_image = false;
  std::vector<std::string> classify_labels{"WBC"};
  RuntimeOptions runtime;
  std::optional<float> score_threshold;
  std::string merge_strategy = "seam";
  SeamMergeOptions merge;  // the seam strategy's
  std::optional<std::string> stain_normalize;  // unset: what the classifier's model file recommends
  std::optional<std::string> stain_target;     // JSON; unset: the classifier's model file's
  bool stain_before_detection = false;
  std::optional<float> uncertain_below;  // unset: the classifier's uncertainty_threshold()
};

PipelineConfig load_pipeline_config(const std::string& path);  // throws std::runtime_error naming the path and key
Pipeline make_pipeline(const PipelineConfig& config);

}  // namespace bloodcv
