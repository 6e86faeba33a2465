// A uniform grid over the plane that finds the boxes whose cells meet a query box. Entries live in one
// flat linked list per cell (no allocation per cell), so inserting a million boxes stays cheap, and a
// query reports each id once even when its box spans several cells.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "bloodcv/box.hpp"

namespace bloodcv::detail {

class BoxGrid {
 public:
  // Cells are sized from `sample` (the boxes the grid will hold or be queried with): about the median
  // box side, grown until the cells number O(n) and each box spans a few of them. `max_ids` bounds the
  // ids inserted.
  BoxGrid(Span<Box> sample, std::size_t max_ids) : stamp_(max_ids, 0) {
    if (sample.empty()) {
      nx_ = ny_ = 1;
      head_.assign(1, -1);
      return;
    }
    double x_min = sample[0].x1, y_min = sample[0].y1, x_max = sample[0].x2, y_max = sample[0].y2;
    for (const Box& b : sample) {
      x_min = std::min<double>(x_min, b.x1);
      y_min = std::min<double>(y_min, b.y1);
      x_max = std::max<double>(x_max, b.x2);
      y_max = std::max<double>(y_max, b.y2);
    }
    x0_ = x_min;
    y0_ = y_min;
    const double extent_x = std::max(x_max - x_min, 1e-6), extent_y = std::max(y_max - y_min, 1e-6);
    const double n = static_cast<double>(sample.size());

    double cell = std::max(median_side(sample), 1e-6);
    // Not more cells than about twice the boxes: the heads array stays O(n).
    cell = std::max(cell, std::sqrt(extent_x * extent_y / (2.0 * n + 16.0)));
    // Not more entries than about eight per box: huge boxes grow the cells instead of flooding them.
    while (covered_cells(sample, cell, extent_x, extent_y) > 8.0 * n + 64.0) cell *= 2.0;

    inv_cell_ = 1.0 / cell;
    nx_ = static_cast<int>(std::min(std::ceil(extent_x * inv_cell_), 1e6)) + 1;
    ny_ = static_cast<int>(std::min(std::ceil(extent_y * inv_cell_), 1e6)) + 1;
    head_.assign(static_cast<std::size_t>(nx_) * static_cast<std::size_t>(ny_), -1);
  }

  void insert(std::int32_t id, const Box& b) {
    const CellRange r = cells_of(b);
    for (int cy = r.y0; cy <= r.y1; ++cy)
      for (int cx = r.x0; cx <= r.x1; ++cx) {
        const std::size_t cell = static_cast<std::size_t>(cy) * static_cast<std::size_t>(nx_) + static_cast<std::size_t>(cx);
        next_.push_back(head_[cell]);
        id_.push_back(id);
        head_[cell] = static_cast<std::int32_t>(id_.size() - 1);
      }
  }

  // Calls visit(id) once for each id inserted in a cell that `b` touches, until visit returns true.
  template <class Visit>
  void visit(const Box& b, Visit&& visit) {
    if (++query_ == 0) {  // the stamp wrapped around: forget old stamps
      std::fill(stamp_.begin(), stamp_.end(), 0u);
      query_ = 1;
    }
    const CellRange r = cells_of(b);
    for (int cy = r.y0; cy <= r.y1; ++cy)
      for (int cx = r.x0; cx <= r.x1; ++cx) {
        std::int32_t e = head_[static_cast<std::size_t>(cy) * static_cast<std::size_t>(nx_) + static_cast<std::size_t>(cx)];
        for (; e >= 0; e = next_[static_cast<std::size_t>(e)]) {
          const auto id = static_cast<std::size_t>(id_[static_cast<std::size_t>(e)]);
          if (stamp_[id] == query_) continue;
          stamp_[id] = query_;
          if (visit(static_cast<std::int32_t>(id))) return;
        }
      }
  }

  // A box that moved onto other cells must be inserted again to stay findable.
  bool same_cells(const Box& a, const Box& b) const { return cells_of(a) == cells_of(b); }

 private:
  struct CellRange {
    int x0, y0, x1, y1;
    bool operator==(const CellRange& o) const { return x0 == o.x0 && y0 == o.y0 && x1 == o.x1 && y1 == o.y1; }
  };

  static double median_side(Span<Box> boxes) {
    // A strided sample of at most 1024 boxes is enough to size cells.
    const std::size_t stride = std::max<std::size_t>(1, boxes.size() / 1024);
    std::vector<float> sides;
    for (std::size_t i = 0; i < boxes.size(); i += stride)
      sides.push_back(std::max(boxes[i].width(), boxes[i].height()));
    std::nth_element(sides.begin(), sides.begin() + static_cast<std::ptrdiff_t>(sides.size() / 2), sides.end());
    return sides[sides.size() / 2];
  }

  static double covered_cells(Span<Box> boxes, double cell, double extent_x, double extent_y) {
    const double max_x = std::floor(extent_x / cell) + 1, max_y = std::floor(extent_y / cell) + 1;
    double total = 0;
    for (const Box& b : boxes)
      total += std::min(std::floor(b.width() / cell) + 2, max_x) * std::min(std::floor(b.height() / cell) + 2, max_y);
    return total;
  }

  int cell_coordinate(double v, double origin, int count) const {
    const double c = std::floor((v - origin) * inv_cell_);
    return static_cast<int>(std::clamp(c, 0.0, static_cast<double>(count - 1)));
  }

  CellRange cells_of(const Box& b) const {
    return {cell_coordinate(b.x1, x0_, nx_), cell_coordinate(b.y1, y0_, ny_), cell_coordinate(b.x2, x0_, nx_),
            cell_coordinate(b.y2, y0_, ny_)};
  }

  double x0_ = 0, y0_ = 0, inv_cell_ = 1;
  int nx_ = 1, ny_ = 1;
  std::vector<std::int32_t> head_, next_, id_;
  std::vector<std::uint32_t> stamp_;
  std::uint32_t query_ = 0;
};

}  // namespace bloodcv::detail
