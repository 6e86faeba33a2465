// Classifiers: the cell inside each box → a type with probabilities. TorchScriptClassifier runs a
// bloodcv model file (docs/model_format.md); LibTorch stays out of this header.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "bloodcv/box.hpp"
#include "bloodcv/detector.hpp"

namespace bloodcv {

struct Classification {
  std::int64_t label = 0;           // index into the classifier's labels
  float score = 0;                  // probability of that label
  std::vector<float> probabilities; // one per label, summing to 1
};

class Classifier {
 public:
  virtual ~Classifier() = default;
  // One result per box of `image` (8-bit BGR, image coordinates).
  virtual std::vector<Classification> classify(const cv::Mat& image, const std::vector<Box>& boxes) const = 0;
  virtual std::vector<std::string> labels() const = 0;
  // The top probability below which the answer is not to be trusted: a pipeline types such a cell
  // "uncertain". 0: every answer counts.
  virtual float uncertainty_threshold() const { return 0.f; }
};

struct TorchScriptClassifierOptions {
  RuntimeOptions runtime;
  std::optional<float> crop_padding;  // overrides the model file's (fraction of the box size per side)
};

// Crops each box (clipped to the image) with context padding (outside the image: the model's pad value),
// resizes and normalises as the model file says, runs batches, and takes the softmax of the logits
// divided by the file's calibration temperature ("calibration": {"temperature", "uncertain_below"}).
// A box with no area inside the image is an error (std::invalid_argument naming its index).
// classify() may be called from several threads at once.
class TorchScriptClassifier final : public Classifier {
 public:
  explicit TorchScriptClassifier(const std::string& path, TorchScriptClassifierOptions options = {});
  ~TorchScriptClassifier() override;
  TorchScriptClassifier(TorchScriptClassifier&&) noexcept;
  TorchScriptClassifier& operator=(TorchScriptClassifier&&) noexcept;

  std::vector<Classification> classify(const cv::Mat& image, const std::vector<Box>& boxes) const override;
  std::vector<std::string> labels() const override;
  float uncertainty_threshold() const override;  // the file's calibration.uncertain_below, else 0
  float temperature() const;                     // the file's calibration.temperature, else 1
  cv::Size input_size() const;
  const std::string& metadata_json() const;
  bool optimized() const;  // RuntimeOptions::optimize was applied and kept (it runs on one thread)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bloodcv
