#include "bloodcv/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "bloodcv/image.hpp"
#include "check.hpp"

namespace bloodcv {

using detail::fail_argument;

namespace {

class Stopwatch {
 public:
  double lap_ms() {
    const auto now = std::chrono::steady_clock::now();
    const double ms = std::chrono::duration<double, std::milli>(now - last_).count();
    last_ = now;
    return ms;
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

}  // namespace

Pipeline::Pipeline(std::shared_ptr<const Tiler> tiler, std::shared_ptr<const Detector> detector,
                   std::shared_ptr<const Classifier> classifier, PipelineOptions options)
    : tiler_(std::move(tiler)), detector_(std::move(detector)), classifier_(std::move(classifier)), options_(std::move(options)) {
  if (!tiler_) fail_argument("Pipeline needs a tiler, got none");
  if (!detector_) fail_argument("Pipeline needs a detector, got none");
  if (!options_.merger) options_.merger = std::make_shared<SeamMerger>();
  if (options_.uncertain_below) detail::check_unit_interval(*options_.uncertain_below, "uncertain_below");
  if (classifier_) {  // a label the detector never gives would silently classify nothing
    const std::vector<std::string> labels = detector_->labels();
    for (const std::string& wanted : options_.classify_labels)
      if (std::find(labels.begin(), labels.end(), wanted) == labels.end())
        fail_argument("classify_labels: '{}' is not one of the detector's labels ({})", wanted, fmt::join(labels, ", "));
  }
}

AnalysisResult Pipeline::analyze(const std::string& path) const { return analyze(read_image(path)); }

AnalysisResult Pipeline::analyze(const cv::Mat& input) const {
  Stopwatch total, stage;
  AnalysisResult result;
  const cv::Mat image = to_bgr8(input, "image");
  result.image_size = image.size();
  result.detector_labels = detector_->labels();
  const cv::Mat normalized = options_.stain_normalizer ? options_.stain_normalizer->normalize(image) : image;
  if (normalized.size() != image.size() || normalized.type() != CV_8UC3)
    throw std::runtime_error(fmt::format("the stain normaliser returned a {}x{} image of type {} for a {}x{} 8-bit BGR image", normalized.cols,
                                         normalized.rows, normalized.type(), image.cols, image.rows));
  result.timings.stain_ms = stage.lap_ms();

  const std::vector<Tile> tiles = tiler_->tiles(options_.stain_before_detection ? normalized : image);
  result.tiles = tiles.size();
  std::vector<cv::Mat> tile_images;
  tile_images.reserve(tiles.size());
  for (const Tile& t : tiles) tile_images.push_back(t.image);
  result.timings.tiling_ms = stage.lap_ms();

  const auto per_tile = detector_->detect(tile_images);
  if (per_tile.size() != tiles.size())
    throw std::runtime_error(fmt::format("the detector returned results for {} images, but was given {} tiles", per_tile.size(), tiles.size()));
  result.timings.detection_ms = stage.lap_ms();

  std::vector<Detection> merged = options_.merger->merge(per_tile, tiles, image.size());
  result.timings.merging_ms = stage.lap_ms();

  for (const std::string& name : result.detector_labels) result.counts[name] = 0;
  std::vector<std::size_t> to_classify;
  for (Detection& d : merged) {
    if (d.label < 0 || static_cast<std::size_t>(d.label) >= result.detector_labels.size())
      throw std::runtime_error(fmt::format("the detector gave label {}, but has {} labels", d.label, result.detector_labels.size()));
    Cell cell;
    cell.label = result.detector_labels[static_cast<std::size_t>(d.label)];
    cell.detection = std::move(d);
    ++result.counts[cell.label];
    const auto& wanted = options_.classify_labels;
    if (classifier_ && std::find(wanted.begin(), wanted.end(), cell.label) != wanted.end()) to_classify.push_back(result.cells.size());
    result.cells.push_back(std::move(cell));
  }

  if (classifier_) {
    result.classifier_labels = classifier_->labels();
    const float uncertain_below = options_.uncertain_below.value_or(classifier_->uncertainty_threshold());
    for (const std::string& name : result.classifier_labels) result.type_counts[name] = 0;
    if (uncertain_below > 0) result.type_counts[kUncertainType] = 0;
    std::vector<Box> boxes;
    for (const std::size_t i : to_classify) boxes.push_back(result.cells[i].detection.box);
    std::vector<Classification> types = boxes.empty() ? std::vector<Classification>{} : classifier_->classify(normalized, boxes);
    if (types.size() != boxes.size())
      throw std::runtime_error(fmt::format("the classifier returned {} results for {} cells", types.size(), boxes.size()));
    for (std::size_t k = 0; k < types.size(); ++k) {
      Cell& cell = result.cells[to_classify[k]];
      if (types[k].label < 0 || static_cast<std::size_t>(types[k].label) >= result.classifier_labels.size())
        throw std::runtime_error(fmt::format("the classifier gave label {}, but has {} labels", types[k].label, result.classifier_labels.size()));
      cell.uncertain = types[k].score < uncertain_below;
      cell.type_label = cell.uncertain ? kUncertainType : result.classifier_labels[static_cast<std::size_t>(types[k].label)];
      cell.type = std::move(types[k]);
      ++result.type_counts[cell.type_label];
    }
    Differential d = differential_of(result.type_counts);
    result.differential = std::move(d.percent);
    result.differential_cells = d.cells;
    result.differential_note = std::move(d.note);
    result.timings.classification_ms = stage.lap_ms();
  } else {
    result.differential_note = "no classifier: cells are counted, not typed";
  }
  result.timings.total_ms = total.lap_ms();
  return result;
}

Differential differential_of(const std::map<std::string, int>& type_counts) {
  Differential d;
  for (const auto& [type, n] : type_counts) (type == kUncertainType ? d.uncertain : d.cells) += n;
  if (d.cells > 0)
    for (const auto& [type, n] : type_counts)
      if (type != kUncertainType) d.percent[type] = 100.0 * n / d.cells;
  if (d.cells == 0 && d.uncertain == 0) d.note = "no cells were classified: the differential is empty";
  else if (d.cells == 0) d.note = fmt::format("all {} classified cells are uncertain: the differential is empty", d.uncertain);
  else if (d.uncertain > 0) d.note = fmt::format("{} uncertain cell(s) left out of the differential of {}", d.uncertain, d.cells);
  return d;
}

// --- configuration ---------------------------------------------------------------------------------
std::string default_model_dir() {
  if (const char* env = std::getenv("BLOODCV_MODELS"); env && *env) return env;
  return BLOODCV_DEFAULT_MODEL_DIR;
}

PipelineConfig::PipelineConfig()
    : detector((std::filesystem::path(default_model_dir()) / kDefaultDetectorFile).string()),
      classifier((std::filesystem::path(default_model_dir()) / kDefaultClassifierFile).string()) {}

namespace {

// A misspelt key would otherwise be ignored and its default used without a word.
void check_keys(const nlohmann::json& object, std::initializer_list<const char*> known, const std::string& where) {
  for (const auto& item : object.items()) {
    if (std::none_of(known.begin(), known.end(), [&](const char* k) { return item.key() == k; }))
      throw std::runtime_error(fmt::format("unknown key '{}{}' (known: {})", where, item.key(), fmt::join(known, ", ")));
  }
}

}  // namespace

PipelineConfig load_pipeline_config(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw std::runtime_error(fmt::format("cannot open config file '{}': no such file", path));
  std::ifstream in(path);
  if (!in) throw std::runtime_error(fmt::format("cannot open config file '{}'", path));
  PipelineConfig c;
  const std::filesystem::path base = std::filesystem::path(path).parent_path();
  auto resolve = [&](const std::string& p) { return std::filesystem::path(p).is_absolute() ? p : (base / p).string(); };
  try {
    const nlohmann::json j = nlohmann::json::parse(in);
    if (!j.is_object()) throw std::runtime_error("the top level must be an object");
    check_keys(j, {"detector", "classifier", "tile", "overlap", "whole_image", "classify_labels", "device", "half", "batch_size",
                   "score_threshold", "merge", "stain_normalize", "stain_target", "stain_before_detection", "uncertain_below"}, "");
    if (j.contains("uncertain_below") && !j.at("uncertain_below").is_null()) c.uncertain_below = j.at("uncertain_below").get<float>();
    if (j.contains("stain_normalize")) c.stain_normalize = j.at("stain_normalize").get<std::string>();
    if (j.contains("stain_target")) {
      if (!j.at("stain_target").is_object()) throw std::runtime_error("stain_target must be an object");
      c.stain_target = j.at("stain_target").dump();
    }
    c.stain_before_detection = j.value("stain_before_detection", c.stain_before_detection);
    if (j.contains("classifier") && j.at("classifier").is_null()) c.classifier.reset();
    if (j.contains("detector")) c.detector = resolve(j.at("detector").get<std::string>());
    if (j.contains("classifier") && !j.at("classifier").is_null()) c.classifier = resolve(j.at("classifier").get<std::string>());
    if (j.contains("tile")) {
      const auto t = j.at("tile").get<std::vector<int>>();
      if (t.size() != 2) throw std::runtime_error("tile must be [width, height]");
      c.tile = cv::Size(t[0], t[1]);
    }
    c.overlap = j.value("overlap", c.overlap);
    c.whole_image = j.value("whole_image", c.whole_image);
    c.classify_labels = j.value("classify_labels", c.classify_labels);
    c.runtime.device = j.value("device", c.runtime.device);
    c.runtime.half = j.value("half", c.runtime.half);
    c.runtime.batch_size = j.value("batch_size", c.runtime.batch_size);
    if (j.contains("score_threshold") && !j.at("score_threshold").is_null()) c.score_threshold = j.at("score_threshold").get<float>();
    if (j.contains("merge")) {
      const auto& m = j.at("merge");
      if (!m.is_object()) throw std::runtime_error("merge must be an object");
      check_keys(m, {"strategy", "match_threshold", "metric", "class_aware"}, "merge.");
      c.merge_strategy = m.value("strategy", c.merge_strategy);
      c.merge.match_threshold = m.value("match_threshold", c.merge.match_threshold);
      c.merge.metric = parse_box_metric(m.value("metric", std::string(to_string(c.merge.metric))));
      c.merge.class_aware = m.value("class_aware", c.merge.class_aware);
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("config file '{}': {}", path, e.what()));
  }
  return c;
}

namespace {

// The method: the config's, else the classifier file's "stain"."default", else none. The target: the
// config's, else the classifier file's "stain".<method>.
std::shared_ptr<const StainNormalizer> stain_normalizer_for(const PipelineConfig& config, const Classifier* classifier) {
  const auto* model = dynamic_cast<const TorchScriptClassifier*>(classifier);
  const nlohmann::json stain = model ? nlohmann::json::parse(model->metadata_json()).value("stain", nlohmann::json::object())
                                     : nlohmann::json::object();
  const std::string method = config.stain_normalize.value_or(stain.value("default", "none"));
  if (method == "none") return nullptr;
  if (method != "reinhard" && method != "macenko")
    fail_argument("stain normalisation must be none, reinhard or macenko, got '{}'", method);
  if (config.stain_target) return make_stain_normalizer(method, *config.stain_target);
  if (!stain.contains(method))
    fail_argument("stain normalisation '{}' needs a target: {} carries none (give \"stain_target\" in the config)", method,
                  config.classifier ? fmt::format("the classifier model file '{}'", *config.classifier) : std::string("no classifier model file"));
  return make_stain_normalizer(method, stain.at(method).dump());
}

}  // namespace

Pipeline make_pipeline(const PipelineConfig& config) {
  if (config.detector.empty()) fail_argument("no detector model given");
  if (config.score_threshold) detail::check_unit_interval(*config.score_threshold, "score_threshold");
  TorchScriptDetectorOptions detector_options;
  detector_options.runtime = config.runtime;
  detector_options.score_threshold = config.score_threshold;
  auto detector = std::make_shared<const TorchScriptDetector>(config.detector, detector_options);
  std::shared_ptr<const Classifier> classifier;
  if (config.classifier) {
    TorchScriptClassifierOptions classifier_options;
    classifier_options.runtime = config.runtime;
    classifier = std::make_shared<const TorchScriptClassifier>(*config.classifier, classifier_options);
  }
  GridTilerOptions tiling;
  tiling.tile_size = config.tile.value_or(detector->tile_size());
  tiling.overlap_ratio = config.overlap;
  tiling.whole_image_pass = config.whole_image;
  PipelineOptions options;
  options.classify_labels = config.classify_labels;
  options.merger = make_merger(config.merge_strategy, config.merge);
  options.stain_normalizer = stain_normalizer_for(config, classifier.get());
  options.stain_before_detection = config.stain_before_detection;
  options.uncertain_below = config.uncertain_below;
  return Pipeline(std::make_shared<const GridTiler>(tiling), detector, classifier, options);
}

}  // namespace bloodcv
