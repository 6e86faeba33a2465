// A model file's bloodcv.json (docs/model_format.md). Reading the archive needs LibTorch; its bloodcv.json
// is read by src/model_metadata.cpp, which this target calls as src/torchscript.cpp does at load: as a
// detector's (then its decoder built by decoder_for) and as a classifier's (stain entry and calibration
// checked). The decoder then decodes and suppresses a fixed output of the shape it expects, and each stain
// target the file holds normalises a small image.
#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bloodcv/decoder.hpp"
#include "bloodcv/nms.hpp"
#include "bloodcv/stain.hpp"
#include "model_metadata.hpp"

namespace {

using json = nlohmann::json;

// Outputs larger than this are not made: the decoder's parsing is the point, not a large decode (at 2^16
// values, 6,300 anchors of 684 pixels on a 320-pixel input, all overlapping, took 3 s to suppress under
// the sanitizers: NMS is quadratic in boxes that overlap, as torchvision's).
constexpr std::int64_t kMaxOutputValues = 1 << 13;

// A deterministic spread of values in [-scale, scale], or [0, scale] when non-negative: some scores above
// the thresholds, boxes of various sizes.
std::vector<float> pattern(std::int64_t n, float scale, bool non_negative) {
  std::vector<float> values(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = scale * std::sin(0.7f * static_cast<float>(i));
    values[static_cast<std::size_t>(i)] = non_negative ? std::abs(v) : v;
  }
  return values;
}

void decode_fixed_output(const bloodcv::DecoderSetup& setup, const json& entry, std::size_t num_classes) {
  const auto classes = static_cast<std::int64_t>(num_classes);
  std::vector<std::vector<float>> data;
  std::vector<std::vector<std::int64_t>> shapes;
  if (const auto* anchor = dynamic_cast<const bloodcv::AnchorDecoder*>(setup.decoder.get())) {
    const auto a = static_cast<std::int64_t>(anchor->anchors().size());
    if (a * (classes + 5) > kMaxOutputValues) return;
    shapes = {{a, classes}, {a, 4}};
    if (entry.value("iou_branch", false)) shapes.push_back({a});
    for (const auto& shape : shapes) data.push_back(pattern(shape[0] * (shape.size() > 1 ? shape[1] : 1), 4.f, false));
  } else {  // YOLOv5 rows: centre, positive size, objectness and class scores
    if (8 * (classes + 5) > kMaxOutputValues) return;
    shapes = {{8, 5 + classes}};
    data.push_back(pattern(8 * (5 + classes), 40.f, true));
    for (std::int64_t r = 0; r < 8; ++r)
      for (std::int64_t c = 4; c < 5 + classes; ++c) data[0][static_cast<std::size_t>(r * (5 + classes) + c)] /= 40.f;
  }
  std::vector<bloodcv::TensorView> outputs;
  for (std::size_t i = 0; i < shapes.size(); ++i) outputs.push_back({data[i].data(), shapes[i]});
  bloodcv::suppress(*setup.suppressor, setup.decoder->decode(outputs));
}

void normalize_sample(const bloodcv::StainNormalizer& normalizer) {
  cv::Mat image(16, 16, CV_8UC3);
  for (int y = 0; y < image.rows; ++y)
    for (int x = 0; x < image.cols; ++x) image.at<cv::Vec3b>(y, x) = cv::Vec3b(uchar(60 + 12 * x), uchar(40 + 9 * y), uchar(180 - 5 * x));
  normalizer.normalize(image);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const bloodcv::detail::ModelMetadata detector = bloodcv::detail::read_model_metadata("fuzz.pt", text, "detection");
    const bloodcv::DecoderSetup setup = bloodcv::detail::decoder_for(detector, std::nullopt, std::nullopt);
    decode_fixed_output(setup, detector.decoder, detector.labels.size());
  } catch (const std::runtime_error&) {  // every refusal of the reader and of decoder_for
  }
  try {  // a classifier's reader checks each stain target; those it accepts normalise a sample
    bloodcv::detail::read_model_metadata("fuzz.pt", text, "classification");
    const json stain = json::parse(text).value("stain", json::object());
    for (const auto& [method, target] : stain.items())
      if (method != "default") normalize_sample(*bloodcv::make_stain_normalizer(method, target.dump()));
  } catch (const std::runtime_error&) {
  }
  return 0;
}
