// What the evaluation's translation units share.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "bloodcv/box.hpp"

namespace bloodcv::eval::internal {

// In double, as COCO computes areas.
inline double box_area(const Box& b) { return static_cast<double>(b.x2 - b.x1) * static_cast<double>(b.y2 - b.y1); }

// COCO's bbox IoU (maskUtils.iou) in double; against a crowd box it is intersection over the detection's area.
inline double coco_iou(const Box& d, const Box& g, bool crowd) {
  const double w = std::min<double>(d.x2, g.x2) - std::max<double>(d.x1, g.x1);
  const double h = std::min<double>(d.y2, g.y2) - std::max<double>(d.y1, g.y1);
  if (w <= 0 || h <= 0) return 0;
  const double inter = w * h;
  const double uni = crowd ? box_area(d) : box_area(d) + box_area(g) - inter;
  return uni > 0 ? inter / uni : 0;
}

// Index of `value` in `thresholds` (within 1e-9), or thresholds.size() when absent.
inline std::size_t threshold_index(const std::vector<double>& thresholds, double value) {
  for (std::size_t i = 0; i < thresholds.size(); ++i)
    if (std::abs(thresholds[i] - value) < 1e-9) return i;
  return thresholds.size();
}

}  // namespace bloodcv::eval::internal
