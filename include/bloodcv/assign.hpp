// Label assignment: which anchors learn which cell during training. One class per strategy behind
// LabelAssigner, one shared AssignResult (as mmdetection's assigners). Inputs and outputs are torch
// tensors, on the CPU or on CUDA; the strategies are written with ATen operations, so they run on the
// inputs' device. Python reaches them as bloodcv.assign.* (torch.ops.bloodcv.* underneath).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

namespace bloodcv {

// Codes in AssignResult::gt_index besides ground-truth indices.
inline constexpr std::int64_t kBackground = -1;  // a negative: learns "no cell"
inline constexpr std::int64_t kIgnore = -2;      // takes no part in the loss

struct AssignInput {
  at::Tensor anchors;    // [A, 4] xyxy
  at::Tensor gt_boxes;   // [G, 4] xyxy
  at::Tensor gt_labels;  // [G] integers (any integer type), on the anchors' device like every tensor here
  at::Tensor pred_boxes;   // [A, 4] decoded predictions (PAA, OT); undefined when unused
  at::Tensor pred_scores;  // [A, C] class probabilities in [0, 1] (PAA, OT); undefined when unused
  std::vector<std::int64_t> anchors_per_level;  // sizes of the FPN levels, in anchor order (ATSS, PAA)
};

struct AssignResult {
  at::Tensor gt_index;  // [A] int64: ground-truth index, kBackground or kIgnore
  at::Tensor overlaps;  // [A] float: IoU with the assigned box (background: the best IoU of any box)
  at::Tensor labels;    // [A] int64: the assigned box's label, -1 otherwise
  at::Tensor weights;   // [A] float: soft weight of the assignment (PAA: positive posterior, OT: transport mass; others 1 for positives)
  std::int64_t num_gts = 0;
};

class LabelAssigner {
 public:
  virtual ~LabelAssigner() = default;
  virtual AssignResult assign(const AssignInput& input) const = 0;
};

// Pairwise IoU [N, M] of xyxy boxes, as ATen operations (zero-area pairs give 0).
at::Tensor box_iou(const at::Tensor& a, const at::Tensor& b);

// RetinaNet's rule: IoU >= pos → positive, < neg → background, between → ignored; with
// match_low_quality, each box also claims the anchors of its best IoU (if above min_pos_iou).
struct MaxIoUOptions {
  double pos_iou_threshold = 0.5;
  double neg_iou_threshold = 0.4;
  double min_pos_iou = 0.0;
  bool match_low_quality = true;
};

class MaxIoUAssigner final : public LabelAssigner {
 public:
  explicit MaxIoUAssigner(MaxIoUOptions options = {});
  AssignResult assign(const AssignInput& input) const override;

 private:
  MaxIoUOptions options_;
};

// ATSS (Zhang et al. 2020): per level the top_k anchors nearest each box's centre are candidates; the
// IoU threshold is their mean + standard deviation; a positive's centre must lie inside the box; an
// anchor claimed by several boxes goes to the one of highest IoU.
struct AtssOptions {
  std::int64_t top_k = 9;
};

class AtssAssigner final : public LabelAssigner {
 public:
  explicit AtssAssigner(AtssOptions options = {});
  AssignResult assign(const AssignInput& input) const override;

 private:
  AtssOptions options_;
};

// PAA (Kim and Lee 2020): candidates are the anchors whose best box is this one with IoU >= 0.1 (as
// mmdetection's PAA); their score is class probability × IoU(predicted box, box)^lambda; per level the
// top_k scores are kept, and a two-component 1-D Gaussian mixture fitted by EM (means initialised at the
// lowest and highest score, as the reference; variances at the scores' variance) splits positives (the
// high component, posterior > 0.5) from negatives. With ignore_band (the bone-marrow thesis' rule), the
// components' means s1 < s2 split three ways instead: below s1 negative, from s1 to below s2 ignored
// (kIgnore: neither taught "cell" nor "no cell"), from s2 up positive, so that the ambiguous middle teaches
// nothing either way.
struct PaaOptions {
  std::int64_t top_k = 9;
  double iou_lambda = 1.0;
  double candidate_iou = 0.1;
  int em_iterations = 100;
  double em_tolerance = 1e-3;
  bool ignore_band = false;
};

class PaaAssigner final : public LabelAssigner {
 public:
  explicit PaaAssigner(PaaOptions options = {});
  AssignResult assign(const AssignInput& input) const override;

 private:
  PaaOptions options_;
};

// A two-component Gaussian mixture on 1-D data fitted by EM, as scikit-learn's GaussianMixture does it
// (full covariances, reg_covar 1e-6, stop when the mean log-likelihood changes by less than tolerance).
struct Gmm1d {
  double weights[2], means[2], variances[2];
  int iterations = 0;
  bool converged = false;
};
Gmm1d fit_gmm_1d(const std::vector<double>& x, Gmm1d init, int max_iterations = 100, double tolerance = 1e-3);
// Posterior probability of component 1 for each value.
std::vector<double> gmm_posterior(const Gmm1d& gmm, const std::vector<double>& x);

// OTA (Ge et al. 2021): each box supplies k positive labels (k = max(1, floor(sum of its top_q IoUs
// with the predicted boxes))), the background supplies the rest; cost = classification BCE +
// lambda · (1 - IoU), plus center_prior_cost for anchors whose centre lies outside the box; the plan
// is Sinkhorn-Knopp with entropic regularisation epsilon, in the log domain; each anchor takes the
// supplier that sends it the most.
struct OtaOptions {
  double epsilon = 0.1;
  int iterations = 50;
  std::int64_t top_q = 20;
  double reg_lambda = 3.0;
  bool center_prior = true;
  double center_prior_cost = 1e5;
};

class OtaAssigner final : public LabelAssigner {
 public:
  explicit OtaAssigner(OtaOptions options = {});
  AssignResult assign(const AssignInput& input) const override;

 private:
  OtaOptions options_;
};

// A strategy by name with its default options, as training configs name them: "max_iou", "atss", "paa",
// "ota" (bloodcv.assign.make_assigner in Python). std::invalid_argument for another name.
std::unique_ptr<LabelAssigner> make_assigner(std::string_view name);

// Entropic optimal transport between `supply` [S] and `demand` [D] (equal totals) for `cost` [S, D]:
// the plan [S, D], by Sinkhorn-Knopp on log potentials (no under- or overflow for extreme costs).
at::Tensor sinkhorn_log(const at::Tensor& cost, const at::Tensor& supply, const at::Tensor& demand, double epsilon, int iterations);

}  // namespace bloodcv
