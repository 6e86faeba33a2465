#include "bloodcv/merge.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "box_grid.hpp"
#include "check.hpp"
#include "ranking.hpp"

namespace bloodcv {

using detail::fail_argument;

namespace {

struct PooledDetections {
  std::vector<Detection> detections;  // in image coordinates
  std::vector<std::size_t> tile_of;
};

PooledDetections pool(const std::vector<std::vector<Detection>>& per_tile, const std::vector<Tile>& tiles, cv::Size image_size) {
  if (per_tile.size() != tiles.size()) fail_argument("got detections for {} tiles but {} tiles", per_tile.size(), tiles.size());
  PooledDetections pooled;
  for (std::size_t t = 0; t < tiles.size(); ++t) {
    for (Detection& d : to_image_coordinates(per_tile[t], tiles[t], image_size)) {
      pooled.detections.push_back(std::move(d));
      pooled.tile_of.push_back(t);
    }
  }
  return pooled;
}

Box rect_box(const cv::Rect& r) {
  return {static_cast<float>(r.x), static_cast<float>(r.y), static_cast<float>(r.x + r.width), static_cast<float>(r.y + r.height)};
}

// The part of a box inside a region: clipped to the region's corners.
Box part_inside(const Box& b, const Box& region) {
  return {std::clamp(b.x1, region.x1, region.x2), std::clamp(b.y1, region.y1, region.y2), std::clamp(b.x2, region.x1, region.x2),
          std::clamp(b.y2, region.y1, region.y2)};
}

}  // namespace

SeamMerger::SeamMerger(SeamMergeOptions options) : options_(options) {
  detail::check_unit_interval(options_.match_threshold, "match_threshold");
}

std::vector<Detection> SeamMerger::merge(const std::vector<std::vector<Detection>>& per_tile, const std::vector<Tile>& tiles,
                                         cv::Size image_size) const {
  PooledDetections pooled = pool(per_tile, tiles, image_size);
  const std::vector<Detection>& dets = pooled.detections;
  const std::size_t n = dets.size();
  std::vector<Box> boxes(n);
  std::vector<float> scores(n);
  for (std::size_t i = 0; i < n; ++i) {
    boxes[i] = dets[i].box;
    scores[i] = dets[i].score;
    if (std::isnan(scores[i])) fail_argument("detection {} (tile {}) has a NaN score", i, pooled.tile_of[i]);
  }
  validate_boxes(boxes, "detections");

  const auto order = detail::rank_by_score(scores, -std::numeric_limits<float>::infinity());
  detail::RankedGroups groups(detail::ranks_of(order, n));
  detail::BoxGrid grid(boxes);
  for (const std::int32_t i : order) {
    const auto ui = static_cast<std::size_t>(i);
    grid.visit(boxes[ui], [&](std::int32_t j, const Box&) {
      const auto uj = static_cast<std::size_t>(j);
      const std::size_t ti = pooled.tile_of[ui], tj = pooled.tile_of[uj];
      if (ti == tj || (options_.class_aware && dets[ui].label != dets[uj].label)) return false;
      const Box shared = rect_box(tiles[ti].region & tiles[tj].region);
      const Box a = part_inside(boxes[ui], shared), b = part_inside(boxes[uj], shared);
      if (a.area() > 0 && b.area() > 0 && overlap(a, b, options_.metric) > options_.match_threshold) groups.unite(i, j);
      return false;
    });
    grid.insert(i, boxes[ui]);
  }

  std::vector<std::int32_t> group_of(n);
  for (std::size_t i = 0; i < n; ++i) group_of[i] = groups.leader(static_cast<std::int32_t>(i));
  const std::vector<Box> merged = detail::enclosing_boxes_of_groups(boxes, group_of);
  std::vector<Detection> out;
  for (const std::int32_t i : order) {
    if (group_of[static_cast<std::size_t>(i)] != i) continue;
    Detection d = std::move(pooled.detections[static_cast<std::size_t>(i)]);
    d.box = merged[static_cast<std::size_t>(i)];
    out.push_back(std::move(d));
  }
  return out;
}

PooledMerger::PooledMerger(std::shared_ptr<const Suppressor> suppressor) : suppressor_(std::move(suppressor)) {
  if (!suppressor_) fail_argument("PooledMerger needs a suppressor, got none");
}

std::vector<Detection> PooledMerger::merge(const std::vector<std::vector<Detection>>& per_tile, const std::vector<Tile>& tiles,
                                           cv::Size image_size) const {
  return suppress(*suppressor_, pool(per_tile, tiles, image_size).detections);
}

std::shared_ptr<const TileMerger> make_merger(std::string_view strategy, const SeamMergeOptions& seam) {
  if (strategy == "seam") return std::make_shared<SeamMerger>(seam);
  if (strategy == "nmm") return std::make_shared<PooledMerger>(std::make_shared<NonMaxMerge>());
  if (strategy == "nms") {
    HardNmsOptions o;
    o.metric = BoxMetric::IoS;
    return std::make_shared<PooledMerger>(std::make_shared<HardNms>(o));
  }
  if (strategy == "wbf") return std::make_shared<PooledMerger>(std::make_shared<WeightedBoxFusion>());
  if (strategy == "soft-nms") return std::make_shared<PooledMerger>(std::make_shared<SoftNms>());
  fail_argument("merge strategy must be seam, nmm, nms, wbf or soft-nms, got '{}'", strategy);
}

}  // namespace bloodcv
