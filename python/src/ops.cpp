// torch.ops.bloodcv.*: the label assigners as TorchScript operators, so Python training loops (and
// TorchScript) call them on tensors of any device. bloodcv.assign wraps them in classes.
#include <algorithm>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "bloodcv/assign.hpp"

namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Argument errors become Python ValueError.
template <class F>
auto checked(F&& f) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

Result as_tuple(const bloodcv::AssignResult& r) { return {r.gt_index, r.overlaps, r.labels, r.weights}; }

bloodcv::AssignInput input(const at::Tensor& anchors, const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                           const c10::optional<at::Tensor>& pred_boxes = {}, const c10::optional<at::Tensor>& pred_scores = {},
                           c10::IntArrayRef anchors_per_level = {}) {
  return {anchors, gt_boxes, gt_labels, pred_boxes.value_or(at::Tensor()), pred_scores.value_or(at::Tensor()),
          std::vector<std::int64_t>(anchors_per_level.begin(), anchors_per_level.end())};
}

Result max_iou_assign(const at::Tensor& anchors, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, double pos, double neg, double min_pos,
                      bool low_quality) {
  return checked([&] { return as_tuple(bloodcv::MaxIoUAssigner({pos, neg, min_pos, low_quality}).assign(input(anchors, gt_boxes, gt_labels))); });
}

Result atss_assign(const at::Tensor& anchors, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, c10::IntArrayRef per_level, std::int64_t top_k) {
  return checked([&] { return as_tuple(bloodcv::AtssAssigner({top_k}).assign(input(anchors, gt_boxes, gt_labels, {}, {}, per_level))); });
}

Result paa_assign(const at::Tensor& anchors, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& pred_boxes,
                  const at::Tensor& pred_scores, c10::IntArrayRef per_level, std::int64_t top_k, double iou_lambda, double candidate_iou,
                  std::int64_t em_iterations, double em_tolerance) {
  return checked([&] {
    const bloodcv::PaaOptions o{top_k, iou_lambda, candidate_iou, static_cast<int>(em_iterations), em_tolerance};
    return as_tuple(bloodcv::PaaAssigner(o).assign(input(anchors, gt_boxes, gt_labels, pred_boxes, pred_scores, per_level)));
  });
}

Result ota_assign(const at::Tensor& anchors, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& pred_boxes,
                  const at::Tensor& pred_scores, double epsilon, std::int64_t iterations, std::int64_t top_q, double reg_lambda, bool center_prior,
                  double center_prior_cost) {
  return checked([&] {
    const bloodcv::OtaOptions o{epsilon, static_cast<int>(iterations), top_q, reg_lambda, center_prior, center_prior_cost};
    return as_tuple(bloodcv::OtaAssigner(o).assign(input(anchors, gt_boxes, gt_labels, pred_boxes, pred_scores)));
  });
}

at::Tensor sinkhorn_log(const at::Tensor& cost, const at::Tensor& supply, const at::Tensor& demand, double epsilon, std::int64_t iterations) {
  return checked([&] { return bloodcv::sinkhorn_log(cost, supply, demand, epsilon, static_cast<int>(iterations)); });
}

// [w0, w1, m0, m1, v0, v1, iterations] of the fitted mixture, from the same order of initial values.
at::Tensor gmm_fit_1d(const at::Tensor& x, const at::Tensor& init, std::int64_t max_iterations, double tolerance) {
  return checked([&] {
    const at::Tensor xs = x.to(at::kCPU, at::kDouble).contiguous(), in = init.to(at::kCPU, at::kDouble).contiguous();
    TORCH_CHECK_VALUE(in.numel() == 6, "init must hold [w0, w1, m0, m1, v0, v1]");
    const double* i = in.data_ptr<double>();
    const bloodcv::Gmm1d g = bloodcv::fit_gmm_1d(std::vector<double>(xs.data_ptr<double>(), xs.data_ptr<double>() + xs.numel()),
                                                 bloodcv::Gmm1d{{i[0], i[1]}, {i[2], i[3]}, {i[4], i[5]}}, static_cast<int>(max_iterations), tolerance);
    at::Tensor out = at::empty({7}, at::kDouble);
    double* o = out.data_ptr<double>();
    const double values[] = {g.weights[0], g.weights[1], g.means[0], g.means[1], g.variances[0], g.variances[1], double(g.iterations)};
    std::copy(values, values + 7, o);
    return out;
  });
}

}  // namespace

TORCH_LIBRARY(bloodcv, m) {
  m.def("max_iou_assign(Tensor anchors, Tensor gt_boxes, Tensor gt_labels, float pos_iou_threshold, float neg_iou_threshold, "
        "float min_pos_iou, bool match_low_quality) -> (Tensor, Tensor, Tensor, Tensor)", &max_iou_assign);
  m.def("atss_assign(Tensor anchors, Tensor gt_boxes, Tensor gt_labels, int[] anchors_per_level, int top_k) -> (Tensor, Tensor, Tensor, Tensor)",
        &atss_assign);
  m.def("paa_assign(Tensor anchors, Tensor gt_boxes, Tensor gt_labels, Tensor pred_boxes, Tensor pred_scores, int[] anchors_per_level, "
        "int top_k, float iou_lambda, float candidate_iou, int em_iterations, float em_tolerance) -> (Tensor, Tensor, Tensor, Tensor)", &paa_assign);
  m.def("ota_assign(Tensor anchors, Tensor gt_boxes, Tensor gt_labels, Tensor pred_boxes, Tensor pred_scores, float epsilon, int iterations, "
        "int top_q, float reg_lambda, bool center_prior, float center_prior_cost) -> (Tensor, Tensor, Tensor, Tensor)", &ota_assign);
  m.def("sinkhorn_log(Tensor cost, Tensor supply, Tensor demand, float epsilon, int iterations) -> Tensor", &sinkhorn_log);
  m.def("gmm_fit_1d(Tensor x, Tensor init, int max_iterations, float tolerance) -> Tensor", &gmm_fit_1d);
}
