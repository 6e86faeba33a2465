#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>

#include "bloodcv/nms.hpp"

using namespace bloodcv;
using Catch::Matchers::Contains;
using Keep = std::vector<std::int64_t>;

namespace {

// O(N^2) greedy NMS as the textbook states it: the reference the grid-based version must equal.
Keep reference_nms(const std::vector<Box>& boxes, const std::vector<float>& scores, const std::vector<std::int64_t>& labels,
                   double threshold) {
  std::vector<std::int64_t> order(boxes.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<std::int64_t>(i);
  std::sort(order.begin(), order.end(), [&](auto a, auto b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); });
  std::vector<bool> removed(boxes.size());
  Keep keep;
  for (std::size_t r = 0; r < order.size(); ++r) {
    const auto i = order[r];
    if (removed[i]) continue;
    keep.push_back(i);
    for (std::size_t s = r + 1; s < order.size(); ++s) {
      const auto j = order[s];
      if ((labels.empty() || labels[i] == labels[j]) && iou(boxes[i], boxes[j]) > threshold) removed[j] = true;
    }
  }
  return keep;
}

}  // namespace

TEST_CASE("hard NMS on known boxes", "[nms]") {
  const std::vector<Box> boxes{{0, 0, 10, 10}, {1, 0, 11, 10}, {20, 20, 30, 30}};
  const std::vector<float> scores{0.9f, 0.8f, 0.7f};
  CHECK(nms(boxes, scores, 0.5) == Keep{0, 2});
  CHECK(nms(boxes, scores, 0.9) == Keep{0, 1, 2});  // IoU 90/110 = 0.818 is not above 0.9
  CHECK(batched_nms(boxes, scores, std::vector<std::int64_t>{0, 1, 0}, 0.5) == Keep{0, 1, 2});
  CHECK(batched_nms(boxes, scores, std::vector<std::int64_t>{3, 3, 3}, 0.5) == Keep{0, 2});
}

TEST_CASE("hard NMS with a threshold per label", "[nms]") {
  // Two pairs at IoU 60/140 = 0.43: label 0's pair, label 1's pair, and a label 2 beyond the list.
  const std::vector<Box> boxes{{0, 0, 10, 10}, {4, 0, 14, 10}, {0, 50, 10, 60}, {4, 50, 14, 60}, {0, 90, 10, 100}, {4, 90, 14, 100}};
  const std::vector<float> scores{0.9f, 0.8f, 0.9f, 0.8f, 0.9f, 0.8f};
  const std::vector<std::int64_t> labels{0, 0, 1, 1, 2, 2};
  HardNmsOptions o;
  o.iou_threshold = 0.45;
  CHECK(HardNms(o).suppress({boxes, scores, labels}).keep == Keep{0, 2, 4, 1, 3, 5});
  o.class_iou_thresholds = {0.3, 0.45};  // label 0 stricter; label 2 has none: iou_threshold
  CHECK(HardNms(o).suppress({boxes, scores, labels}).keep == Keep{0, 2, 4, 3, 5});
  o.iou_threshold = 0.4;  // the fallback now suppresses label 2's second box; label 1 keeps its own 0.45
  CHECK(HardNms(o).suppress({boxes, scores, labels}).keep == Keep{0, 2, 4, 3});
  o.class_iou_thresholds = {1.0, 1.0};  // nothing suppressed for labels 0 and 1
  CHECK(HardNms(o).suppress({boxes, scores, labels}).keep == Keep{0, 2, 4, 1, 3});
  IouAwareNmsOptions aware{0.5f, o};
  aware.nms.class_iou_thresholds = {0.3, 0.45};
  aware.nms.iou_threshold = 0.45;
  const std::vector<float> predicted(6, 1.f);
  CHECK(IouAwareNms(aware).suppress({boxes, scores, labels, predicted}).keep == Keep{0, 2, 4, 3, 5});
  o.class_aware = false;
  CHECK_THROWS_WITH(HardNms(o), Contains("class-aware"));
  o.class_aware = true;
  o.class_iou_thresholds = {0.3, 1.5};
  CHECK_THROWS_WITH(HardNms(o), Contains("class_iou_thresholds[1]"));
}

TEST_CASE("NMS edge cases: empty, one box, identical boxes, zero-area boxes, ties", "[nms]") {
  CHECK(nms({}, {}, 0.5).empty());
  CHECK(nms(std::vector<Box>{{1, 1, 2, 2}}, std::vector<float>{0.1f}, 0.5) == Keep{0});
  const std::vector<Box> same{{0, 0, 5, 5}, {0, 0, 5, 5}, {0, 0, 5, 5}};
  CHECK(nms(same, std::vector<float>{0.2f, 0.9f, 0.5f}, 0.5) == Keep{1});
  // Equal scores rank by index: the first box survives.
  CHECK(nms(same, std::vector<float>{0.5f, 0.5f, 0.5f}, 0.5) == Keep{0});
  const std::vector<Box> points{{3, 3, 3, 3}, {3, 3, 3, 3}};
  CHECK(nms(points, std::vector<float>{0.5f, 0.4f}, 0.0) == Keep{0, 1});  // zero area: IoU 0, never suppressed
  // Ties among non-overlapping boxes come out by index.
  const std::vector<Box> apart{{0, 0, 1, 1}, {5, 5, 6, 6}, {9, 9, 10, 10}};
  CHECK(nms(apart, std::vector<float>{0.5f, 0.7f, 0.5f}, 0.5) == Keep{1, 0, 2});
}

TEST_CASE("hard NMS options: metric, score threshold, max detections", "[nms]") {
  const std::vector<Box> boxes{{0, 0, 10, 10}, {6, 0, 10, 10}, {50, 50, 60, 60}};
  const std::vector<float> scores{0.9f, 0.8f, 0.3f};
  HardNmsOptions o;
  o.metric = BoxMetric::IoS;  // box 1 lies inside box 0: IoS 1, IoU 0.4
  CHECK(HardNms(o).suppress({boxes, scores}).keep == Keep{0, 2});
  o.metric = BoxMetric::IoU;
  CHECK(HardNms(o).suppress({boxes, scores}).keep == Keep{0, 1, 2});
  o.score_threshold = 0.5f;
  CHECK(HardNms(o).suppress({boxes, scores}).keep == Keep{0, 1});
  o.score_threshold = -1;
  o.max_detections = 1;
  const Suppression s = HardNms(o).suppress({boxes, scores});
  CHECK(s.keep == Keep{0});
  CHECK(s.boxes == std::vector<Box>{boxes[0]});
  CHECK(s.scores == std::vector<float>{0.9f});
}

TEST_CASE("grid-based NMS equals the O(N^2) reference on random boxes", "[nms]") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 600);
    const float extent = trial % 2 ? 100.f : 3000.f;  // clustered and spread
    std::uniform_real_distribution<float> pos(0, extent), size(1, 60), score(0, 1);
    std::vector<Box> boxes;
    std::vector<float> scores;
    std::vector<std::int64_t> labels;
    for (int i = 0; i < n; ++i) {
      const float x = pos(rng), y = pos(rng);
      boxes.push_back({x, y, x + size(rng), y + size(rng)});
      scores.push_back(std::round(score(rng) * 20) / 20);  // many ties
      labels.push_back(static_cast<std::int64_t>(rng() % 3));
    }
    const double threshold = (trial % 5) / 5.0;
    CHECK(nms(boxes, scores, threshold) == reference_nms(boxes, scores, {}, threshold));
    CHECK(batched_nms(boxes, scores, labels, threshold) == reference_nms(boxes, scores, labels, threshold));
  }
}

TEST_CASE("Soft-NMS decays overlapping scores as hand-computed", "[nms][soft]") {
  const std::vector<Box> boxes{{0, 0, 10, 10}, {1, 0, 11, 10}, {20, 20, 30, 30}};
  const std::vector<float> scores{0.9f, 0.8f, 0.7f};
  const float overlap = 90.f / 110.f;
  SoftNmsOptions o;
  o.method = SoftNmsMethod::Linear;
  Suppression s = SoftNms(o).suppress({boxes, scores});
  CHECK(s.keep == Keep{0, 2, 1});
  REQUIRE(s.scores.size() == 3);
  CHECK(s.scores[2] == Approx(0.8 * (1 - overlap)));
  CHECK(s.scores[1] == Approx(0.7));

  o.method = SoftNmsMethod::Gaussian;
  s = SoftNms(o).suppress({boxes, scores});
  CHECK(s.keep == Keep{0, 2, 1});
  CHECK(s.scores[2] == Approx(0.8 * std::exp(-overlap * overlap / 0.5)));

  o.score_threshold = 0.25f;  // the decayed box (0.21) falls below and is dropped
  CHECK(SoftNms(o).suppress({boxes, scores}).keep == Keep{0, 2});
}

TEST_CASE("Soft-NMS drops a box whose score decays to zero", "[nms][soft]") {
  // Linear decay of an identical box multiplies its score by 1 - IoU = 0.
  const std::vector<Box> boxes{{0, 0, 10, 10}, {0, 0, 10, 10}, {30, 0, 40, 10}};
  SoftNmsOptions o;
  o.method = SoftNmsMethod::Linear;
  o.iou_threshold = 0.5;
  const Suppression s = SoftNms(o).suppress({boxes, std::vector<float>{0.9f, 0.85f, 0.5f}});
  CHECK(s.keep == Keep{0, 2});  // identical box: 1 - IoU = 0, dropped
}

TEST_CASE("IoU-aware NMS ranks by score^(1-a) * iou^a", "[nms]") {
  const std::vector<Box> boxes{{0, 0, 10, 10}, {1, 0, 11, 10}};
  const std::vector<float> scores{0.9f, 0.8f}, ious{0.25f, 1.0f};
  const Suppression s = IouAwareNms().suppress({boxes, scores, {}, ious});
  CHECK(s.keep == Keep{1});  // sqrt(0.8 * 1.0) = 0.894 beats sqrt(0.9 * 0.25) = 0.474
  CHECK(s.scores[0] == Approx(std::sqrt(0.8)));
  CHECK_THROWS_WITH(IouAwareNms().suppress({boxes, scores}), Contains("predicted_ious"));
  // alpha 0.2, where swapped exponents would choose the other box: 0.9^0.8 * 0.5^0.2 = 0.800 beats
  // 0.5^0.8 * 1^0.2 = 0.574 (swapped: 0.562 against 0.871).
  IouAwareNmsOptions o;
  o.alpha = 0.2f;
  const std::vector<float> scores2{0.9f, 0.5f}, ious2{0.5f, 1.0f};
  const Suppression a = IouAwareNms(o).suppress({boxes, scores2, {}, ious2});
  CHECK(a.keep == Keep{0});
  CHECK(a.scores[0] == Approx(std::pow(0.9, 0.8) * std::pow(0.5, 0.2)));
}

TEST_CASE("weighted box fusion on a hand-computed pair", "[nms][wbf]") {
  const std::vector<Box> boxes{{0, 0, 10, 10}, {1, 0, 11, 10}, {40, 40, 50, 50}};
  const std::vector<float> scores{0.9f, 0.6f, 0.3f};
  const Suppression s = WeightedBoxFusion().suppress({boxes, scores});
  REQUIRE(s.keep == Keep{0, 2});
  CHECK(s.boxes[0].x1 == Approx(0.4));   // (0.9 * 0 + 0.6 * 1) / 1.5
  CHECK(s.boxes[0].x2 == Approx(10.4));  // (0.9 * 10 + 0.6 * 11) / 1.5
  CHECK(s.boxes[0].y2 == Approx(10));
  CHECK(s.scores[0] == Approx(0.75));
  CHECK(s.boxes[1] == boxes[2]);

  WeightedBoxFusionOptions two_models;
  two_models.num_models = 2;  // a lone box from one of two models counts half
  const Suppression t = WeightedBoxFusion(two_models).suppress({boxes, scores});
  CHECK(t.scores[0] == Approx(0.75));
  CHECK(t.scores[1] == Approx(0.15));
  // Different labels never fuse.
  CHECK(WeightedBoxFusion().suppress({boxes, scores, std::vector<std::int64_t>{0, 1, 0}}).keep.size() == 3);
}

TEST_CASE("non-max merging: greedy and full", "[nms][nmm]") {
  // A seam: the part of a cell cut by a tile edge lies inside the whole cell.
  const std::vector<Box> seam{{0, 0, 10, 10}, {6, 0, 10, 10}};
  Suppression s = NonMaxMerge().suppress({seam, std::vector<float>{0.5f, 0.9f}});
  CHECK(s.keep == Keep{1});
  CHECK(s.boxes == std::vector<Box>{{0, 0, 10, 10}});
  CHECK(s.scores == std::vector<float>{0.9f});

  // A chain A-B-C where only neighbours match (IoU 1/3 > 0.3).
  const std::vector<Box> chain{{0, 0, 10, 10}, {5, 0, 15, 10}, {10, 0, 20, 10}};
  const std::vector<float> scores{0.9f, 0.8f, 0.7f};
  NonMaxMergeOptions o;
  o.metric = BoxMetric::IoU;
  o.match_threshold = 0.3;
  s = NonMaxMerge(o).suppress({chain, scores});
  CHECK(s.keep == Keep{0, 2});
  CHECK(s.boxes == std::vector<Box>{{0, 0, 15, 10}, {10, 0, 20, 10}});
  o.greedy = false;
  s = NonMaxMerge(o).suppress({chain, scores});
  CHECK(s.keep == Keep{0});
  CHECK(s.boxes == std::vector<Box>{{0, 0, 20, 10}});
  CHECK(s.scores == std::vector<float>{0.9f});
}

TEST_CASE("suppress() on detections keeps the leader's fields", "[nms]") {
  std::vector<Detection> dets(2);
  dets[0].box = {0, 0, 10, 10};
  dets[0].score = 0.6f;
  dets[0].label = 2;
  dets[0].predicted_iou = 0.7f;
  dets[1].box = {1, 0, 11, 10};
  dets[1].score = 0.4f;
  const auto out = suppress(HardNms(), dets);
  REQUIRE(out.size() == 2);  // different labels
  CHECK(out[0].predicted_iou == 0.7f);
  dets[1].label = 2;
  CHECK(suppress(HardNms(), dets).size() == 1);
  CHECK(suppress(HardNms(), {}).empty());
}

TEST_CASE("at IoU threshold 1 nothing is suppressed: 10^5 identical boxes all kept, by index", "[nms]") {
  const std::vector<Box> boxes(100000, Box{0, 0, 10, 10});
  const std::vector<float> scores(boxes.size(), 0.5f);
  const std::vector<std::int64_t> keep = nms(boxes, scores, 1.0);
  REQUIRE(keep.size() == boxes.size());
  for (std::size_t i = 0; i < keep.size(); ++i) REQUIRE(keep[i] == static_cast<std::int64_t>(i));
  HardNmsOptions capped;
  capped.iou_threshold = 1.0;
  capped.max_detections = 3;
  ScoredBoxes in;
  in.boxes = boxes;
  in.scores = scores;
  CHECK(HardNms(capped).suppress(in).keep == std::vector<std::int64_t>{0, 1, 2});
}

TEST_CASE("an infinite score is refused by every suppressor, not fused into NaN", "[nms][errors]") {
  const std::vector<Box> boxes{{0, 0, 10, 10}, {1, 1, 11, 11}};
  const std::vector<float> scores{std::numeric_limits<float>::infinity(), 0.5f};
  ScoredBoxes in;
  in.boxes = boxes;
  in.scores = scores;
  const std::vector<std::shared_ptr<const Suppressor>> all{std::make_shared<HardNms>(), std::make_shared<SoftNms>(),
                                                           std::make_shared<IouAwareNms>(), std::make_shared<WeightedBoxFusion>(),
                                                           std::make_shared<NonMaxMerge>()};
  for (const auto& s : all) CHECK_THROWS_WITH(s->suppress(in), Contains("scores[0] is inf: scores must be finite"));
}

TEST_CASE("bad NMS input and parameters name the argument and value", "[nms][errors]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Box> boxes{{0, 0, 1, 1}};
  CHECK_THROWS_WITH(nms(boxes, std::vector<float>{0.5f, 0.4f}, 0.5), Contains("scores has 2") && Contains("boxes has 1"));
  CHECK_THROWS_WITH(nms(boxes, std::vector<float>{nan}, 0.5), Contains("scores[0] is nan: scores must be finite"));
  CHECK_THROWS_WITH(nms(std::vector<Box>{{0, 0, nan, 1}}, std::vector<float>{1}, 0.5), Contains("boxes[0]"));
  CHECK_THROWS_WITH(nms(std::vector<Box>{{2, 0, 1, 1}}, std::vector<float>{1}, 0.5), Contains("x2 >= x1"));
  CHECK_THROWS_WITH(nms(boxes, std::vector<float>{1}, 1.5), Contains("iou_threshold") && Contains("1.5"));
  CHECK_THROWS_WITH(nms(boxes, std::vector<float>{1}, -0.1), Contains("iou_threshold"));
  CHECK_THROWS_WITH(batched_nms(boxes, std::vector<float>{1}, std::vector<std::int64_t>{}, 0.5), Contains("labels has 0"));
  SoftNmsOptions soft;
  soft.sigma = 0;
  CHECK_THROWS_WITH(SoftNms(soft), Contains("sigma"));
  HardNmsOptions hard;
  hard.max_detections = -5;
  CHECK_THROWS_WITH(HardNms(hard), Contains("max_detections") && Contains("-5"));
  WeightedBoxFusionOptions wbf;
  wbf.num_models = 0;
  CHECK_THROWS_WITH(WeightedBoxFusion(wbf), Contains("num_models"));
  CHECK_THROWS_WITH(WeightedBoxFusion().suppress({boxes, std::vector<float>{-1}}), Contains("scores[0]"));
  CHECK_THROWS_WITH(IouAwareNms().suppress({boxes, std::vector<float>{1}, {}, std::vector<float>{2}}),
                    Contains("predicted_ious[0]"));
  NonMaxMergeOptions nmm;
  nmm.match_threshold = std::nan("");
  CHECK_THROWS_WITH(NonMaxMerge(nmm), Contains("match_threshold"));
}
