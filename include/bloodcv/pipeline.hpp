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
#include "bloodcv/image_source.hpp"
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

// How an ImageSource was read: at which scale, and how many tiles held no tissue.
struct SlideInfo {
  std::string source;                   // ImageSource::name()
  std::size_t levels = 1;
  std::optional<double> microns_per_pixel;  // of level 0 (the source's, or SlideOptions::microns_per_pixel)
  double downsample = 1;                // level-0 pixels per pixel the detector saw
  int level = 0;                        // the level read (then resized by its downsample / downsample)
  std::size_t tiles_skipped = 0;        // tiles without tissue, not run
  std::vector<std::string> tile_errors;  // tiles that could not be read (a corrupt tile): the rest went on
};

struct AnalysisResult {
  cv::Size image_size;                  // level-0 pixels: cells' boxes are in them
  std::size_t tiles = 0;                // tiles planned (with a slide, tiles_skipped of them not run)
  std::optional<SlideInfo> slide;       // set by analyze(const ImageSource&)
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

// Reading an ImageSource: at the detector's physical scale where both sides know theirs, tile by tile.
struct SlideOptions {
  std::optional<double> microns_per_pixel;  // of the source's level 0; overrides the source's own
  bool skip_background = true;              // tiles with no tissue in the low-resolution mask are not run
  TissueMaskOptions tissue;
  int mask_max_side = 4096;                 // the mask's (and overview's) longest side, in pixels
  std::size_t batch_tiles = 8;              // tiles read and detected together (bounds the pixels in memory)
};

// What analyze(source) will do, in plain data: a distributed run plans once, detects subsets of the
// tiles anywhere (detect_tiles), and finishes with every tile's detections (finish), giving the cells
// a single run gives.
struct SlidePlan {
  SlideInfo info;
  cv::Size working_size;     // the image the detector sees: level 0 / info.downsample
  std::vector<Tile> tiles;   // regions in working pixels (no pixels)
  std::vector<char> run;     // per tile: 1 = has tissue, detect it; 0 = background, skipped
  cv::Mat mask;              // the tissue mask (8-bit, 255 = tissue) of the whole slide
  double mask_downsample = 1;  // working pixels per mask pixel
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

  // A source read tile by tile: at most options.batch_tiles tiles' pixels are held at once, so memory does
  // not grow with the slide's size (the cells and a mask of at most mask_max_side pixels a side do).
  // A tile that cannot be read is reported in slide->tile_errors and the others go on. A second thread
  // reads the next batches (at most two ahead) while this one detects.
  // With the detector's microns_per_pixel() and the source's (or options'), the slide is read at the level
  // and resize that give the detector its training scale; without either, at level 0. Boxes are in
  // level-0 pixels. For an in-memory source with no tile skipped, the cells equal analyze(image)'s.
  AnalysisResult analyze(const ImageSource& source, const SlideOptions& options = {}) const;
  SlidePlan plan(const ImageSource& source, const SlideOptions& options = {}) const;
  // The tile-local detections of the listed tiles of the plan (indices into plan.tiles), in that order.
  std::vector<std::vector<Detection>> detect_tiles(const ImageSource& source, const SlidePlan& plan,
                                                   const std::vector<std::size_t>& tiles) const;
  // Merges every tile's detections (one vector per plan tile; skipped ones empty), classifies the chosen
  // cells from crops read from the source, and counts.
  AnalysisResult finish(const ImageSource& source, const SlidePlan& plan, const std::vector<std::vector<Detection>>& per_tile) const;

  const Tiler& tiler() const { return *tiler_; }
  const Detector& detector() const { return *detector_; }
  const Classifier* classifier() const { return classifier_.get(); }
  const PipelineOptions& options() const { return options_; }

 private:
  std::shared_ptr<const Tiler> tiler_;
  std::shared_ptr<const Detector> detector_;
  std::shared_ptr<const Classifier> classifier_;
  PipelineOptions options_;

  // A planned tile's pixels, padded and normalised as the detector gets them; ReadError when unreadable.
  cv::Mat tile_pixels(const ImageSource& source, const SlidePlan& plan, std::size_t tile) const;
  std::vector<std::vector<Detection>> detect_images(const std::vector<cv::Mat>& images) const;
  // Counts and classifies merged detections (working pixels) into result; classify(boxes) types boxes.
  template <class Classify>
  void count_and_classify(AnalysisResult& result, std::vector<Detection> merged, Classify&& classify) const;
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
//    "classify_labels": ["WBC"], "device": "cpu", "half": false, "batch_size": 8, "threads": 0, "optimize": true, "score_threshold": null,
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
