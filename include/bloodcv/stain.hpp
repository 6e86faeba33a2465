// Stain normalisation: smears from other laboratories, stains and microscopes are brought to the colours
// a classifier was trained on. Reinhard matches the mean and spread of each CIE Lab channel; Macenko
// estimates the two stain colours (haematoxylin-like purple, eosin-like pink) in optical density and
// re-renders each pixel's stain amounts with the target's stain colours, keeping what the two stains do
// not explain.
#pragma once

#include <array>
#include <memory>
#include <string>

#include <opencv2/core.hpp>

namespace bloodcv {

class StainNormalizer {
 public:
  virtual ~StainNormalizer() = default;
  // The image (8-bit BGR, image.hpp) in the target's colours: a new 8-bit BGR image of the same size.
  virtual cv::Mat normalize(const cv::Mat& image) const = 0;
};

// Per-channel statistics of an image in CIE Lab (L in [0, 100], a and b about [-127, 127]).
struct ReinhardTarget {
  std::array<double, 3> mean{}, std{};
};

class ReinhardNormalizer final : public StainNormalizer {
 public:
  explicit ReinhardNormalizer(ReinhardTarget target);  // std must be positive and finite
  static ReinhardTarget fit(const cv::Mat& image);    // the target of a reference image
  cv::Mat normalize(const cv::Mat& image) const override;
  const ReinhardTarget& target() const { return target_; }

 private:
  ReinhardTarget target_;
};

// Two unit stain vectors in optical density (RGB order; the first the more red-absorbing, haematoxylin-
// like one) and the 99th percentile of each stain's amount.
struct MacenkoTarget {
  std::array<std::array<double, 3>, 2> stains{};
  std::array<double, 2> max_concentrations{};
};

struct MacenkoOptions {
  double background = 240;       // Io: the intensity of unstained background
  double od_threshold = 0.15;    // pixels whose optical density (Euclidean norm) is below it are background
  double angle_percentile = 1;   // the stain directions: this and 100 - this percentile of the angles
  int min_stained_pixels = 100;  // fewer: no stain to estimate (fit throws, normalize returns a copy)
};

class MacenkoNormalizer final : public StainNormalizer {
 public:
  explicit MacenkoNormalizer(MacenkoTarget target, MacenkoOptions options = {});
  static MacenkoTarget fit(const cv::Mat& image, const MacenkoOptions& options = {});
  cv::Mat normalize(const cv::Mat& image) const override;
  const MacenkoTarget& target() const { return target_; }

 private:
  MacenkoTarget target_;
  MacenkoOptions options_;
};

// "reinhard" or "macenko" with its target as JSON ({"mean": [L, a, b], "std": [L, a, b]} or
// {"stains": [[r, g, b], [r, g, b]], "max_concentrations": [h, e]}), as model files carry it under
// "stain" (docs/model_format.md). Throws std::invalid_argument naming the method or the key.
std::shared_ptr<const StainNormalizer> make_stain_normalizer(const std::string& method, const std::string& target_json);
// The JSON a model file carries for `method`, fitted on `image`.
std::string fit_stain_target(const std::string& method, const cv::Mat& image);

}  // namespace bloodcv
