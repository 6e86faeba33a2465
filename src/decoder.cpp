#include "bloodcv/decoder.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <numeric>
#include <set>

#include <nlohmann/json.hpp>

#include "check.hpp"
#include "json_checks.hpp"

namespace bloodcv {

using detail::check_unit_interval;
using detail::fail_argument;

std::int64_t TensorView::numel() const {
  return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
}

std::string TensorView::shape_string() const {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

InputTransform letterbox_transform(cv::Size image, cv::Size input) {
  const double r = std::min(static_cast<double>(input.width) / image.width, static_cast<double>(input.height) / image.height);
  const int w = std::max(1, static_cast<int>(std::lround(image.width * r)));
  const int h = std::max(1, static_cast<int>(std::lround(image.height * r)));
  return {static_cast<float>(w) / static_cast<float>(image.width), static_cast<float>(h) / static_cast<float>(image.height),
          static_cast<float>((input.width - w) / 2), static_cast<float>((input.height - h) / 2)};
}

InputTransform stretch_transform(cv::Size image, cv::Size input) {
  return {static_cast<float>(input.width) / static_cast<float>(image.width),
          static_cast<float>(input.height) / static_cast<float>(image.height), 0.f, 0.f};
}

namespace {

void check_finite(const TensorView& t, const char* what) {
  const std::int64_t n = t.numel();
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(t.data[i])) {
      const std::int64_t cols = t.shape.size() > 1 ? t.shape.back() : 1;
      fail_argument("{} {} holds a non-finite value ({}) at row {}, column {}", what, t.shape_string(), t.data[i], i / cols, i % cols);
    }
}

float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

}  // namespace

// --- YOLOv5 ----------------------------------------------------------------------------------------
YoloV5Decoder::YoloV5Decoder(YoloV5DecoderOptions options) : options_(options) {
  if (options_.num_classes == 0) fail_argument("YOLOv5 decoder: num_classes must be >= 1");
  check_unit_interval(options_.score_threshold, "score_threshold");
}

std::vector<Detection> YoloV5Decoder::decode(const std::vector<TensorView>& outputs) const {
  const auto width = static_cast<std::int64_t>(5 + options_.num_classes);
  if (outputs.size() != 1)
    fail_argument("YOLOv5 decoder expects one output tensor per image, got {}", outputs.size());
  const TensorView& out = outputs[0];
  if (out.shape.size() != 2 || out.shape[1] != width)
    fail_argument("YOLOv5 decoder expects an output [N, {}] per image (5 + {} classes), got {}", width, options_.num_classes,
                  out.shape_string());
  check_finite(out, "YOLOv5 output");

  std::vector<Detection> candidates;
  for (std::int64_t r = 0; r < out.shape[0]; ++r) {
    const float* row = out.data + r * width;
    const float objectness = row[4];
    if (objectness < options_.score_threshold) continue;  // no class score can lift it above
    const Box box{row[0] - 0.5f * row[2], row[1] - 0.5f * row[3], row[0] + 0.5f * row[2], row[1] + 0.5f * row[3]};
    if (box.x2 < box.x1 || box.y2 < box.y1) continue;  // negative width or height: not a box
    auto add = [&](std::size_t c) {
      const float confidence = objectness * row[5 + c];
      if (confidence >= options_.score_threshold) candidates.push_back(Detection{box, confidence, static_cast<std::int64_t>(c)});
    };
    if (options_.multi_label) {
      for (std::size_t c = 0; c < options_.num_classes; ++c) add(c);
    } else {
      add(static_cast<std::size_t>(std::max_element(row + 5, row + width) - (row + 5)));
    }
  }
  return candidates;
}

// --- anchors ---------------------------------------------------------------------------------------
std::vector<Box> generate_anchors(const AnchorOptions& o, cv::Size input_size, std::vector<std::size_t>* per_level) {
  if (o.strides.empty() || o.strides.size() != o.sizes.size())
    fail_argument("anchors need one size per stride, got {} strides and {} sizes", o.strides.size(), o.sizes.size());
  if (o.aspect_ratios.empty() || o.scales.empty()) fail_argument("anchors need at least one aspect ratio and one scale");
  for (const float r : o.aspect_ratios)
    if (!(r > 0)) fail_argument("anchor aspect ratios must be positive, got {}", r);
  std::vector<Box> anchors;
  if (per_level) per_level->clear();
  for (std::size_t level = 0; level < o.strides.size(); ++level) {
    const int stride = o.strides[level];
    if (stride <= 0 || input_size.width % stride || input_size.height % stride)
      fail_argument("input size {}x{} must be a multiple of every stride, got stride {}", input_size.width, input_size.height, stride);
    std::vector<std::pair<float, float>> shapes;  // (w, h), ratio-major
    for (const float ratio : o.aspect_ratios)
      for (const float scale : o.scales) {
        const float h_ratio = std::sqrt(ratio);
        shapes.emplace_back(o.sizes[level] * scale / h_ratio, o.sizes[level] * scale * h_ratio);
      }
    const int gw = input_size.width / stride, gh = input_size.height / stride;
    for (int y = 0; y < gh; ++y)
      for (int x = 0; x < gw; ++x) {
        const float cx = (static_cast<float>(x) + o.center_offset) * static_cast<float>(stride);
        const float cy = (static_cast<float>(y) + o.center_offset) * static_cast<float>(stride);
        for (const auto& [w, h] : shapes) anchors.push_back({cx - 0.5f * w, cy - 0.5f * h, cx + 0.5f * w, cy + 0.5f * h});
      }
    if (per_level) per_level->push_back(static_cast<std::size_t>(gw) * static_cast<std::size_t>(gh) * shapes.size());
  }
  return anchors;
}

AnchorDecoder::AnchorDecoder(AnchorDecoderOptions options, cv::Size input_size) : options_(std::move(options)) {
  if (options_.num_classes == 0) fail_argument("anchor decoder: num_classes must be >= 1");
  check_unit_interval(options_.score_threshold, "score_threshold");
  for (int i = 0; i < 4; ++i)
    if (!(options_.box_stds[static_cast<std::size_t>(i)] > 0)) fail_argument("box_stds must be positive, got {}", options_.box_stds[static_cast<std::size_t>(i)]);
  anchors_ = generate_anchors(options_.anchors, input_size, &per_level_);
}

std::vector<Detection> AnchorDecoder::decode(const std::vector<TensorView>& outputs) const {
  const std::size_t expected = options_.iou_branch ? 3 : 2;
  if (outputs.size() != expected)
    fail_argument("anchor decoder expects {} outputs per image (class logits, box deltas{}), got {}", expected,
                  options_.iou_branch ? ", IoU logits" : "", outputs.size());
  const auto a = static_cast<std::int64_t>(anchors_.size());
  const auto c = static_cast<std::int64_t>(options_.num_classes);
  const TensorView& logits = outputs[0];
  const TensorView& deltas = outputs[1];
  if (logits.shape != std::vector<std::int64_t>{a, c})
    fail_argument("class logits must be [{}, {}] ({} anchors, {} classes), got {}", a, c, a, c, logits.shape_string());
  if (deltas.shape != std::vector<std::int64_t>{a, 4})
    fail_argument("box deltas must be [{}, 4] ({} anchors), got {}", a, a, deltas.shape_string());
  check_finite(logits, "class logits");
  check_finite(deltas, "box deltas");
  const float* iou_logits = nullptr;
  if (options_.iou_branch) {
    const TensorView& ious = outputs[2];
    if (ious.shape != std::vector<std::int64_t>{a} && ious.shape != std::vector<std::int64_t>{a, 1})
      fail_argument("IoU logits must be [{}] or [{}, 1], got {}", a, a, ious.shape_string());
    check_finite(ious, "IoU logits");
    iou_logits = ious.data;
  }

  const float max_dwh = std::log(1000.f / 16.f);
  const auto& mean = options_.box_means;
  const auto& std_ = options_.box_stds;
  std::vector<Detection> candidates;
  std::size_t first = 0;
  for (const std::size_t count : per_level_) {
    // (score, flat index anchor * C + class) above the threshold, the top k of this level.
    std::vector<std::pair<float, std::int64_t>> level;
    for (std::int64_t i = static_cast<std::int64_t>(first) * c; i < static_cast<std::int64_t>(first + count) * c; ++i)
      if (const float s = sigmoid(logits.data[i]); s > options_.score_threshold) level.emplace_back(s, i);
    const std::size_t k = std::min(level.size(), options_.pre_nms_top_k);
    std::partial_sort(level.begin(), level.begin() + static_cast<std::ptrdiff_t>(k), level.end(),
                      [](const auto& x, const auto& y) { return x.first > y.first || (x.first == y.first && x.second < y.second); });
    for (std::size_t j = 0; j < k; ++j) {
      const std::int64_t anchor = level[j].second / c;
      const Box& an = anchors_[static_cast<std::size_t>(anchor)];
      const float* d = deltas.data + anchor * 4;
      const float aw = an.width(), ah = an.height();
      const float cx = an.center_x() + (d[0] * std_[0] + mean[0]) * aw;
      const float cy = an.center_y() + (d[1] * std_[1] + mean[1]) * ah;
      const float w = aw * std::exp(std::min(d[2] * std_[2] + mean[2], max_dwh));
      const float h = ah * std::exp(std::min(d[3] * std_[3] + mean[3], max_dwh));
      Detection det{{cx - 0.5f * w, cy - 0.5f * h, cx + 0.5f * w, cy + 0.5f * h}, level[j].first, level[j].second % c};
      if (iou_logits) det.predicted_iou = sigmoid(iou_logits[anchor]);
      candidates.push_back(std::move(det));
    }
    first += count;
  }
  return candidates;
}

// --- the registry --------------------------------------------------------------------------------------
namespace {

using json = nlohmann::json;

// The entry's keys, each read at most once; anything left is a misspelling or another kind's key.
class Entry {
 public:
  Entry(const json& j, std::string kind) : j_(j), kind_(std::move(kind)) {}
  template <class T>
  T get(const char* key, T fallback) {
    read_.insert(key);
    if (!j_.contains(key)) return fallback;
    if (!detail::holds_integer<T>(j_.at(key)))
      fail_argument("decoder '{}': {} must be whole numbers within the range of the type it is read into", kind_, key);
    try {
      return j_.at(key).get<T>();
    } catch (const json::exception& e) {
      fail_argument("decoder '{}': {}: {}", kind_, key, e.what());
    }
  }
  void check_all_read() const {
    for (const auto& item : j_.items())
      if (item.key() != "kind" && !read_.count(item.key())) fail_argument("decoder '{}': unknown key '{}'", kind_, item.key());
  }

 private:
  const json& j_;
  std::string kind_;
  std::set<std::string> read_;
};

HardNmsOptions hard_nms_of(Entry& e, double iou_threshold, const DecoderContext& context) {
  HardNmsOptions nms;
  nms.iou_threshold = e.get<double>("nms_iou_threshold", iou_threshold);
  nms.max_detections = e.get<std::int64_t>("max_detections", 3000);
  // {"WBC": 0.3}: a label's own threshold, by name so that the entry reads as the model's labels do.
  const auto by_label = e.get<std::map<std::string, double>>("nms_iou_threshold_by_label", {});
  if (!by_label.empty()) nms.class_iou_thresholds.assign(context.labels.size(), nms.iou_threshold);
  for (const auto& [label, threshold] : by_label) {
    const auto at = std::find(context.labels.begin(), context.labels.end(), label);
    if (at == context.labels.end())
      fail_argument("decoder: nms_iou_threshold_by_label names '{}', which is not one of the model's labels", label);
    check_unit_interval(threshold, fmt::format("nms_iou_threshold_by_label['{}']", label));
    nms.class_iou_thresholds[static_cast<std::size_t>(at - context.labels.begin())] = threshold;
  }
  return nms;
}

DecoderSetup yolov5_setup(const std::string& text, const DecoderContext& context) {
  const json j = json::parse(text);
  Entry e(j, "yolov5");
  YoloV5DecoderOptions o;
  o.num_classes = context.num_classes;
  o.score_threshold = e.get<float>("score_threshold", o.score_threshold);
  o.multi_label = e.get<bool>("multi_label", o.multi_label);
  const HardNmsOptions nms = hard_nms_of(e, 0.45, context);
  e.check_all_read();
  return {std::make_unique<YoloV5Decoder>(o), std::make_shared<HardNms>(nms)};
}

DecoderSetup anchor_setup(const std::string& text, const DecoderContext& context) {
  const json j = json::parse(text);
  Entry e(j, "anchor");
  AnchorDecoderOptions o;
  o.num_classes = context.num_classes;
  o.anchors.strides = e.get("strides", o.anchors.strides);
  o.anchors.sizes = e.get("sizes", o.anchors.sizes);
  o.anchors.aspect_ratios = e.get("aspect_ratios", o.anchors.aspect_ratios);
  o.anchors.scales = e.get("scales", o.anchors.scales);
  o.anchors.center_offset = e.get("center_offset", o.anchors.center_offset);
  o.box_means = e.get("box_means", o.box_means);
  o.box_stds = e.get("box_stds", o.box_stds);
  o.score_threshold = e.get("score_threshold", o.score_threshold);
  o.pre_nms_top_k = e.get("pre_nms_top_k", o.pre_nms_top_k);
  o.iou_branch = e.get("iou_branch", o.iou_branch);
  const HardNmsOptions nms = hard_nms_of(e, 0.5, context);
  const float alpha = e.get<float>("iou_alpha", 0.5f);
  e.check_all_read();
  std::shared_ptr<const Suppressor> suppressor;
  if (o.iou_branch)
    suppressor = std::make_shared<IouAwareNms>(IouAwareNmsOptions{alpha, nms});
  else
    suppressor = std::make_shared<HardNms>(nms);
  return {std::make_unique<AnchorDecoder>(o, context.input_size), std::move(suppressor)};
}

struct Registry {
  std::mutex mutex;
  std::map<std::string, DecoderFactory> factories{{"yolov5", yolov5_setup}, {"anchor", anchor_setup}};
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void register_decoder(const std::string& kind, DecoderFactory factory) {
  if (kind.empty() || !factory) fail_argument("register_decoder needs a kind and a factory");
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mutex);
  r.factories[kind] = std::move(factory);
}

std::vector<std::string> decoder_kinds() {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> kinds;
  for (const auto& [kind, factory] : r.factories) kinds.push_back(kind);
  return kinds;
}

DecoderSetup make_decoder(const std::string& decoder_json, const DecoderContext& context) {
  json j;
  try {
    j = json::parse(decoder_json);
  } catch (const json::exception& e) {
    fail_argument("decoder entry is not valid JSON: {}", e.what());
  }
  if (!j.is_object() || !j.contains("kind") || !j.at("kind").is_string()) fail_argument("decoder entry needs a \"kind\"");
  const std::string kind = j.at("kind").get<std::string>();
  DecoderFactory factory;
  {
    Registry& r = registry();
    const std::lock_guard<std::mutex> lock(r.mutex);
    const auto it = r.factories.find(kind);
    if (it == r.factories.end()) {
      std::string known;
      for (const auto& [k, f] : r.factories) known += (known.empty() ? "" : ", ") + k;
      fail_argument("decoder.kind must be one of {}, got '{}'", known, kind);
    }
    factory = it->second;
  }
  DecoderSetup setup = factory(decoder_json, context);
  if (!setup.decoder || !setup.suppressor) fail_argument("decoder '{}': its factory made no decoder or no suppressor", kind);
  return setup;
}

}  // namespace bloodcv
