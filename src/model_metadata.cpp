#include "model_metadata.hpp"

#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "bloodcv/stain.hpp"
#include "json_checks.hpp"

namespace bloodcv::detail {

using json = nlohmann::json;

namespace {

// bloodcv.json is a few levels deep (the deepest: a stain target's vectors).
constexpr int kMaxMetadataDepth = 16;

template <class T>
T value_or(const json& object, const char* key, T fallback) {
  return object.contains(key) ? object.at(key).get<T>() : fallback;
}

// [width, height], both positive whole numbers within int.
cv::Size read_size(const ModelMetadata& m, const json& value, const char* key) {
  if (!holds_integer<std::vector<int>>(value)) fail_model(m.path, fmt::format("bloodcv.json: {} must be whole numbers within the range of int", key));
  const auto size = value.get<std::vector<int>>();
  if (size.size() != 2 || size[0] <= 0 || size[1] <= 0) fail_model(m.path, fmt::format("bloodcv.json: {} must be [width, height] > 0", key));
  return {size[0], size[1]};
}

InputSpec read_input(const ModelMetadata& m, const json& meta, const std::string& task) {
  InputSpec spec;
  spec.size = read_size(m, meta.at("input_size"), "input_size");
  const json input = meta.value("input", json::object());
  const std::string color = value_or<std::string>(input, "color", "rgb");
  if (color != "rgb" && color != "bgr") fail_model(m.path, fmt::format("bloodcv.json: input.color must be rgb or bgr, got '{}'", color));
  spec.rgb = color == "rgb";
  spec.scale = value_or<float>(input, "scale", 1.f / 255.f);
  spec.mean = value_or<std::array<float, 3>>(input, "mean", {0, 0, 0});
  spec.std = value_or<std::array<float, 3>>(input, "std", {1, 1, 1});
  for (const float s : spec.std)
    if (!(s > 0)) fail_model(m.path, fmt::format("bloodcv.json: input.std must be positive, got {}", s));
  const std::string resize = value_or<std::string>(input, "resize", task == "detection" ? "letterbox" : "stretch");
  if (resize != "letterbox" && resize != "stretch")
    fail_model(m.path, fmt::format("bloodcv.json: input.resize must be letterbox or stretch, got '{}'", resize));
  spec.letterbox = resize == "letterbox";
  spec.pad_value = value_or<float>(input, "pad_value", 114.f);
  return spec;
}

void read_detection(ModelMetadata& m, const json& meta) {
  if (!meta.contains("decoder") || !meta.at("decoder").is_object()) fail_model(m.path, "bloodcv.json: no decoder entry");
  m.decoder = meta.at("decoder");
  m.tile_size = meta.contains("tile_size") ? read_size(m, meta.at("tile_size"), "tile_size") : m.input.size;
  if (meta.contains("microns_per_pixel")) {
    const json& mpp = meta.at("microns_per_pixel");
    if (!mpp.is_number() || !(mpp.get<double>() > 0) || !std::isfinite(mpp.get<double>()))
      fail_model(m.path, "bloodcv.json: microns_per_pixel must be a positive number");
    m.microns_per_pixel = mpp.get<double>();
  }
}

// "stain": {"default": method, "reinhard": target, "macenko": target}: refused at load when malformed, so
// that a pipeline never meets it half-way through a run.
void check_stain(const ModelMetadata& m, const json& stain) {
  if (!stain.is_object()) fail_model(m.path, "bloodcv.json: stain must be an object");
  for (const auto& [key, value] : stain.items()) {
    if (key == "default") {
      if (!value.is_string() || (value != "none" && value != "reinhard" && value != "macenko"))
        fail_model(m.path, "bloodcv.json: stain.default must be none, reinhard or macenko");
      if (value != "none" && !stain.contains(value.get<std::string>()))
        fail_model(m.path, fmt::format("bloodcv.json: stain.default is {}, but stain.{} is missing", value.get<std::string>(),
                                       value.get<std::string>()));
      continue;
    }
    try {
      make_stain_normalizer(key, value.dump());
    } catch (const std::invalid_argument& e) {
      fail_model(m.path, fmt::format("bloodcv.json: stain.{}: {}", key, e.what()));
    }
  }
}

void read_classification(ModelMetadata& m, const json& meta) {
  m.crop_padding = value_or<float>(meta, "crop_padding", 0.1f);
  if (meta.contains("stain")) check_stain(m, meta.at("stain"));
  if (!meta.contains("calibration")) return;
  const json& c = meta.at("calibration");
  if (!c.is_object()) fail_model(m.path, "bloodcv.json: calibration must be an object");
  for (const auto& [key, value] : c.items())
    if (key != "temperature" && key != "uncertain_below" && key != "method" && key != "ece")
      fail_model(m.path, fmt::format("bloodcv.json: calibration.{} is not a known key", key));
  m.temperature = value_or<float>(c, "temperature", 1.f);
  m.uncertain_below = value_or<float>(c, "uncertain_below", 0.f);
  if (!(m.temperature > 0.f && std::isfinite(m.temperature)))
    fail_model(m.path, fmt::format("bloodcv.json: calibration.temperature must be positive, got {}", m.temperature));
  if (!(m.uncertain_below >= 0.f && m.uncertain_below <= 1.f))
    fail_model(m.path, fmt::format("bloodcv.json: calibration.uncertain_below must be in [0, 1], got {}", m.uncertain_below));
}

}  // namespace

void fail_model(const std::string& path, const std::string& what) { throw std::runtime_error(fmt::format("model file '{}': {}", path, what)); }

ModelMetadata read_model_metadata(const std::string& path, const std::string& metadata_json, const std::string& task) {
  ModelMetadata m;
  m.path = path;
  json meta;
  try {
    meta = parse_shallow(metadata_json, kMaxMetadataDepth);
  } catch (const json::exception& e) {
    fail_model(path, fmt::format("bloodcv.json: {}", e.what()));
  } catch (const std::runtime_error& e) {  // the depth limit
    fail_model(path, fmt::format("bloodcv.json: {}", e.what()));
  }
  if (!meta.is_object()) fail_model(path, "bloodcv.json: must be a JSON object");
  try {
    if (meta.value("format", "") != "bloodcv-model") fail_model(path, "bloodcv.json: format must be 'bloodcv-model'");
    const auto file_task = meta.at("task").get<std::string>();
    if (file_task != task) fail_model(path, fmt::format("bloodcv.json: task is '{}', but a {} model is needed", file_task, task));
    m.labels = meta.at("labels").get<std::vector<std::string>>();
    if (m.labels.empty()) fail_model(path, "bloodcv.json: labels is empty");
    m.input = read_input(m, meta, task);
    if (task == "detection") read_detection(m, meta);
    else read_classification(m, meta);
  } catch (const json::exception& e) {
    fail_model(path, fmt::format("bloodcv.json: {}", e.what()));
  }
  return m;
}

DecoderSetup decoder_for(const ModelMetadata& metadata, std::optional<float> score_threshold, std::optional<float> nms_iou_threshold) {
  json entry = metadata.decoder;
  if (score_threshold) entry["score_threshold"] = *score_threshold;
  if (nms_iou_threshold) {  // the caller's one threshold holds for every label
    entry["nms_iou_threshold"] = *nms_iou_threshold;
    entry.erase("nms_iou_threshold_by_label");
  }
  try {
    return make_decoder(entry.dump(), DecoderContext{metadata.labels.size(), metadata.input.size, metadata.labels});
  } catch (const std::invalid_argument& e) {
    fail_model(metadata.path, fmt::format("bloodcv.json: {}", e.what()));
  }
}

}  // namespace bloodcv::detail
