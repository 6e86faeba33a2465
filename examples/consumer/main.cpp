// Tiles a synthetic 1000x700 image, lets a stand-in detector report the visible part of two cells in
// every tile, and merges the seam duplicates: exactly the two cells must come out. Exits 1 otherwise.
#include <cstdio>

#include <bloodcv/bloodcv.hpp>

int main() {
  const cv::Mat image(700, 1000, CV_8UC3, cv::Scalar(200, 180, 220));
  bloodcv::GridTilerOptions options;
  options.tile_size = {400, 400};  // 15 % overlap: 60 px
  const bloodcv::GridTiler tiler(options);
  const std::vector<bloodcv::Tile> tiles = tiler.tiles(image);

  const std::vector<bloodcv::Box> cells{{330, 100, 380, 150}, {580, 320, 630, 370}};  // both on seams
  std::vector<std::vector<bloodcv::Detection>> per_tile;
  for (const bloodcv::Tile& tile : tiles) {
    std::vector<bloodcv::Detection> found;
    const cv::Rect& r = tile.region;
    for (const bloodcv::Box& c : cells) {
      const bloodcv::Box local = bloodcv::clip_box({c.x1 - r.x, c.y1 - r.y, c.x2 - r.x, c.y2 - r.y}, float(r.width), float(r.height));
      if (local.area() > 0) found.push_back({local, local.area() / c.area(), 0});
    }
    per_tile.push_back(found);
  }
  const auto merged = bloodcv::SeamMerger().merge(per_tile, tiles, image.size());
  std::printf("bloodcv %s: %zu tiles, %zu cells after merging\n", bloodcv::kVersion, tiles.size(), merged.size());
  for (const auto& d : merged) std::printf("  (%.0f, %.0f, %.0f, %.0f) score %.2f\n", d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.score);
  return merged.size() == cells.size() ? 0 : 1;
}
