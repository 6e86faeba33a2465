#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "bloodcv/box.hpp"

using namespace bloodcv;
using Catch::Matchers::Contains;

TEST_CASE("overlap measures on hand-computed pairs", "[box]") {
  const Box a{0, 0, 10, 10}, b{5, 0, 15, 10};
  CHECK(intersection(a, b) == Approx(50));
  CHECK(iou(a, b) == Approx(1.0 / 3));
  CHECK(ios(a, b) == Approx(0.5));
  CHECK(giou(a, b) == Approx(1.0 / 3));  // enclosing box equals the union
  CHECK(diou(a, b) == Approx(1.0 / 3 - 25.0 / 325));
  const Box far{20, 20, 30, 30};
  CHECK(iou(a, far) == 0);
  CHECK(giou(a, far) == Approx(0 - (900.0 - 200) / 900));
  CHECK(iou(a, a) == 1);
  const Box inside{2, 2, 4, 4};
  CHECK(ios(a, inside) == 1);
  CHECK(iou(a, inside) == Approx(0.04));
}

TEST_CASE("zero-area boxes give 0, never NaN", "[box]") {
  const Box point{3, 3, 3, 3}, line{0, 5, 10, 5};
  for (BoxMetric m : {BoxMetric::IoU, BoxMetric::IoS, BoxMetric::GIoU, BoxMetric::DIoU}) {
    CHECK(overlap(point, point, m) == 0);
    CHECK_FALSE(std::isnan(overlap(point, line, m)));
  }
}

TEST_CASE("boxes beyond float's squared range: the overlaps of equal and halved boxes are exact", "[box]") {
  // Areas of 4e38 overflow float (3.4e38): computed in double, an equal pair is 1, not 0 or NaN.
  const Box huge{0, 0, 2e19f, 2e19f}, left{0, 0, 1e19f, 2e19f};
  for (BoxMetric m : {BoxMetric::IoU, BoxMetric::IoS, BoxMetric::GIoU, BoxMetric::DIoU}) CHECK(overlap(huge, huge, m) == 1.f);
  CHECK(iou(huge, left) == 0.5f);
  CHECK(ios(huge, left) == 1.f);
  CHECK(giou(huge, left) == 0.5f);
  CHECK(diou(huge, left) == Approx(0.5 - 0.25e38 / 8e38));  // centres 5e18 apart, diagonal^2 8e38
}

TEST_CASE("DIoU of sub-pixel boxes agrees with torchvision's (1e-7 added to the diagonal)", "[box]") {
  // Two points 1e-4 apart: diagonal^2 = 2e-8, so the eps dominates, as in torchvision.
  const Box a{0, 0, 0, 0}, b{1e-4f, 1e-4f, 1e-4f, 1e-4f};
  CHECK(diou(a, b) == Approx(-2e-8 / (2e-8 + 1e-7)).epsilon(1e-4));
}

TEST_CASE("matrix and aligned forms agree with the pair functions", "[box]") {
  const std::vector<Box> a{{0, 0, 10, 10}, {5, 5, 20, 20}}, b{{5, 0, 15, 10}, {0, 0, 10, 10}, {100, 100, 110, 110}};
  const OverlapMatrix m = overlap_matrix(a, b, BoxMetric::IoU);
  REQUIRE(m.rows() == 2);
  REQUIRE(m.cols() == 3);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) CHECK(m(i, j) == iou(a[i], b[j]));
  const auto aligned = overlap_aligned(a, Span<Box>(b.data(), 2), BoxMetric::GIoU);
  CHECK(aligned == std::vector<float>{giou(a[0], b[0]), giou(a[1], b[1])});
  CHECK(overlap_matrix({}, b, BoxMetric::IoU).rows() == 0);
  CHECK_THROWS_WITH(overlap_aligned(a, b, BoxMetric::IoU), Contains("same length") && Contains("2 and 3"));
}

TEST_CASE("format conversions round-trip", "[box]") {
  const std::array<float, 4> xyxy{10, 20, 40, 60};
  CHECK(convert_box(xyxy, BoxFormat::XYXY, BoxFormat::XYWH) == std::array<float, 4>{10, 20, 30, 40});
  CHECK(convert_box(xyxy, BoxFormat::XYXY, BoxFormat::CXCYWH) == std::array<float, 4>{25, 40, 30, 40});
  CHECK(convert_box({25, 40, 30, 40}, BoxFormat::CXCYWH, BoxFormat::XYWH) == std::array<float, 4>{10, 20, 30, 40});
  CHECK(parse_box_format("cxcywh") == BoxFormat::CXCYWH);
  CHECK_THROWS_AS(parse_box_format("yxyx"), std::invalid_argument);
}

TEST_CASE("clipping to the image", "[box]") {
  CHECK(clip_box({-5, 10, 700, 500}, 640, 480) == Box{0, 10, 640, 480});
}

TEST_CASE("invalid boxes are named with their index and value", "[box][errors]") {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(validate_boxes(std::vector<Box>{{0, 0, 1, 1}, {0, nan, 1, 1}}, "boxes"),
                    Contains("boxes[1]") && Contains("finite"));
  CHECK_THROWS_WITH(validate_boxes(std::vector<Box>{{0, 0, inf, 1}}, "b"), Contains("b[0]"));
  CHECK_THROWS_WITH(validate_boxes(std::vector<Box>{{5, 0, 1, 1}}, "boxes"), Contains("x2 >= x1"));
  CHECK_THROWS_AS(parse_box_metric("dice"), std::invalid_argument);
}

TEST_CASE("long thin boxes whose extent squared overflows float keep their DIoU and GIoU", "[box]") {
  // Areas of 2e19 fit float, the enclosing diagonal (2e19)^2 does not: centres 1e19 apart over a squared
  // diagonal of 4e38 (+1) is a penalty of 0.25, and the IoU is 1 / 2e19.
  const Box wide{0, 0, 2e19f, 1}, unit{0, 0, 1, 1};
  CHECK(diou(wide, unit) == Approx(-0.25).margin(1e-6));
  CHECK(giou(wide, unit) == Approx(0.0).margin(1e-6));
  CHECK(iou(wide, wide) == 1.f);
}
