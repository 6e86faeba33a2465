// A uniform grid over the plane that finds the boxes whose cells meet a query box.
//
// NMS inserts and queries boxes in score order, which jumps at random over a slide, so memory
// locality decides the speed. Each cell owns a contiguous run of slots, sized beforehand by counting
// how many of the boxes it is built from cover that cell; a query then reads a few short contiguous
// runs, and each slot holds its box so that nothing else is read. A box that was not counted (WBF's
// fused boxes move) goes to a per-cell overflow list when its cell's run is full.
// A query reports each insertion once even when its box spans several cells: only in the first cell
// that the box's cells and the query's cells share.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "bloodcv/box.hpp"

namespace bloodcv::detail {

class BoxGrid {
 public:
  // Cells are about the median side of `sample` (the boxes that will be inserted), grown until the
  // cells number O(n) and each box spans a few of them.
  explicit BoxGrid(Span<Box> sample) {
    if (sample.empty()) {
      offsets_.assign(2, 0);
      fill_.assign(1, 0);
      return;
    }
    double x_min = sample[0].x1, y_min = sample[0].y1, x_max = sample[0].x2, y_max = sample[0].y2;
    for (const Box& b : sample) {
      x_min = std::min<double>(x_min, b.x1);
      y_min = std::min<double>(y_min, b.y1);
      x_max = std::max<double>(x_max, b.x2);
      y_max = std::max<double>(y_max, b.y2);
    }
    const double extent_x = std::max(x_max - x_min, 1e-6), extent_y = std::max(y_max - y_min, 1e-6);
    const double n = static_cast<double>(sample.size());

    double cell = std::max(median_side(sample), 1e-6);
    // Not more cells than about twice the boxes.
    cell = std::max(cell, std::sqrt(extent_x * extent_y / (2.0 * n + 16.0)));
    // Not more slots than about eight per box: huge boxes grow the cells instead of flooding them.
    while (covered_cells(sample, cell, extent_x, extent_y) > 8.0 * n + 64.0) cell *= 2.0;

    x0_ = static_cast<float>(x_min);
    y0_ = static_cast<float>(y_min);
    inv_cell_ = static_cast<float>(1.0 / cell);
    nx_ = static_cast<int>(std::min(std::ceil(extent_x / cell), 1e6)) + 1;
    ny_ = static_cast<int>(std::min(std::ceil(extent_y / cell), 1e6)) + 1;

    const std::size_t cells = static_cast<std::size_t>(nx_) * static_cast<std::size_t>(ny_);
    offsets_.assign(cells + 1, 0);
    for (const Box& b : sample) for_cells(cells_of(b), [&](std::size_t c) { ++offsets_[c + 1]; });
    for (std::size_t c = 0; c < cells; ++c) offsets_[c + 1] += offsets_[c];
    fill_.assign(cells, 0);
    slots_.resize(offsets_[cells]);
  }

  void insert(std::int32_t id, const Box& b) {
    const CellRange r = cells_of(b);
    const Slot slot{b, id, r.x0, r.y0};
    for_cells(r, [&](std::size_t c) {
      const std::size_t at = offsets_[c] + fill_[c];
      if (at < offsets_[c + 1]) {
        slots_[at] = slot;
        ++fill_[c];
        return;
      }
      if (overflow_head_.empty()) overflow_head_.assign(fill_.size(), -1);
      overflow_.push_back({slot, overflow_head_[c]});
      overflow_head_[c] = static_cast<std::int32_t>(overflow_.size() - 1);
    });
  }

  // Calls visit(id, box) for each insertion whose box shares a cell with `b`, until visit returns true.
  // An id inserted again (a box that moved) may be reported once per insertion.
  template <class Visit>
  void visit(const Box& b, Visit&& visit) const {
    const CellRange q = cells_of(b);
    for (int cy = q.y0; cy <= q.y1; ++cy)
      for (int cx = q.x0; cx <= q.x1; ++cx) {
        const std::size_t c = cell_index(cx, cy);
        auto report = [&](const Slot& s) {
          return std::max(s.first_cx, q.x0) == cx && std::max(s.first_cy, q.y0) == cy && visit(s.id, s.box);
        };
        const Slot* first = slots_.data() + offsets_[c];
        for (const Slot* s = first; s != first + fill_[c]; ++s)
          if (report(*s)) return;
        if (overflow_head_.empty()) continue;
        for (std::int32_t e = overflow_head_[c]; e >= 0; e = overflow_[static_cast<std::size_t>(e)].next)
          if (report(overflow_[static_cast<std::size_t>(e)].slot)) return;
      }
  }

  // A box that moved onto other cells must be inserted again to stay findable.
  bool same_cells(const Box& a, const Box& b) const { return cells_of(a) == cells_of(b); }

 private:
  struct CellRange {
    int x0, y0, x1, y1;
    bool operator==(const CellRange& o) const { return x0 == o.x0 && y0 == o.y0 && x1 == o.x1 && y1 == o.y1; }
  };
  struct Slot {
    Box box;
    std::int32_t id;
    std::int32_t first_cx, first_cy;  // the box's first cell
  };
  struct OverflowSlot {
    Slot slot;
    std::int32_t next;
  };

  static double median_side(Span<Box> boxes) {
    // A strided sample of at most 1024 boxes is enough to size cells.
    const std::size_t stride = std::max<std::size_t>(1, boxes.size() / 1024);
    std::vector<float> sides;
    for (std::size_t i = 0; i < boxes.size(); i += stride) sides.push_back(std::max(boxes[i].width(), boxes[i].height()));
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

  int cell_coordinate(float v, float origin, int count) const {
    const float c = std::floor((v - origin) * inv_cell_);
    return static_cast<int>(std::clamp(c, 0.f, static_cast<float>(count - 1)));
  }

  std::size_t cell_index(int cx, int cy) const {
    return static_cast<std::size_t>(cy) * static_cast<std::size_t>(nx_) + static_cast<std::size_t>(cx);
  }

  CellRange cells_of(const Box& b) const {
    return {cell_coordinate(b.x1, x0_, nx_), cell_coordinate(b.y1, y0_, ny_), cell_coordinate(b.x2, x0_, nx_),
            cell_coordinate(b.y2, y0_, ny_)};
  }

  template <class F>
  void for_cells(const CellRange& r, F&& f) const {
    for (int cy = r.y0; cy <= r.y1; ++cy)
      for (int cx = r.x0; cx <= r.x1; ++cx) f(cell_index(cx, cy));
  }

  float x0_ = 0, y0_ = 0, inv_cell_ = 1;
  int nx_ = 1, ny_ = 1;
  std::vector<std::size_t> offsets_;  // cell c owns slots [offsets_[c], offsets_[c + 1])
  std::vector<std::uint32_t> fill_;     // slots used per cell
  std::vector<Slot> slots_;
  std::vector<std::int32_t> overflow_head_;  // allocated at the first overflow
  std::vector<OverflowSlot> overflow_;
};

}  // namespace bloodcv::detail
