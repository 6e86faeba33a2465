// torch.ops.bloodcv.*: the label assigners and NMS as TorchScript operators, so Python training loops (and
// TorchScript) call them on tensors. bloodcv.assign wraps the assigners in classes; bloodcv.nms and
// bloodcv.batched_nms call the NMS operators for torch tensors.
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "bloodcv/assign.hpp"
#include "bloodcv/nms.hpp"

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

// Iteration counts arrive as TorchScript's int64; the library counts in int. Refused rather than wrapped
// (2^32 became 0 iterations, 2^31 a negative count).
int iteration_count(std::int64_t value, const char* name) {
  if (value > std::numeric_limits<int>::max() || value < std::numeric_limits<int>::min())
    throw std::invalid_argument(std::string(name) + " must be at most " + std::to_string(std::numeric_limits<int>::max()) + ", got " +
                                std::to_string(value));
  return static_cast<int>(value);
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
                  std::int64_t em_iterations, double em_tolerance, bool ignore_band) {
  return checked([&] {
    const bloodcv::PaaOptions o{top_k, iou_lambda, candidate_iou, iteration_count(em_iterations, "em_iterations"), em_tolerance,
                                ignore_band};
    return as_tuple(bloodcv::PaaAssigner(o).assign(input(anchors, gt_boxes, gt_labels, pred_boxes, pred_scores, per_level)));
  });
}

Result ota_assign(const at::Tensor& anchors, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& pred_boxes,
                  const at::Tensor& pred_scores, double epsilon, std::int64_t iterations, std::int64_t top_q, double reg_lambda, bool center_prior,
                  double center_prior_cost) {
  return checked([&] {
    const bloodcv::OtaOptions o{epsilon, iteration_count(iterations, "iterations"), top_q, reg_lambda, center_prior, center_prior_cost};
    return as_tuple(bloodcv::OtaAssigner(o).assign(input(anchors, gt_boxes, gt_labels, pred_boxes, pred_scores)));
  });
}

at::Tensor sinkhorn_log(const at::Tensor& cost, const at::Tensor& supply, const at::Tensor& demand, double epsilon, std::int64_t iterations) {
  return checked([&] { return bloodcv::sinkhorn_log(cost, supply, demand, epsilon, iteration_count(iterations, "iterations")); });
}

// [w0, w1, m0, m1, v0, v1, iterations] of the fitted mixture, from the same order of initial values.
at::Tensor gmm_fit_1d(const at::Tensor& x, const at::Tensor& init, std::int64_t max_iterations, double tolerance) {
  return checked([&] {
    const at::Tensor xs = x.to(at::kCPU, at::kDouble).contiguous(), in = init.to(at::kCPU, at::kDouble).contiguous();
    TORCH_CHECK_VALUE(in.numel() == 6, "init must hold [w0, w1, m0, m1, v0, v1]");
    const double* i = in.data_ptr<double>();
    const bloodcv::Gmm1d g = bloodcv::fit_gmm_1d(std::vector<double>(xs.data_ptr<double>(), xs.data_ptr<double>() + xs.numel()),
                                                 bloodcv::Gmm1d{{i[0], i[1]}, {i[2], i[3]}, {i[4], i[5]}}, iteration_count(max_iterations, "max_iterations"), tolerance);
    at::Tensor out = at::empty({7}, at::kDouble);
    double* o = out.data_ptr<double>();
    const double values[] = {g.weights[0], g.weights[1], g.means[0], g.means[1], g.variances[0], g.variances[1], double(g.iterations)};
    std::copy(values, values + 7, o);
    return out;
  });
}

// NMS runs on the CPU in float32, bloodcv::Box's precision. Any floating dtype is taken (float64
// coordinates are rounded to float32, which moves no decision for boxes of fewer than 2^24 pixels);
// tensors on another device are refused rather than copied behind the caller's back.
at::Tensor float_boxes(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "bloodcv NMS runs on the CPU, but ", name, " is on ", t.device(),
                    ": call .cpu() first (torchvision.ops.nms runs on CUDA)");
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ", t.scalar_type());
  return t.to(at::kFloat).contiguous();
}

bloodcv::Span<bloodcv::Box> box_span(const at::Tensor& boxes) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must be (N, 4), got ", boxes.sizes());
  return {reinterpret_cast<const bloodcv::Box*>(boxes.data_ptr<float>()), static_cast<std::size_t>(boxes.size(0))};
}

bloodcv::Span<float> score_span(const at::Tensor& scores) {
  TORCH_CHECK_VALUE(scores.dim() == 1, "scores must be (N,), got ", scores.sizes());
  return {scores.data_ptr<float>(), static_cast<std::size_t>(scores.numel())};
}

at::Tensor keep_tensor(const std::vector<std::int64_t>& keep) {
  return at::tensor(at::ArrayRef<std::int64_t>(keep), at::kLong).reshape({static_cast<std::int64_t>(keep.size())});
}

at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  const at::Tensor b = float_boxes(boxes, "boxes"), s = float_boxes(scores, "scores");
  return checked([&] { return keep_tensor(bloodcv::nms(box_span(b), score_span(s), iou_threshold)); });
}

at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold) {
  const at::Tensor b = float_boxes(boxes, "boxes"), s = float_boxes(scores, "scores");
  TORCH_CHECK_VALUE(idxs.device().is_cpu(), "bloodcv NMS runs on the CPU, but idxs is on ", idxs.device(), ": call .cpu() first");
  TORCH_CHECK_VALUE(!at::isFloatingType(idxs.scalar_type()) && idxs.scalar_type() != at::kBool,
                    "idxs must be an integer tensor, got ", idxs.scalar_type());
  TORCH_CHECK_VALUE(idxs.dim() == 1, "idxs must be (N,), got ", idxs.sizes());
  const at::Tensor l = idxs.to(at::kLong).contiguous();
  const bloodcv::Span<std::int64_t> labels{l.data_ptr<std::int64_t>(), static_cast<std::size_t>(l.numel())};
  return checked([&] { return keep_tensor(bloodcv::batched_nms(box_span(b), score_span(s), labels, iou_threshold)); });
}

}  // namespace

TORCH_LIBRARY(bloodcv, m) {
  m.def("max_iou_assign(Tensor anchors, Tensor gt_boxes, Tensor gt_labels, float pos_iou_threshold, float neg_iou_threshold, "
        "float min_pos_iou, bool match_low_quality) -> (Tensor, Tensor, Tensor, Tensor)", &max_iou_assign);
  m.def("atss_assign(Tensor anchors, Tensor gt_boxes, Tensor gt_labels, int[] anchors_per_level, int top_k) -> (Tensor, Tensor, Tensor, Tensor)",
        &atss_assign);
  m.def("paa_assign(Tensor anchors, Tensor gt_boxes, Tensor gt_labels, Tensor pred_boxes, Tensor pred_scores, int[] anchors_per_level, "
        "int top_k, float iou_lambda, float candidate_iou, int em_iterations, float em_tolerance, bool ignore_band) "
        "-> (Tensor, Tensor, Tensor, Tensor)", &paa_assign);
  m.def("ota_assign(Tensor anchors, Tensor gt_boxes, Tensor gt_labels, Tensor pred_boxes, Tensor pred_scores, float epsilon, int iterations, "
        "int top_q, float reg_lambda, bool center_prior, float center_prior_cost) -> (Tensor, Tensor, Tensor, Tensor)", &ota_assign);
  m.def("sinkhorn_log(Tensor cost, Tensor supply, Tensor demand, float epsilon, int iterations) -> Tensor", &sinkhorn_log);
  m.def("gmm_fit_1d(Tensor x, Tensor init, int max_iterations, float tolerance) -> Tensor", &gmm_fit_1d);
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor", &nms);
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor", &batched_nms);
}
