#include "bloodcv/box.hpp"

#include <cmath>

#include "check.hpp"

namespace bloodcv {

using detail::fail_argument;

BoxMetric parse_box_metric(std::string_view name) {
  if (name == "iou") return BoxMetric::IoU;
  if (name == "ios") return BoxMetric::IoS;
  if (name == "giou") return BoxMetric::GIoU;
  if (name == "diou") return BoxMetric::DIoU;
  fail_argument("metric must be one of iou, ios, giou, diou; got '{}'", name);
}

std::string_view to_string(BoxMetric metric) {
  switch (metric) {
    case BoxMetric::IoU: return "iou";
    case BoxMetric::IoS: return "ios";
    case BoxMetric::GIoU: return "giou";
    case BoxMetric::DIoU: return "diou";
  }
  return "?";
}

BoxFormat parse_box_format(std::string_view name) {
  if (name == "xyxy") return BoxFormat::XYXY;
  if (name == "xywh") return BoxFormat::XYWH;
  if (name == "cxcywh") return BoxFormat::CXCYWH;
  fail_argument("box format must be one of xyxy, xywh, cxcywh; got '{}'", name);
}

void validate_boxes(Span<Box> boxes, std::string_view what) {
  for (std::size_t i = 0; i < boxes.size(); ++i) {
    const Box& b = boxes[i];
    if (!std::isfinite(b.x1) || !std::isfinite(b.y1) || !std::isfinite(b.x2) || !std::isfinite(b.y2))
      fail_argument("{}[{}] = ({}, {}, {}, {}): coordinates must be finite", what, i, b.x1, b.y1, b.x2, b.y2);
    if (b.x2 < b.x1 || b.y2 < b.y1)
      fail_argument("{}[{}] = ({}, {}, {}, {}): need x2 >= x1 and y2 >= y1 (xyxy corners)", what, i, b.x1, b.y1,
                    b.x2, b.y2);
  }
}

OverlapMatrix overlap_matrix(Span<Box> a, Span<Box> b, BoxMetric metric) {
  validate_boxes(a, "boxes1");
  validate_boxes(b, "boxes2");
  OverlapMatrix out(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i)
    for (std::size_t j = 0; j < b.size(); ++j)
      out(i, j) = overlap(a[i], b[j], metric);
  return out;
}

std::vector<float> overlap_aligned(Span<Box> a, Span<Box> b, BoxMetric metric) {
  if (a.size() != b.size())
    fail_argument("aligned overlap needs boxes1 and boxes2 of the same length, got {} and {}", a.size(), b.size());
  validate_boxes(a, "boxes1");
  validate_boxes(b, "boxes2");
  std::vector<float> out(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) out[i] = overlap(a[i], b[i], metric);
  return out;
}

}  // namespace bloodcv
