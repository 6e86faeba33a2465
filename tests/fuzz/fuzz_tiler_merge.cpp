// GridTiler plans and tiles, and every tile merger (merge.hpp) on boxes, scores, labels and sizes decoded
// from the bytes: the tiles a GridTiler plans, or arbitrary regions as a Python caller of
// merge_tile_detections may pass, and an image size that may not match them. Tile-local boxes may be
// NaN, infinite, inverted or far outside their tile. A merged box outside the image aborts, like a crash.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <vector>

#include <fuzzer/FuzzedDataProvider.h>

#include "bloodcv/merge.hpp"
#include "bloodcv/tiler.hpp"

namespace {

using namespace bloodcv;

// Tiles given detections, and detections per tile: a bound on the work of one input, not on its shape.
constexpr std::size_t kMaxTilesWithDetections = 64;
constexpr int kMaxDetectionsPerTile = 32;
constexpr int kMaxImageSideForPixels = 512;  // tiles() is run on a real image up to this size

int side(FuzzedDataProvider& in) {
  // Mostly field-of-view sizes; sometimes anything, the int range's ends included.
  return in.ConsumeBool() ? in.ConsumeIntegralInRange(-2, 2048) : in.ConsumeIntegral<int>();
}

float coordinate(FuzzedDataProvider& in) {
  return in.ConsumeBool() ? static_cast<float>(in.ConsumeIntegralInRange(-64, 2200)) : in.ConsumeFloatingPoint<float>();
}

std::shared_ptr<const TileMerger> merger(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 5)) {
    case 0: return make_merger("nmm");
    case 1: return make_merger("nms");
    case 2: return make_merger("wbf");
    case 3: return make_merger("soft-nms");
    default: {
      SeamMergeOptions seam;
      seam.match_threshold = in.ConsumeBool() ? in.ConsumeProbability<double>() : in.ConsumeFloatingPoint<double>();
      seam.metric = in.PickValueInArray({BoxMetric::IoU, BoxMetric::IoS, BoxMetric::GIoU, BoxMetric::DIoU});
      seam.class_aware = in.ConsumeBool();
      return std::make_shared<SeamMerger>(seam);
    }
  }
}

void fuzz_one(FuzzedDataProvider& in) {
  GridTilerOptions options;
  options.tile_size = {side(in), side(in)};
  if (in.ConsumeBool()) options.overlap_pixels = side(in);
  else options.overlap_ratio = in.ConsumeBool() ? in.ConsumeProbability<double>() : in.ConsumeFloatingPoint<double>();
  options.whole_image_pass = in.ConsumeBool();
  const GridTiler tiler(options);
  cv::Size image_size{side(in), side(in)};

  std::vector<Tile> tiles;
  if (in.ConsumeBool() && image_size.width > 0 && image_size.height > 0 && image_size.width <= kMaxImageSideForPixels &&
      image_size.height <= kMaxImageSideForPixels) {
    tiles = tiler.tiles(cv::Mat(image_size, CV_8UC3, cv::Scalar(180, 140, 200)));
  } else if (in.ConsumeBool()) {
    tiles = tiler.plan(image_size);
  } else {  // arbitrary regions, as merge_tile_detections takes them
    tiles.resize(in.ConsumeIntegralInRange<std::size_t>(0, 8));
    for (Tile& tile : tiles) tile.region = {side(in), side(in), side(in), side(in)};
  }
  if (in.ConsumeBool()) image_size = {side(in), side(in)};  // not the size the tiles were made for

  std::vector<std::vector<Detection>> per_tile(tiles.size());
  if (in.ConsumeBool() && !per_tile.empty()) per_tile.pop_back();  // a count that does not match
  for (std::size_t t = 0; t < std::min(per_tile.size(), kMaxTilesWithDetections); ++t) {
    const int n = in.ConsumeIntegralInRange(0, kMaxDetectionsPerTile);
    for (int i = 0; i < n && in.remaining_bytes() > 0; ++i) {
      Detection d;
      d.box = {coordinate(in), coordinate(in), coordinate(in), coordinate(in)};
      d.score = in.ConsumeBool() ? in.ConsumeProbability<float>() : in.ConsumeFloatingPoint<float>();
      d.label = in.ConsumeIntegralInRange<std::int64_t>(-1, 3);
      if (in.ConsumeBool()) d.predicted_iou = in.ConsumeProbability<float>();
      per_tile[t].push_back(d);
    }
  }
  // What every merger promises, beyond not crashing: boxes in the image, finite, not inverted; scores not NaN.
  for (const Detection& d : merger(in)->merge(per_tile, tiles, image_size)) {
    const Box& b = d.box;
    if (!(b.x1 >= 0 && b.y1 >= 0 && b.x1 <= b.x2 && b.y1 <= b.y2 && b.x2 <= static_cast<float>(image_size.width) &&
          b.y2 <= static_cast<float>(image_size.height)) ||
        std::isnan(d.score)) {
      std::fprintf(stderr, "merged box [%g, %g, %g, %g] (score %g) is not inside the %dx%d image\n", b.x1, b.y1, b.x2, b.y2, d.score,
                   image_size.width, image_size.height);
      std::abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  try {
    fuzz_one(in);
  } catch (const std::exception&) {
  }
  return 0;
}
