#include "bloodcv/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include <opencv2/imgproc.hpp>

#include "bloodcv/image.hpp"
#include "check.hpp"
#include "json_checks.hpp"

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

template <class Classify>
void Pipeline::count_and_classify(AnalysisResult& result, std::vector<Detection> merged, Classify&& classify) const {
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
    std::vector<Classification> types = boxes.empty() ? std::vector<Classification>{} : classify(boxes);
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
  } else {
    result.differential_note = "no classifier: cells are counted, not typed";
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

  count_and_classify(result, std::move(merged), [&](const std::vector<Box>& boxes) { return classifier_->classify(normalized, boxes); });
  result.timings.classification_ms = stage.lap_ms();
  result.timings.total_ms = total.lap_ms();
  return result;
}

// --- sources read tile by tile ---------------------------------------------------------------------------
namespace {

// Below this many working pixels the whole-image pass runs and the cells are classified in one batch
// from the source read whole; above it, nothing is read whole.
constexpr long long kReadWholeBelow = 16LL << 20;

bool read_whole(const SlidePlan& plan) {
  return static_cast<long long>(plan.working_size.width) * plan.working_size.height <= kReadWholeBelow;
}

// The pixels of a region of the working image: read at the plan's level and resized to the region's size.
cv::Mat read_working(const ImageSource& source, const SlidePlan& plan, const cv::Rect& region) {
  const SourceLevel level = source.levels().at(static_cast<std::size_t>(plan.info.level));
  const double f = plan.info.downsample / level.downsample;  // level pixels per working pixel
  const int x0 = std::clamp(static_cast<int>(std::floor(region.x * f)), 0, level.size.width - 1);
  const int y0 = std::clamp(static_cast<int>(std::floor(region.y * f)), 0, level.size.height - 1);
  const int x1 = std::clamp(static_cast<int>(std::ceil((region.x + region.width) * f)), x0 + 1, level.size.width);
  const int y1 = std::clamp(static_cast<int>(std::ceil((region.y + region.height) * f)), y0 + 1, level.size.height);
  cv::Mat pixels = source.read(cv::Rect(x0, y0, x1 - x0, y1 - y0), plan.info.level);
  if (pixels.size() != region.size())
    cv::resize(pixels, pixels, region.size(), 0, 0, f > 1 ? cv::INTER_AREA : cv::INTER_LINEAR);
  return pixels;
}

}  // namespace

SlidePlan Pipeline::plan(const ImageSource& source, const SlideOptions& options) const {
  if (options.microns_per_pixel && !(*options.microns_per_pixel > 0 && std::isfinite(*options.microns_per_pixel)))
    fail_argument("microns_per_pixel must be positive, got {}", *options.microns_per_pixel);
  if (options.mask_max_side < 16) fail_argument("mask_max_side must be at least 16, got {}", options.mask_max_side);
  if (options.batch_tiles == 0) fail_argument("batch_tiles must be at least 1");
  const std::vector<SourceLevel> levels = source.levels();
  if (levels.empty()) throw std::runtime_error(fmt::format("{}: the source has no levels", source.name()));
  SlidePlan plan;
  plan.info.source = source.name();
  plan.info.levels = levels.size();
  plan.info.microns_per_pixel = options.microns_per_pixel ? options.microns_per_pixel : source.microns_per_pixel();
  if (const auto model = detector_->microns_per_pixel(); model && plan.info.microns_per_pixel)
    plan.info.downsample = *model / *plan.info.microns_per_pixel;
  plan.info.level = source.level_for_downsample(plan.info.downsample);
  const cv::Size s0 = levels.front().size;
  plan.working_size = {std::max(1, static_cast<int>(std::lround(s0.width / plan.info.downsample))),
                       std::max(1, static_cast<int>(std::lround(s0.height / plan.info.downsample)))};
  plan.tiles = tiler_->plan(plan.working_size);
  plan.run.assign(plan.tiles.size(), 1);

  double view_down = 1;
  plan.mask = tissue_mask(read_overview(source, options.mask_max_side, plan.info.downsample, &view_down), options.tissue);
  plan.mask_downsample = view_down / plan.info.downsample;
  for (std::size_t i = 0; i < plan.tiles.size(); ++i) {
    const Tile& t = plan.tiles[i];
    if (t.whole_image) {  // the whole-image pass reads everything: only where the source is read whole anyway
      plan.run[i] = read_whole(plan);
      continue;
    }
    if (!options.skip_background) continue;
    const double m = plan.mask_downsample;  // one mask pixel of margin: a cell cut by the tile edge counts
    const int x0 = std::max(0, static_cast<int>(std::floor(t.region.x / m)) - 1), y0 = std::max(0, static_cast<int>(std::floor(t.region.y / m)) - 1);
    const int x1 = std::min(plan.mask.cols, static_cast<int>(std::ceil((t.region.x + t.region.width) / m)) + 1);
    const int y1 = std::min(plan.mask.rows, static_cast<int>(std::ceil((t.region.y + t.region.height) / m)) + 1);
    plan.run[i] = x1 > x0 && y1 > y0 && cv::countNonZero(plan.mask(cv::Rect(x0, y0, x1 - x0, y1 - y0))) > 0;
  }
  plan.info.tiles_skipped = static_cast<std::size_t>(std::count(plan.run.begin(), plan.run.end(), 0));
  return plan;
}

cv::Mat Pipeline::tile_pixels(const ImageSource& source, const SlidePlan& plan, std::size_t i) const {
  if (i >= plan.tiles.size()) throw std::out_of_range(fmt::format("tile {} of a plan of {} tiles", i, plan.tiles.size()));
  const Tile& tile = plan.tiles[i];
  if (tile.whole_image && !read_whole(plan))
    fail_argument("tile {} is the whole-image pass of a {}x{} source read tile by tile: it is not run", i, plan.working_size.width,
                  plan.working_size.height);
  cv::Mat pixels;
  try {
    pixels = read_working(source, plan, tile.region);
  } catch (const ReadError&) {
    throw;
  } catch (const std::exception& e) {  // a source written elsewhere (Python) fails in its own words
    throw ReadError(e.what());
  }
  if (options_.stain_normalizer && options_.stain_before_detection) pixels = options_.stain_normalizer->normalize(pixels);
  // A region smaller than the tiler's tiles (an image smaller than a tile) is padded as the tiler pads it.
  if (!tile.whole_image) {
    const std::vector<Tile> own = tiler_->tiles(pixels);
    if (own.size() == 1 && own[0].region == cv::Rect({0, 0}, pixels.size())) pixels = own[0].image;
  }
  return pixels;
}

std::vector<std::vector<Detection>> Pipeline::detect_images(const std::vector<cv::Mat>& images) const {
  if (images.empty()) return {};
  auto found = detector_->detect(images);
  if (found.size() != images.size())
    throw std::runtime_error(fmt::format("the detector returned results for {} images, but was given {} tiles", found.size(), images.size()));
  return found;
}

std::vector<std::vector<Detection>> Pipeline::detect_tiles(const ImageSource& source, const SlidePlan& plan,
                                                           const std::vector<std::size_t>& tiles) const {
  std::vector<cv::Mat> images;
  images.reserve(tiles.size());
  for (const std::size_t i : tiles) images.push_back(tile_pixels(source, plan, i));
  return detect_images(images);
}

AnalysisResult Pipeline::finish(const ImageSource& source, const SlidePlan& plan, const std::vector<std::vector<Detection>>& per_tile) const {
  Stopwatch stage;
  if (per_tile.size() != plan.tiles.size())
    fail_argument("finish needs one detection list per planned tile: {} for {} tiles", per_tile.size(), plan.tiles.size());
  AnalysisResult result;
  result.image_size = source.size();
  result.tiles = plan.tiles.size();
  result.slide = plan.info;
  result.detector_labels = detector_->labels();
  std::vector<Detection> merged = options_.merger->merge(per_tile, plan.tiles, plan.working_size);
  result.timings.merging_ms = stage.lap_ms();

  const auto normalized = [&](cv::Mat pixels) { return options_.stain_normalizer ? options_.stain_normalizer->normalize(pixels) : pixels; };
  count_and_classify(result, std::move(merged), [&](const std::vector<Box>& boxes) {
    if (read_whole(plan)) {  // one batch over the whole image; tile by tile where part of it cannot be read
      try {
        return classifier_->classify(normalized(read_working(source, plan, cv::Rect({0, 0}, plan.working_size))), boxes);
      } catch (const ReadError&) {
      }
    }
    // Each cell from a patch of the source around it, wide enough for any crop padding; clipped where the
    // image ends, as a crop of the whole image is.
    std::vector<Classification> out;
    for (const Box& b : boxes) {
      const float margin = std::max(b.width(), b.height()) + 2.f;
      const int x0 = std::max(0, static_cast<int>(std::floor(b.x1 - margin))), y0 = std::max(0, static_cast<int>(std::floor(b.y1 - margin)));
      const int x1 = std::min(plan.working_size.width, static_cast<int>(std::ceil(b.x2 + margin)));
      const int y1 = std::min(plan.working_size.height, static_cast<int>(std::ceil(b.y2 + margin)));
      const cv::Mat patch = normalized(read_working(source, plan, cv::Rect(x0, y0, x1 - x0, y1 - y0)));
      const Box local{b.x1 - static_cast<float>(x0), b.y1 - static_cast<float>(y0), b.x2 - static_cast<float>(x0), b.y2 - static_cast<float>(y0)};
      out.push_back(classifier_->classify(patch, {local}).at(0));
    }
    return out;
  });
  result.timings.classification_ms = stage.lap_ms();
  const auto d = static_cast<float>(plan.info.downsample);
  if (d != 1.f)
    for (Cell& c : result.cells) c.detection.box = {c.detection.box.x1 * d, c.detection.box.y1 * d, c.detection.box.x2 * d, c.detection.box.y2 * d};
  return result;
}

namespace {

// The tiles of one batch as read: an image per tile, or why it could not be read.
struct ReadBatch {
  std::vector<std::size_t> tiles;
  std::vector<cv::Mat> images;
  std::vector<std::string> errors;  // per tile: empty where it was read
};

// Batches handed from the reading thread to the detecting one; at most `capacity` wait, so reading runs
// ahead of detection by that much and no further (bounded memory).
class BatchQueue {
 public:
  explicit BatchQueue(std::size_t capacity) : capacity_(capacity) {}
  bool push(ReadBatch batch) {  // false once the consumer has stopped
    std::unique_lock<std::mutex> lock(mutex_);
    space_.wait(lock, [&] { return batches_.size() < capacity_ || stopped_; });
    if (stopped_) return false;
    batches_.push_back(std::move(batch));
    ready_.notify_one();
    return true;
  }
  std::optional<ReadBatch> pop() {  // empty once the producer is done and nothing is left
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait(lock, [&] { return !batches_.empty() || done_; });
    if (batches_.empty()) return std::nullopt;
    ReadBatch b = std::move(batches_.front());
    batches_.pop_front();
    space_.notify_one();
    return b;
  }
  void finish(std::exception_ptr error = nullptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = true;
    error_ = error;
    ready_.notify_all();
  }
  void stop() {
    std::lock_guard<std::mutex> lock(mutex_);
    stopped_ = true;
    space_.notify_all();
  }
  std::exception_ptr error() {
    std::lock_guard<std::mutex> lock(mutex_);
    return error_;
  }

 private:
  std::size_t capacity_;
  std::deque<ReadBatch> batches_;
  std::mutex mutex_;
  std::condition_variable ready_, space_;
  bool done_ = false, stopped_ = false;
  std::exception_ptr error_;
};

std::string tile_error(const SlidePlan& plan, std::size_t i, const std::string& why) {
  const cv::Rect& r = plan.tiles[i].region;
  return fmt::format("tile {} (x={} y={} {}x{}): {}", i, r.x, r.y, r.width, r.height, why);
}

}  // namespace

AnalysisResult Pipeline::analyze(const ImageSource& source, const SlideOptions& options) const {
  Stopwatch total, stage;
  const SlidePlan p = plan(source, options);
  const double planning_ms = stage.lap_ms();
  std::vector<std::vector<std::size_t>> batches;
  for (std::size_t i = 0; i < p.tiles.size(); ++i) {
    if (!p.run[i]) continue;
    if (batches.empty() || batches.back().size() == options.batch_tiles) batches.emplace_back();
    batches.back().push_back(i);
  }
  // One thread reads (and decodes) the next batches while this one detects.
  BatchQueue queue(2);
  std::thread reader([&] {
    try {
      for (const auto& tiles : batches) {
        ReadBatch b{tiles, {}, {}};
        for (const std::size_t i : tiles) {
          try {
            b.images.push_back(tile_pixels(source, p, i));
            b.errors.emplace_back();
          } catch (const ReadError& e) {
            b.images.emplace_back();
            b.errors.push_back(tile_error(p, i, e.what()));
          }
        }
        if (!queue.push(std::move(b))) break;
      }
      queue.finish();
    } catch (...) {
      queue.finish(std::current_exception());
    }
  });
  std::vector<std::vector<Detection>> per_tile(p.tiles.size());
  std::vector<std::string> tile_errors;
  try {
    while (auto b = queue.pop()) {
      std::vector<cv::Mat> images;
      std::vector<std::size_t> read;
      for (std::size_t k = 0; k < b->tiles.size(); ++k) {
        if (!b->errors[k].empty()) {
          tile_errors.push_back(b->errors[k]);
          continue;
        }
        images.push_back(b->images[k]);
        read.push_back(b->tiles[k]);
      }
      auto found = detect_images(images);
      for (std::size_t k = 0; k < read.size(); ++k) per_tile[read[k]] = std::move(found[k]);
    }
  } catch (...) {
    queue.stop();
    reader.join();
    throw;
  }
  reader.join();
  if (const std::exception_ptr error = queue.error()) std::rethrow_exception(error);
  const double detection_ms = stage.lap_ms();
  AnalysisResult result = finish(source, p, per_tile);
  result.slide->tile_errors = std::move(tile_errors);
  result.timings.tiling_ms = planning_ms;
  result.timings.detection_ms = detection_ms;
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

// A config is a few levels deep (json_checks.hpp).
constexpr int kMaxConfigDepth = 32;

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
    const nlohmann::json j = detail::parse_shallow(in, kMaxConfigDepth);
    if (!j.is_object()) throw std::runtime_error("the top level must be an object");
    check_keys(j, {"detector", "classifier", "tile", "overlap", "whole_image", "classify_labels", "device", "precision", "batch_size",
                   "threads", "optimize", "score_threshold", "merge", "stain_normalize", "stain_target", "stain_before_detection", "uncertain_below"}, "");
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
    // A whole number within the type's range (json_checks.hpp), or the fallback when absent.
    auto integer = [&](const char* key, auto fallback) {
      if (!j.contains(key)) return fallback;
      if (!detail::holds_integer<decltype(fallback)>(j.at(key)))
        throw std::runtime_error(fmt::format("{} must be whole numbers within the range of int", key));
      return j.at(key).get<decltype(fallback)>();
    };
    if (j.contains("tile")) {
      const auto t = integer("tile", std::vector<int>{});
      if (t.size() != 2) throw std::runtime_error("tile must be [width, height]");
      c.tile = cv::Size(t[0], t[1]);
    }
    c.overlap = j.value("overlap", c.overlap);
    c.whole_image = j.value("whole_image", c.whole_image);
    c.classify_labels = j.value("classify_labels", c.classify_labels);
    c.runtime.device = j.value("device", c.runtime.device);
    c.runtime.precision = j.value("precision", c.runtime.precision);
    c.runtime.batch_size = integer("batch_size", c.runtime.batch_size);
    c.runtime.threads = integer("threads", c.runtime.threads);
    c.runtime.optimize = j.value("optimize", c.runtime.optimize);
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
