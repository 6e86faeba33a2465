// Merging across tiles: the detections of overlapping tiles (tile-local boxes) → one set in image
// coordinates, the duplicates that seams produce merged. One interface; the pipeline, configs, the CLI
// and Python all take a TileMerger.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include <opencv2/core.hpp>

#include "bloodcv/box.hpp"
#include "bloodcv/nms.hpp"
#include "bloodcv/tiler.hpp"

namespace bloodcv {

class TileMerger {
 public:
  virtual ~TileMerger() = default;
  // per_tile: the detections of each tile in its own pixels, in the order of `tiles`. Returns them in
  // image coordinates (to_image_coordinates), duplicates merged, by decreasing score.
  virtual std::vector<Detection> merge(const std::vector<std::vector<Detection>>& per_tile, const std::vector<Tile>& tiles,
                                       cv::Size image_size) const = 0;
};

// How detections of different tiles are recognised as the same cell. Both tiles saw the same pixels
// where they overlap, so the parts of the two boxes inside that shared region coincide for one cell
// (whole or cut by a seam) and differ for two touching cells: they match when metric(part a, part b)
// > match_threshold. Two detections of the same tile never match: the detector already separated them.
// Matching is transitive (a cell at a tile corner has up to four pieces); a group becomes one
// detection with the enclosing box of its members and the fields of its top-scoring member.
struct SeamMergeOptions {
  double match_threshold = 0.5;
  BoxMetric metric = BoxMetric::IoU;
  bool class_aware = true;
};

class SeamMerger final : public TileMerger {
 public:
  explicit SeamMerger(SeamMergeOptions options = {});  // match_threshold in [0, 1]
  std::vector<Detection> merge(const std::vector<std::vector<Detection>>& per_tile, const std::vector<Tile>& tiles,
                               cv::Size image_size) const override;
  const SeamMergeOptions& options() const { return options_; }

 private:
  SeamMergeOptions options_;
};

// All tiles' detections pooled in image coordinates and handed to a strategy of the NMS family, as SAHI
// does (its default: NonMaxMerge with IoS), whichever tile saw what.
class PooledMerger final : public TileMerger {
 public:
  explicit PooledMerger(std::shared_ptr<const Suppressor> suppressor);
  std::vector<Detection> merge(const std::vector<std::vector<Detection>>& per_tile, const std::vector<Tile>& tiles,
                               cv::Size image_size) const override;
  const Suppressor& suppressor() const { return *suppressor_; }

 private:
  std::shared_ptr<const Suppressor> suppressor_;
};

// A merger by name: "seam" (SeamMerger with `seam`), or pooled into "nmm" (NonMaxMerge, IoS), "nms"
// (HardNms, IoS), "wbf" (WeightedBoxFusion) or "soft-nms" (SoftNms), each with its defaults.
// std::invalid_argument for another name.
std::shared_ptr<const TileMerger> make_merger(std::string_view strategy, const SeamMergeOptions& seam = {});

}  // namespace bloodcv
