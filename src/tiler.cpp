#include "bloodcv/tiler.hpp"

#include <cstdint>

#include <opencv2/core.hpp>

#include "check.hpp"

namespace bloodcv {

using detail::fail_argument;

namespace {

// How many tiles cover one axis: steps of tile - overlap, the last one moved back to end at the border.
// In 64 bits: a tile near INT_MAX would overflow the position.
long long tile_count(int length, int tile, int overlap) {
  if (length <= tile) return 1;
  const long long step = tile - overlap;
  return (static_cast<long long>(length) - tile + step - 1) / step + 1;
}

std::vector<int> tile_starts(int length, int tile, int overlap) {
  const long long n = tile_count(length, tile, overlap);
  std::vector<int> starts(static_cast<std::size_t>(n));
  for (long long k = 0; k + 1 < n; ++k) starts[static_cast<std::size_t>(k)] = static_cast<int>(k * (tile - overlap));
  starts.back() = std::max(0, length - tile);
  return starts;
}

}  // namespace

GridTiler::GridTiler(GridTilerOptions options) : options_(options) {
  const cv::Size t = options_.tile_size;
  if (t.width <= 0 || t.height <= 0) fail_argument("tile_size must be positive, got {}x{}", t.width, t.height);
  if (options_.overlap_pixels) {
    const int px = *options_.overlap_pixels;
    if (px < 0 || px >= std::min(t.width, t.height))
      fail_argument("overlap_pixels must be in [0, {}) for tile_size {}x{}, got {}", std::min(t.width, t.height), t.width,
                    t.height, px);
    overlap_ = {px, px};
  } else {
    const double r = options_.overlap_ratio;
    if (!(r >= 0.0 && r < 1.0)) fail_argument("overlap_ratio must be in [0, 1), got {}", r);
    // Rounded down, and always leaving a step of at least one pixel.
    overlap_ = {std::min(static_cast<int>(r * t.width), t.width - 1), std::min(static_cast<int>(r * t.height), t.height - 1)};
  }
}

std::vector<Tile> GridTiler::plan(cv::Size image_size) const {
  if (image_size.width <= 0 || image_size.height <= 0)
    fail_argument("image size must be positive, got {}x{}", image_size.width, image_size.height);
  const cv::Size t = options_.tile_size;
  const long long count = tile_count(image_size.width, t.width, overlap_.width) * tile_count(image_size.height, t.height, overlap_.height);
  if (count > kMaxTiles)
    fail_argument("a {}x{} image in tiles of {}x{} with {}x{} pixels of overlap makes {} tiles (at most {}): use larger tiles", image_size.width,
                  image_size.height, t.width, t.height, overlap_.width, overlap_.height, count, kMaxTiles);
  const auto xs = tile_starts(image_size.width, t.width, overlap_.width);
  const auto ys = tile_starts(image_size.height, t.height, overlap_.height);
  std::vector<Tile> tiles;
  tiles.reserve(xs.size() * ys.size() + 1);
  for (const int y : ys)
    for (const int x : xs)
      tiles.push_back(Tile{cv::Rect(x, y, std::min(t.width, image_size.width), std::min(t.height, image_size.height)), {}, false});
  if (options_.whole_image_pass && tiles.size() > 1) tiles.push_back(Tile{cv::Rect({0, 0}, image_size), {}, true});
  return tiles;
}

std::vector<Tile> GridTiler::tiles(const cv::Mat& image) const {
  if (image.empty()) fail_argument("image is empty ({}x{})", image.cols, image.rows);
  if (image.dims != 2) fail_argument("image must be 2-D (rows x cols x channels), got {} dimensions", image.dims);
  std::vector<Tile> tiles = plan(image.size());
  const cv::Size t = options_.tile_size;
  // Padding keeps a small image at the detector's scale; a tile far larger than the image would only
  // fill memory with padding (a 100000-pixel tile on a 640x480 image asks for 30 GB).
  const bool padded = t.width > image.cols || t.height > image.rows;
  if (padded && static_cast<long long>(t.width) * t.height > kMaxPaddedTilePixels)
    fail_argument("tile_size {}x{} is larger than the {}x{} image and would pad it to {} pixels (at most {}): use a tile size near the "
                  "detector's tile_size()",
                  t.width, t.height, image.cols, image.rows, static_cast<long long>(t.width) * t.height, kMaxPaddedTilePixels);
  for (Tile& tile : tiles) {
    tile.image = image(tile.region);
    const int pad_right = t.width - tile.region.width, pad_bottom = t.height - tile.region.height;
    if (!tile.whole_image && (pad_right > 0 || pad_bottom > 0)) {
      cv::Mat padded;
      cv::copyMakeBorder(tile.image, padded, 0, pad_bottom, 0, pad_right, cv::BORDER_CONSTANT, options_.pad_value);
      tile.image = padded;
    }
  }
  return tiles;
}

std::vector<Detection> to_image_coordinates(std::vector<Detection> detections, const Tile& tile, cv::Size image_size) {
  // Clipping to an empty or negative extent would drop every box without a word.
  if (image_size.width <= 0 || image_size.height <= 0)
    fail_argument("image_size must be positive, got {}x{}", image_size.width, image_size.height);
  const cv::Rect& r = tile.region;
  // A tile is a part of the image; the mergers compute with its corners, which must not overflow an int.
  if (r.x < 0 || r.y < 0 || r.width <= 0 || r.height <= 0 || std::int64_t{r.x} + r.width > image_size.width ||
      std::int64_t{r.y} + r.height > image_size.height)
    fail_argument("tile region {}x{} at ({}, {}) is not inside the {}x{} image", r.width, r.height, r.x, r.y, image_size.width,
                  image_size.height);
  std::vector<Detection> out;
  out.reserve(detections.size());
  for (Detection& d : detections) {
    if (d.box.x1 >= static_cast<float>(r.width) || d.box.y1 >= static_cast<float>(r.height)) continue;  // in padding
    const Box shifted{d.box.x1 + static_cast<float>(r.x), d.box.y1 + static_cast<float>(r.y), d.box.x2 + static_cast<float>(r.x),
                      d.box.y2 + static_cast<float>(r.y)};
    d.box = clip_box(shifted, static_cast<float>(image_size.width), static_cast<float>(image_size.height));
    if (d.box.width() <= 0.f || d.box.height() <= 0.f) continue;  // outside the image: nothing to count or crop
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace bloodcv
