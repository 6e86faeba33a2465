// Core geometry: axis-aligned boxes in pixel coordinates, detections, and the overlap measures that
// NMS, merging, label assignment and evaluation all share.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>
#include <vector>


#include "bloodcv/span.hpp"

namespace bloodcv {

// Corners (x1, y1) top-left and (x2, y2) bottom-right, in pixels; x2 >= x1 and y2 >= y1 for a valid box.
// Four packed floats, so an N×4 float32 array can be read as N boxes without a copy.
struct Box {
  float x1 = 0, y1 = 0, x2 = 0, y2 = 0;

  float width() const { return x2 - x1; }
  float height() const { return y2 - y1; }
  float area() const { return width() * height(); }
  float center_x() const { return 0.5f * (x1 + x2); }
  float center_y() const { return 0.5f * (y1 + y2); }
  friend bool operator==(const Box& a, const Box& b) {
    return a.x1 == b.x1 && a.y1 == b.y1 && a.x2 == b.x2 && a.y2 == b.y2;
  }
};
static_assert(sizeof(Box) == 4 * sizeof(float), "Box must alias an N x 4 float array");

struct Detection {
  Box box;
  float score = 0;
  std::int64_t label = 0;
  std::optional<float> predicted_iou;  // from detectors with an IoU-prediction branch
};

// How two boxes overlap. IoS is intersection over the smaller area: high when a box cut by a tile seam
// lies inside the whole box, where IoU stays low.
enum class BoxMetric { IoU, IoS, GIoU, DIoU };

BoxMetric parse_box_metric(std::string_view name);  // "iou", "ios", "giou", "diou"
std::string_view to_string(BoxMetric metric);

namespace detail {

// The overlaps in arithmetic T: float as torchvision's kernels compute them (so that NMS decisions at the
// threshold are bit-identical), double where float's range overflows. Each returns NaN when an area or
// extent on its way is not finite in T (boxes of more than about 1.8e19 pixels a side in float): one test
// of a value already computed, as the NMS loops call these for every pair.
template <class T>
T intersection(const Box& a, const Box& b) {
  const T w = std::max(T(0), T(std::min(a.x2, b.x2)) - T(std::max(a.x1, b.x1)));
  const T h = std::max(T(0), T(std::min(a.y2, b.y2)) - T(std::max(a.y1, b.y1)));
  return w * h;
}

template <class T>
T area(const Box& b) {
  return (T(b.x2) - T(b.x1)) * (T(b.y2) - T(b.y1));
}

template <class T>
T iou(const Box& a, const Box& b) {
  const T inter = intersection<T>(a, b);
  const T uni = area<T>(a) + area<T>(b) - inter;
  if (!std::isfinite(uni)) return std::numeric_limits<T>::quiet_NaN();
  return uni > 0 ? inter / uni : T(0);
}

template <class T>
T ios(const Box& a, const Box& b) {
  const T smaller = std::min(area<T>(a), area<T>(b));  // the intersection is no larger
  if (!std::isfinite(smaller)) return std::numeric_limits<T>::quiet_NaN();
  return smaller > 0 ? intersection<T>(a, b) / smaller : T(0);
}

template <class T>
T giou(const Box& a, const Box& b) {
  const T inter = intersection<T>(a, b);
  const T uni = area<T>(a) + area<T>(b) - inter;
  const T enclosing = (T(std::max(a.x2, b.x2)) - T(std::min(a.x1, b.x1))) * (T(std::max(a.y2, b.y2)) - T(std::min(a.y1, b.y1)));
  if (!std::isfinite(uni) || !std::isfinite(enclosing)) return std::numeric_limits<T>::quiet_NaN();
  const T overlap = uni > 0 ? inter / uni : T(0);
  return enclosing > 0 ? overlap - (enclosing - uni) / enclosing : overlap;
}

// torchvision's distance_box_iou adds 1e-7 to the diagonal: sub-pixel boxes then agree with it.
template <class T>
T diou(const Box& a, const Box& b) {
  const T dx = (T(a.x1) + T(a.x2)) / 2 - (T(b.x1) + T(b.x2)) / 2;
  const T dy = (T(a.y1) + T(a.y2)) / 2 - (T(b.y1) + T(b.y2)) / 2;
  const T ex = T(std::max(a.x2, b.x2)) - T(std::min(a.x1, b.x1));
  const T ey = T(std::max(a.y2, b.y2)) - T(std::min(a.y1, b.y1));
  const T diagonal2 = ex * ex + ey * ey + T(1e-7);
  if (!std::isfinite(diagonal2)) return std::numeric_limits<T>::quiet_NaN();  // it bounds the centre distance
  return iou<T>(a, b) - (dx * dx + dy * dy) / diagonal2;  // NaN from iou where the areas overflowed
}

// f<float>, or f<double> where float overflowed.
template <class F>
float in_range(F f) {
  const float r = f(float{});
  return std::isnan(r) ? static_cast<float>(f(double{})) : r;
}

}  // namespace detail

inline float intersection(const Box& a, const Box& b) { return detail::intersection<float>(a, b); }

// Degenerate pairs (zero union) give 0, never NaN.
inline float iou(const Box& a, const Box& b) {
  return detail::in_range([&](auto t) { return detail::iou<decltype(t)>(a, b); });
}

inline float ios(const Box& a, const Box& b) {
  return detail::in_range([&](auto t) { return detail::ios<decltype(t)>(a, b); });
}

// Generalized IoU (Rezatofighi et al. 2019): IoU minus the share of the enclosing box that neither covers.
inline float giou(const Box& a, const Box& b) {
  return detail::in_range([&](auto t) { return detail::giou<decltype(t)>(a, b); });
}

// Distance IoU (Zheng et al. 2020): IoU minus squared centre distance over the enclosing box's squared diagonal.
inline float diou(const Box& a, const Box& b) {
  return detail::in_range([&](auto t) { return detail::diou<decltype(t)>(a, b); });
}

inline float overlap(const Box& a, const Box& b, BoxMetric metric) {
  switch (metric) {
    case BoxMetric::IoU: return iou(a, b);
    case BoxMetric::IoS: return ios(a, b);
    case BoxMetric::GIoU: return giou(a, b);
    case BoxMetric::DIoU: return diou(a, b);
  }
  return 0.f;
}

// Overlaps of every pair, row-major: m(i, j) for rows i of the first set and columns j of the second.
class OverlapMatrix {
 public:
  OverlapMatrix() = default;
  OverlapMatrix(std::size_t rows, std::size_t cols) : rows_(rows), cols_(cols), values_(rows * cols) {}
  std::size_t rows() const { return rows_; }
  std::size_t cols() const { return cols_; }
  std::size_t size() const { return values_.size(); }
  float operator()(std::size_t i, std::size_t j) const { return values_[i * cols_ + j]; }
  float& operator()(std::size_t i, std::size_t j) { return values_[i * cols_ + j]; }
  const float* data() const { return values_.data(); }  // row-major

 private:
  std::size_t rows_ = 0, cols_ = 0;
  std::vector<float> values_;
};

// All pairs: result(i, j) = metric(a[i], b[j]).
OverlapMatrix overlap_matrix(Span<Box> a, Span<Box> b, BoxMetric metric);
// Aligned pairs: result[i] = metric(a[i], b[i]); a and b must have the same length.
std::vector<float> overlap_aligned(Span<Box> a, Span<Box> b, BoxMetric metric);

// Box encodings: corners, corner + size, centre + size (torchvision's names).
enum class BoxFormat { XYXY, XYWH, CXCYWH };
BoxFormat parse_box_format(std::string_view name);  // "xyxy", "xywh", "cxcywh"

inline std::array<float, 4> to_xyxy(std::array<float, 4> v, BoxFormat from) {
  switch (from) {
    case BoxFormat::XYXY: return v;
    case BoxFormat::XYWH: return {v[0], v[1], v[0] + v[2], v[1] + v[3]};
    case BoxFormat::CXCYWH:
      return {v[0] - 0.5f * v[2], v[1] - 0.5f * v[3], v[0] + 0.5f * v[2], v[1] + 0.5f * v[3]};
  }
  return v;
}

inline std::array<float, 4> from_xyxy(std::array<float, 4> v, BoxFormat to) {
  switch (to) {
    case BoxFormat::XYXY: return v;
    case BoxFormat::XYWH: return {v[0], v[1], v[2] - v[0], v[3] - v[1]};
    case BoxFormat::CXCYWH: return {0.5f * (v[0] + v[2]), 0.5f * (v[1] + v[3]), v[2] - v[0], v[3] - v[1]};
  }
  return v;
}

inline std::array<float, 4> convert_box(std::array<float, 4> v, BoxFormat from, BoxFormat to) {
  return from == to ? v : from_xyxy(to_xyxy(v, from), to);
}

// The smallest box holding both.
inline Box enclosing_box(const Box& a, const Box& b) {
  return {std::min(a.x1, b.x1), std::min(a.y1, b.y1), std::max(a.x2, b.x2), std::max(a.y2, b.y2)};
}

// Clamps a box to the image [0, width] × [0, height].
inline Box clip_box(const Box& b, float width, float height) {
  return {std::clamp(b.x1, 0.f, width), std::clamp(b.y1, 0.f, height), std::clamp(b.x2, 0.f, width),
          std::clamp(b.y2, 0.f, height)};
}

// Throws std::invalid_argument naming `what`, the index and the value, if a box has a non-finite
// coordinate or x2 < x1 or y2 < y1.
void validate_boxes(Span<Box> boxes, std::string_view what);

}  // namespace bloodcv
