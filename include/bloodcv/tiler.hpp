// Tiling for images larger than a detector's input (YOLT / SAHI style): cut overlapping tiles, detect
// each at full resolution, and map the boxes back (merging the duplicates that seams produce: merge.hpp).
#pragma once

#include <optional>
#include <vector>

#include <opencv2/core.hpp>

#include "bloodcv/box.hpp"

namespace bloodcv {

struct Tile {
  cv::Rect region;   // the part of the source image this tile covers, in image pixels
  cv::Mat image;     // a view of the source, or a padded copy when the image is smaller than the tile
  bool whole_image = false;  // the extra pass over the whole image, not a grid cell

  cv::Point offset() const { return region.tl(); }
};

class Tiler {
 public:
  virtual ~Tiler() = default;
  // The regions for an image of this size, row by row.
  virtual std::vector<Tile> plan(cv::Size image_size) const = 0;
  // The tiles of `image`, with `image` filled in: views where possible.
  virtual std::vector<Tile> tiles(const cv::Mat& image) const = 0;
};

struct GridTilerOptions {
  cv::Size tile_size{640, 640};
  double overlap_ratio = 0.15;              // of the tile size, in [0, 1)
  std::optional<int> overlap_pixels;        // overrides overlap_ratio when set
  bool whole_image_pass = false;            // add one tile with the whole image, as SAHI's standard pass
  cv::Scalar pad_value{114, 114, 114};      // fills tiles of images smaller than a tile (YOLO's letterbox grey)
};

// A regular grid of full-size tiles. Steps are tile - overlap; the last tile of a row or column is
// shifted inward to end at the image border, so no tile is cut short. An image smaller than a tile
// along an axis gives one tile along it, padded on the right or bottom (so the detector sees it at the
// tile's scale); tiles() refuses to pad an image to more than kMaxPaddedTilePixels, and plan() to make
// more than kMaxTiles tiles (a 150,000-pixel square slide in 640-pixel tiles makes 76,000).
class GridTiler final : public Tiler {
 public:
  static constexpr long long kMaxPaddedTilePixels = 1LL << 26;  // 8192 x 8192
  static constexpr long long kMaxTiles = 1'000'000;
  explicit GridTiler(GridTilerOptions options = {});
  std::vector<Tile> plan(cv::Size image_size) const override;
  std::vector<Tile> tiles(const cv::Mat& image) const override;
  const GridTilerOptions& options() const { return options_; }
  cv::Size overlap() const { return overlap_; }  // in pixels, per axis

 private:
  GridTilerOptions options_;
  cv::Size overlap_;
};

// Tile-local detections to image coordinates: shifted by the tile's offset, clipped to the image;
// boxes that lie wholly in a tile's padding, or keep no area once clipped, are dropped. An image size that
// is not positive, or a tile region that is empty or not inside the image, is refused (std::invalid_argument
// naming it), and so by every TileMerger.
std::vector<Detection> to_image_coordinates(std::vector<Detection> detections, const Tile& tile, cv::Size image_size);

}  // namespace bloodcv
