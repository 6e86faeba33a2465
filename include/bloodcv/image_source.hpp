// Where pixels come from: an image in memory, or a whole slide read region by region through OpenSlide
// (pyramidal TIFF, SVS, NDPI, MRXS, ...), so that a slide of 100,000 pixels a side is never held whole.
#pragma once

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace bloodcv {

// Pixels of a source that could not be read (a corrupt tile, a lost file): the analysis of a slide
// reports the tile and goes on with the others.
class ReadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SourceLevel {
  cv::Size size;          // pixels at this level
  double downsample = 1;  // level-0 pixels per pixel of this level
};

class ImageSource {
 public:
  virtual ~ImageSource() = default;
  // The resolution levels, finest first (level 0: full resolution).
  virtual std::vector<SourceLevel> levels() const = 0;
  // Microns per level-0 pixel, where the file says; unset otherwise.
  virtual std::optional<double> microns_per_pixel() const { return std::nullopt; }
  // The pixels of `region` (in that level's pixels, inside it) as an 8-bit BGR image of region.size().
  // Throws std::out_of_range for a level or region outside the source, ReadError when the pixels cannot
  // be read (a corrupt tile), naming the source, level and region.
  virtual cv::Mat read(const cv::Rect& region, int level) const = 0;
  // How messages name the source (its path).
  virtual std::string name() const = 0;

  cv::Size size() const;  // level 0's
  // The coarsest level whose downsample is at most `downsample` (level 0 when none is coarser).
  int level_for_downsample(double downsample) const;
};

// Throws std::out_of_range unless 0 <= level < levels and region lies inside that level.
void check_region(const ImageSource& source, const cv::Rect& region, int level);

// One image in memory (any type to_bgr8 accepts), one level.
class MatImageSource final : public ImageSource {
 public:
  explicit MatImageSource(const cv::Mat& image, std::string name = "image", std::optional<double> microns_per_pixel = std::nullopt);
  std::vector<SourceLevel> levels() const override;
  std::optional<double> microns_per_pixel() const override { return mpp_; }
  cv::Mat read(const cv::Rect& region, int level) const override;
  std::string name() const override { return name_; }
  const cv::Mat& image() const { return image_; }

 private:
  cv::Mat image_;
  std::string name_;
  std::optional<double> mpp_;
};

// A slide through OpenSlide's C library. Microns per pixel from its openslide.mpp-x property. Reads may
// come from several threads at once (OpenSlide allows it). Transparent pixels (outside the scanned area)
// read as white, as background.
class OpenSlideSource final : public ImageSource {
 public:
  explicit OpenSlideSource(const std::string& path);  // std::runtime_error naming the path if OpenSlide cannot open it
  ~OpenSlideSource() override;
  OpenSlideSource(const OpenSlideSource&) = delete;
  OpenSlideSource& operator=(const OpenSlideSource&) = delete;

  std::vector<SourceLevel> levels() const override;
  std::optional<double> microns_per_pixel() const override;
  cv::Mat read(const cv::Rect& region, int level) const override;
  std::string name() const override;
  std::string vendor() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The whole source at most max_side pixels a side (and at least `at_least` level-0 pixels per pixel), read
// from the coarsest sufficient level in strips, so that a slide without a coarse level is never held whole.
// *downsample receives the level-0 pixels per overview pixel. Parts that cannot be read are black.
cv::Mat read_overview(const ImageSource& source, int max_side, double at_least = 1, double* downsample = nullptr);

// True when OpenSlide recognises the file as a slide it can read (a pyramidal or tiled TIFF included).
bool is_slide(const std::string& path);
// A slide (OpenSlideSource) when is_slide(path), else the image read whole (MatImageSource).
std::unique_ptr<ImageSource> open_image_source(const std::string& path);

// Where the stained cells are: 255 where a pixel is coloured (HSV saturation above the threshold) or dark
// (grey level below it), gaps closed by a morphological closing; 0 for background. `image` is a
// low-resolution view of the whole slide. No opening: at that resolution a cell may be one pixel, and a
// speck of dust only costs one tile's detection.
struct TissueMaskOptions {
  double min_saturation = 25;    // 0-255: smear and stain are coloured, glass and blank canvas grey or white
  double max_grey = 200;         // 0-255: darker than this is tissue too (dense, desaturated regions)
  int close_radius = 1;          // pixels of the mask image
};
cv::Mat tissue_mask(const cv::Mat& bgr, const TissueMaskOptions& options = {});

}  // namespace bloodcv
