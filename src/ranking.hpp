// Rank order and grouping shared by the NMS family and the tile merger.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "bloodcv/box.hpp"
#include "bloodcv/span.hpp"

namespace bloodcv::detail {

// Indices of the scores at least `min_score`, by decreasing score, equal scores by lower index.
inline std::vector<std::int32_t> rank_by_score(Span<float> scores, float min_score) {
  std::vector<std::pair<float, std::int32_t>> ranked;
  ranked.reserve(scores.size());
  for (std::size_t i = 0; i < scores.size(); ++i)
    if (scores[i] >= min_score) ranked.emplace_back(scores[i], static_cast<std::int32_t>(i));
  std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  std::vector<std::int32_t> order(ranked.size());
  std::transform(ranked.begin(), ranked.end(), order.begin(), [](const auto& r) { return r.second; });
  return order;
}

// Position of each index in `order`.
inline std::vector<std::int32_t> ranks_of(const std::vector<std::int32_t>& order, std::size_t n) {
  std::vector<std::int32_t> rank(n, 0);
  for (std::size_t r = 0; r < order.size(); ++r) rank[static_cast<std::size_t>(order[r])] = static_cast<std::int32_t>(r);
  return rank;
}

// Union-find whose roots are always the top-ranked member of their group.
class RankedGroups {
 public:
  explicit RankedGroups(std::vector<std::int32_t> rank) : rank_(std::move(rank)), parent_(rank_.size()) {
    std::iota(parent_.begin(), parent_.end(), std::int32_t{0});
  }
  std::int32_t leader(std::int32_t x) {
    while (parent_[at(x)] != x) {
      parent_[at(x)] = parent_[at(parent_[at(x)])];  // path halving
      x = parent_[at(x)];
    }
    return x;
  }
  void unite(std::int32_t a, std::int32_t b) {
    a = leader(a);
    b = leader(b);
    if (a == b) return;
    if (rank_[at(b)] < rank_[at(a)]) std::swap(a, b);
    parent_[at(b)] = a;
  }

 private:
  static std::size_t at(std::int32_t i) { return static_cast<std::size_t>(i); }
  std::vector<std::int32_t> rank_, parent_;
};

// For every group (group_of[i]: the top-ranked member of box i's group), at the group's index, the box
// enclosing all its members; other entries keep their own box.
inline std::vector<Box> enclosing_boxes_of_groups(Span<Box> boxes, const std::vector<std::int32_t>& group_of) {
  std::vector<Box> merged(boxes.begin(), boxes.end());
  for (std::size_t i = 0; i < boxes.size(); ++i) {
    const auto g = static_cast<std::size_t>(group_of[i]);
    merged[g] = enclosing_box(merged[g], boxes[i]);
  }
  return merged;
}

}  // namespace bloodcv::detail
