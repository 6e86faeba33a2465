// The assigners from C++, on the hand-computed cases of tests/python/test_assign.py.
#include <ATen/ATen.h>
#undef CHECK  // glog's, through ATen: Catch2's is meant here

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "bloodcv/assign.hpp"

using namespace bloodcv;
using Catch::Matchers::Contains;

namespace {

at::Tensor boxes(std::vector<std::array<float, 4>> rows) {
  at::Tensor t = at::empty({static_cast<std::int64_t>(rows.size()), 4}, at::kFloat);
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (int k = 0; k < 4; ++k) t[static_cast<std::int64_t>(i)][k] = rows[i][static_cast<std::size_t>(k)];
  return t;
}

std::vector<std::int64_t> values(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  return {c.data_ptr<std::int64_t>(), c.data_ptr<std::int64_t>() + c.numel()};
}

at::Tensor longs(std::vector<std::int64_t> v) { return at::tensor(v, at::kLong); }

}  // namespace

TEST_CASE("max-IoU assigner, hand-computed", "[assign]") {
  const at::Tensor anchors = boxes({{0, 0, 10, 10}, {5, 0, 15, 10}, {20, 20, 30, 30}, {100, 100, 110, 110}, {0, 0, 10, 22}, {200, 200, 210, 210}});
  const at::Tensor gt = boxes({{0, 0, 10, 10}, {21, 21, 31, 31}, {200, 200, 204, 204}});
  const AssignResult r = MaxIoUAssigner().assign({anchors, gt, longs({3, 1, 2})});
  CHECK(values(r.gt_index) == std::vector<std::int64_t>{0, kBackground, 1, kBackground, kIgnore, 2});
  CHECK(values(r.labels) == std::vector<std::int64_t>{3, -1, 1, -1, -1, 2});
  CHECK(r.overlaps[4].item<float>() == Approx(100.0 / 220.0));
  CHECK(r.num_gts == 3);
}

TEST_CASE("ATSS assigner: threshold mean + std per box", "[assign]") {
  const at::Tensor anchors = boxes({{0, 0, 10, 10}, {10, 0, 20, 10}, {20, 0, 30, 10}, {30, 0, 40, 10}});
  const at::Tensor gt = boxes({{0, 0, 20, 10}});
  CHECK(values(AtssAssigner({2}).assign({anchors, gt, longs({0})}).gt_index) == std::vector<std::int64_t>{0, 0, kBackground, kBackground});
  CHECK(values(AtssAssigner({3}).assign({anchors, gt, longs({0})}).gt_index) == std::vector<std::int64_t>(4, kBackground));
}

TEST_CASE("PAA assigner: EM splits two clusters of scores", "[assign]") {
  const at::Tensor gt = boxes({{0, 0, 40, 40}});
  std::vector<std::array<float, 4>> rows;
  for (int i = 0; i < 8; ++i) rows.push_back({i * 2.f, 0, 40 + i * 2.f, 40});
  const at::Tensor anchors = boxes(rows);
  const at::Tensor p = at::tensor(std::vector<float>{0.92f, 0.88f, 0.9f, 0.12f, 0.1f, 0.15f, 0.11f, 0.86f});
  const AssignResult r = PaaAssigner().assign({anchors, gt, longs({0}), gt.repeat({8, 1}), at::stack({p, 1 - p}, 1)});
  CHECK(values(r.gt_index) == std::vector<std::int64_t>{0, 0, 0, kBackground, kBackground, kBackground, kBackground, 0});
}

TEST_CASE("PAA's ignore band: below the low mean negative, between the means ignored, from the high mean positive", "[assign]") {
  const at::Tensor gt = boxes({{0, 0, 40, 40}});
  std::vector<std::array<float, 4>> rows;
  for (int i = 0; i < 8; ++i) rows.push_back({i * 2.f, 0, 40 + i * 2.f, 40});
  // Predicted boxes on the box (IoU 1): the scores are the class probabilities. Clusters: high 0.92 0.88 0.95 0.85
  // (mean 0.9), low 0.13 0.10 0.16 0.11 (mean 0.125).
  const at::Tensor p = at::tensor(std::vector<float>{0.92f, 0.88f, 0.95f, 0.13f, 0.10f, 0.16f, 0.11f, 0.85f});
  const AssignInput input{boxes(rows), gt, longs({0}), gt.repeat({8, 1}), at::stack({p, 1 - p}, 1)};
  PaaOptions band;
  band.ignore_band = true;
  CHECK(values(PaaAssigner(band).assign(input).gt_index) ==
        std::vector<std::int64_t>{0, kIgnore, 0, kIgnore, kBackground, kIgnore, kBackground, kIgnore});
  CHECK(values(PaaAssigner().assign(input).gt_index) ==
        std::vector<std::int64_t>{0, 0, 0, kBackground, kBackground, kBackground, kBackground, 0});
}

TEST_CASE("GMM by EM recovers two separated components", "[assign]") {
  std::vector<double> x;
  for (int i = 0; i < 50; ++i) x.push_back(0.2 + 0.01 * (i % 5));
  for (int i = 0; i < 30; ++i) x.push_back(0.8 + 0.01 * (i % 3));
  const Gmm1d g = fit_gmm_1d(x, Gmm1d{{0.5, 0.5}, {0.2, 0.82}, {0.01, 0.01}});
  CHECK(g.converged);
  CHECK(g.means[0] == Approx(0.22).margin(1e-3));
  CHECK(g.means[1] == Approx(0.81).margin(1e-3));
  CHECK(g.weights[0] == Approx(50.0 / 80.0).margin(1e-3));
  CHECK_THROWS_WITH(fit_gmm_1d({1.0}, g), Contains("at least 2"));
}

TEST_CASE("OT assigner and log-domain Sinkhorn", "[assign]") {
  const at::Tensor gt = boxes({{0, 0, 40, 40}, {100, 0, 140, 40}});
  const at::Tensor anchors = boxes({{2, 2, 38, 38}, {4, 0, 40, 36}, {102, 2, 138, 38}, {100, 4, 136, 40}, {60, 0, 80, 20}});
  const at::Tensor scores = at::tensor(std::vector<float>{0.9f, 0.05f, 0.8f, 0.1f, 0.05f, 0.9f, 0.1f, 0.85f, 0.05f, 0.05f}).reshape({5, 2});
  const AssignResult r = OtaAssigner().assign({anchors, gt, longs({0, 1}), anchors, scores});
  CHECK(values(r.gt_index) == std::vector<std::int64_t>{0, kBackground, 1, kBackground, kBackground});

  const at::Tensor cost = at::tensor(std::vector<double>{0, 1e6, 1e6, 1e6, 0, 1e6, 5, 5, 0}).reshape({3, 3});
  const at::Tensor plan = sinkhorn_log(cost, at::ones({3}, at::kDouble), at::ones({3}, at::kDouble), 0.1, 50);
  CHECK(at::isfinite(plan).all().item<bool>());
  CHECK(at::allclose(plan, at::eye(3, at::kDouble), 0, 1e-6));
  CHECK_THROWS_WITH(sinkhorn_log(cost, at::ones({2}, at::kDouble), at::ones({3}, at::kDouble), 0.1, 5), Contains("supply [S]"));
}

TEST_CASE("assigners reject bad input", "[assign][errors]") {
  const at::Tensor a = boxes({{0, 0, 10, 10}});
  CHECK_THROWS_WITH(MaxIoUAssigner().assign({a, at::zeros({2, 3}), at::zeros({2}, at::kLong)}), Contains("gt_boxes must have shape [N, 4]"));
  CHECK_THROWS_WITH(AtssAssigner().assign({a, a, longs({0}), {}, {}, {5}}), Contains("sums to more than the 1 anchors (a count of 5)"));
  CHECK_THROWS_WITH(AtssAssigner().assign({boxes({{0, 0, 10, 10}, {0, 0, 10, 10}}), a, longs({0}), {}, {}, {1}}), Contains("sums to 1 but there are 2"));
  CHECK_THROWS_WITH(PaaAssigner().assign({a, a, longs({0})}), Contains("pred_boxes is required"));
  CHECK_THROWS_WITH(OtaAssigner({0.0}), Contains("epsilon"));
  CHECK(values(MaxIoUAssigner().assign({a, at::zeros({0, 4}), at::zeros({0}, at::kLong)}).gt_index) == std::vector<std::int64_t>{kBackground});
}

TEST_CASE("assigners take tensors as they come: devices, label types, strides", "[assign][errors]") {
  const at::Tensor a = boxes({{0, 0, 10, 10}, {20, 20, 30, 30}, {0, 0, 12, 12}});
  const at::Tensor gt = boxes({{0, 0, 10, 10}});
  // No CUDA tensor can be made on a CPU build; the meta device stands for "not the anchors' device".
  CHECK_THROWS_WITH(MaxIoUAssigner().assign({a.to(at::kMeta), gt, longs({1})}), Contains("anchors are on device 'meta'"));
  CHECK_THROWS_WITH(MaxIoUAssigner().assign({a, gt.to(at::kMeta), longs({1})}), Contains("gt_boxes is on 'meta' but anchors are on 'cpu'"));
  CHECK_THROWS_WITH(OtaAssigner().assign({a, gt, longs({0}), a, at::full({3, 1}, 0.5).to(at::kMeta)}), Contains("pred_scores is on 'meta'"));
  CHECK_THROWS_WITH(MaxIoUAssigner().assign({a, gt, at::full({1}, 1.5)}), Contains("gt_labels must be integers, got Float"));
  CHECK_THROWS_WITH(MaxIoUAssigner().assign({a.to(at::kInt), gt, longs({1})}), Contains("anchors must be floating point, got Int"));
  // int32 labels, double boxes and anchors that are a strided view give the result of the plain inputs.
  const AssignResult plain = MaxIoUAssigner().assign({a, gt, longs({1})});
  const at::Tensor strided = at::stack({a, a + 1}, 2).select(2, 0);
  REQUIRE_FALSE(strided.is_contiguous());
  for (const AssignResult& r : {MaxIoUAssigner().assign({strided, gt, longs({1}).to(at::kInt)}),
                                MaxIoUAssigner().assign({a.to(at::kDouble), gt.to(at::kDouble), longs({1})})}) {
    CHECK(values(r.gt_index) == values(plain.gt_index));
    CHECK(values(r.labels) == std::vector<std::int64_t>{1, -1, 1});
    CHECK(r.overlaps.to(at::kFloat).allclose(plain.overlaps));
  }
}

TEST_CASE("inputs that once overflowed, inverted or gave NaN are refused", "[assign][errors]") {
  const at::Tensor a = boxes({{0, 0, 10, 10}, {5, 5, 15, 15}});
  const at::Tensor p = at::tensor(std::vector<float>{0.9f, 0.2f}).reshape({2, 1});
  // Two counts of 2^63 - 1 once wrapped to a sum of -2 and passed the check.
  const std::int64_t big = std::numeric_limits<std::int64_t>::max();
  CHECK_THROWS_WITH(PaaAssigner().assign({a, a.narrow(0, 0, 1), longs({0}), a, p, {big, big}}), Contains("sums to more than the 2 anchors"));
  // ATSS assigned 5 of 6 inverted anchors with overlap 0.
  CHECK_THROWS_WITH(AtssAssigner().assign({boxes({{0, 0, 10, 10}, {20, 0, 10, 10}}), a.narrow(0, 0, 1), longs({0})}),
                    Contains("anchors[1] is inverted"));
  CHECK_THROWS_WITH(MaxIoUAssigner().assign({a, boxes({{0, 10, 10, 0}}), longs({0})}), Contains("gt_boxes[0] is inverted"));
  // OTA with an infinite centre prior gave every anchor to box 0 with NaN weights.
  for (const double cost : {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN(), -1.0}) {
    OtaOptions o;
    o.center_prior_cost = cost;
    CHECK_THROWS_WITH(OtaAssigner(o), Contains("center_prior_cost must be finite and >= 0"));
  }
  const std::vector<double> x{0.1, 0.2, 0.8, 0.9};
  const Gmm1d init{{0.5, 0.5}, {0.1, 0.9}, {0.01, 0.01}};
  CHECK_THROWS_WITH(fit_gmm_1d(x, init, -5), Contains("max_iterations must be >= 1, got -5"));
  CHECK_THROWS_WITH(fit_gmm_1d({0.1, std::nan(""), 0.9}, init), Contains("x[1] is nan"));
  CHECK_THROWS_WITH(fit_gmm_1d(x, Gmm1d{{0.5, 0.5}, {0.1, 0.9}, {0.0, 0.01}}), Contains("initial component 0"));
  const at::Tensor cost = at::tensor(std::vector<double>{0, std::nan(""), 1, 0}).reshape({2, 2});
  CHECK_THROWS_WITH(sinkhorn_log(cost, at::ones({2}, at::kDouble), at::ones({2}, at::kDouble), 0.1, 5), Contains("cost holds NaN"));
  CHECK_THROWS_WITH(sinkhorn_log(at::zeros({2, 2}, at::kDouble), -at::ones({2}, at::kDouble), at::ones({2}, at::kDouble), 0.1, 5),
                    Contains("supply must not be negative"));
}

TEST_CASE("assigners by name, as configs name them", "[assign]") {
  CHECK(dynamic_cast<const MaxIoUAssigner*>(make_assigner("max_iou").get()) != nullptr);
  CHECK(dynamic_cast<const AtssAssigner*>(make_assigner("atss").get()) != nullptr);
  CHECK(dynamic_cast<const PaaAssigner*>(make_assigner("paa").get()) != nullptr);
  CHECK(dynamic_cast<const OtaAssigner*>(make_assigner("ota").get()) != nullptr);
  CHECK_THROWS_WITH(make_assigner("hungarian"), Catch::Matchers::Contains("unknown assigner 'hungarian'"));
}
