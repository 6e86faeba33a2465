// A model file's bloodcv.json (docs/model_format.md), read and checked without LibTorch: src/torchscript.cpp
// loads the archive and hands its bloodcv.json here, and the fuzz target fuzz_model_metadata feeds this
// reader arbitrary files. Every failure is std::runtime_error("model file '<path>': bloodcv.json: …").
#pragma once

#include <array>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include "bloodcv/decoder.hpp"

namespace bloodcv::detail {

// How the model wants its input tensor ("input").
struct InputSpec {
  cv::Size size;
  bool rgb = true;
  float scale = 1.f / 255.f;
  std::array<float, 3> mean{0, 0, 0}, std{1, 1, 1};
  bool letterbox = true;
  float pad_value = 114.f;

  InputTransform transform_for(cv::Size image) const {
    return letterbox ? letterbox_transform(image, size) : stretch_transform(image, size);
  }
};

struct ModelMetadata {
  std::string path;  // the model file, for messages
  std::vector<std::string> labels;
  InputSpec input;
  // Detectors: the image area one input covers (default: the input size), the training images' scale, and
  // the decoder entry as written (thresholds are the detector options' to replace: decoder_for).
  cv::Size tile_size;
  std::optional<double> microns_per_pixel;
  nlohmann::json decoder;
  // Classifiers: context around a box, calibration, and the stain entry (checked here, used by pipelines).
  float crop_padding = 0.1f;
  float temperature = 1.f;      // logits are divided by it before the softmax
  float uncertain_below = 0.f;  // top probabilities below it are not to be trusted
};

[[noreturn]] void fail_model(const std::string& path, const std::string& what);

// Reads and checks the bloodcv.json of a model for `task` ("detection" or "classification"). A detector's
// decoder entry is only checked to be an object here: decoder_for builds it, and the detector does so at load.
ModelMetadata read_model_metadata(const std::string& path, const std::string& metadata_json, const std::string& task);

// The detector's decoder and suppressor, with the given thresholds in place of the file's when set.
DecoderSetup decoder_for(const ModelMetadata& metadata, std::optional<float> score_threshold, std::optional<float> nms_iou_threshold);

}  // namespace bloodcv::detail
