// Detectors: a batch of images in, the cells in each out. TorchScriptDetector runs a bloodcv model file
// (docs/model_format.md) through LibTorch; LibTorch stays out of this header.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "bloodcv/box.hpp"
#include "bloodcv/nms.hpp"

namespace bloodcv {

class Detector {
 public:
  virtual ~Detector() = default;
  // One vector of detections per image, boxes in that image's pixels. Images are 8-bit BGR (image.hpp);
  // they may differ in size.
  virtual std::vector<std::vector<Detection>> detect(const std::vector<cv::Mat>& images) const = 0;
  // Names of the labels that detections carry, by label index.
  virtual std::vector<std::string> labels() const = 0;
  // The size of the images the model takes.
  virtual cv::Size input_size() const = 0;
  // The image area one input should cover, in image pixels: the scale the detector was trained at
  // (a model trained on 640-pixel fields letterboxed to 320 wants 640-pixel tiles). The default tiler
  // of a pipeline uses it. By default the input size: tiles seen at full resolution.
  virtual cv::Size tile_size() const { return input_size(); }
  // Microns per pixel of the images the detector was trained on, where known: a slide is then read at
  // that scale. Unset by default.
  virtual std::optional<double> microns_per_pixel() const { return std::nullopt; }
};

// How a TorchScript model runs.
struct RuntimeOptions {
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N"
  // Arithmetic of the forward pass: "float32"; "float16" (CUDA only); "bfloat16" (CPU or CUDA: on CPUs with
  // AVX512-BF16/AMX the detector runs about 1.8x faster than optimised float32; elsewhere it is emulated).
  std::string precision = "float32";
  int batch_size = 8;          // images per forward pass
  // LibTorch's intra-op threads, which are process-wide: 0 leaves them as they are (the CLI asks for every
  // core); N sets them when the model loads.
  int threads = 0;
  // On the CPU in float32, freeze the module and apply LibTorch's inference optimisations
  // (optimize_for_inference) at load, kept only when its outputs on a test input equal the original's to
  // 1e-4. It runs when LibTorch has one intra-op thread; on several the module as loaded is faster.
  bool optimize = true;
};

struct TorchScriptDetectorOptions {
  RuntimeOptions runtime;
  std::optional<float> score_threshold;     // overrides the model file's
  std::optional<double> nms_iou_threshold;  // overrides the model file's, its per-label ones too
  std::shared_ptr<const Suppressor> suppressor;  // replaces the suppression the model file's decoder entry says
};

// Loads a bloodcv detection model: TorchScript with its description (labels, input size,
// preprocessing, decoder) inside. Each image's outputs are decoded into candidates (decoder.hpp's
// registry, by the file's decoder.kind) and suppressed. detect() may be called from several threads at once.
class TorchScriptDetector final : public Detector {
 public:
  explicit TorchScriptDetector(const std::string& path, TorchScriptDetectorOptions options = {});
  ~TorchScriptDetector() override;
  TorchScriptDetector(TorchScriptDetector&&) noexcept;
  TorchScriptDetector& operator=(TorchScriptDetector&&) noexcept;

  std::vector<std::vector<Detection>> detect(const std::vector<cv::Mat>& images) const override;
  std::vector<std::string> labels() const override;
  cv::Size input_size() const override;
  cv::Size tile_size() const override;       // the model file's "tile_size", else its input size
  std::optional<double> microns_per_pixel() const override;  // the model file's "microns_per_pixel", if any
  const std::string& metadata_json() const;  // the model file's bloodcv.json
  bool optimized() const;  // RuntimeOptions::optimize was applied and kept (it runs on one thread)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bloodcv
