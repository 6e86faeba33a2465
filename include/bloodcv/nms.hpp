// The NMS family behind one interface, so a pipeline swaps strategies without changing its code.
//
// Every strategy ranks boxes by score, highest first; equal scores rank by lower input index first
// (a deterministic rule: torchvision's own order for ties comes from its sort and is not specified).
// Candidates are found through a uniform grid over the boxes, so on boxes spread over a slide the
// cost grows about linearly with their number; no strategy builds an N×N matrix.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "bloodcv/box.hpp"
#include "bloodcv/span.hpp"

namespace bloodcv {

// Column views of the input; labels and predicted IoUs are optional (empty span).
struct ScoredBoxes {
  Span<Box> boxes;
  Span<float> scores;
  Span<std::int64_t> labels;  // empty: every box has the same class
  Span<float> predicted_ious;  // empty: the detector predicts none

  // Throws std::invalid_argument on mismatched lengths, non-finite or inverted boxes, NaN scores or
  // predicted IoUs outside [0, 1].
  void validate() const;
};

// What a strategy keeps: indices into the input in rank order, with the output box and score of each.
// Boxes differ from the input where the strategy merges (WBF, NMM); scores where it rescores
// (Soft-NMS decays, IoU-aware ranking, WBF averages).
struct Suppression {
  std::vector<std::int64_t> keep;
  std::vector<Box> boxes;
  std::vector<float> scores;
};

class Suppressor {
 public:
  virtual ~Suppressor() = default;
  virtual Suppression suppress(const ScoredBoxes& input) const = 0;
};

// Applies a strategy to detections: the kept ones in rank order, with merged boxes and new scores;
// label and predicted IoU come from the kept (highest-ranked) member.
std::vector<Detection> suppress(const Suppressor& suppressor, const std::vector<Detection>& detections);

constexpr std::int64_t kNoLimit = -1;

struct HardNmsOptions {
  double iou_threshold = 0.5;            // suppress when overlap > threshold, in [0, 1]
  BoxMetric metric = BoxMetric::IoU;   // DIoU gives DIoU-NMS; IoS suits boxes cut by tile seams
  bool class_aware = true;              // boxes of different labels never suppress each other
  float score_threshold = -std::numeric_limits<float>::infinity();  // drop boxes scoring below
  std::int64_t max_detections = kNoLimit;
  // A threshold per label index (class-aware only): cells of one type can be allowed more overlap than
  // another's (red cells overlap in thick areas, white cells lie apart). Empty, or a label beyond its end:
  // iou_threshold.
  std::vector<double> class_iou_thresholds;
};

class HardNms final : public Suppressor {
 public:
  explicit HardNms(HardNmsOptions options = {});
  Suppression suppress(const ScoredBoxes& input) const override;
  const HardNmsOptions& options() const { return options_; }

 private:
  HardNmsOptions options_;
};

// Soft-NMS (Bodla et al. 2017): overlapping boxes lose score instead of being removed.
enum class SoftNmsMethod { Linear, Gaussian };

struct SoftNmsOptions {
  SoftNmsMethod method = SoftNmsMethod::Gaussian;
  double iou_threshold = 0.3;     // Linear: decay by (1 - IoU) only above this
  float sigma = 0.5f;            // Gaussian: decay by exp(-IoU^2 / sigma)
  float score_threshold = 0.001f;  // boxes whose decayed score falls below are dropped
  bool class_aware = true;
  std::int64_t max_detections = kNoLimit;
};

class SoftNms final : public Suppressor {
 public:
  explicit SoftNms(SoftNmsOptions options = {});
  Suppression suppress(const ScoredBoxes& input) const override;
  const SoftNmsOptions& options() const { return options_; }

 private:
  SoftNmsOptions options_;
};

// IoU-aware ranking (as in IoU-aware RetinaNet): rank by score^(1 - alpha) * predicted_iou^alpha, then
// hard NMS on that ranking. Needs predicted IoUs; the kept scores are the ranking scores.
struct IouAwareNmsOptions {
  float alpha = 0.5f;
  HardNmsOptions nms;
};

class IouAwareNms final : public Suppressor {
 public:
  explicit IouAwareNms(IouAwareNmsOptions options = {});
  Suppression suppress(const ScoredBoxes& input) const override;
  const IouAwareNmsOptions& options() const { return options_; }

 private:
  IouAwareNmsOptions options_;
};

// Weighted boxes fusion (Solovyev et al. 2021): each box joins the cluster whose fused box it overlaps
// most (IoU > threshold, same label) or starts one; a fused box is the score-weighted mean of its
// members, its score the mean member score times min(members, num_models) / num_models.
// keep[i] is the top-ranked member of cluster i; clusters are ordered by fused score.
struct WeightedBoxFusionOptions {
  double iou_threshold = 0.55;
  double skip_box_threshold = 0;    // boxes scoring below take no part
  int num_models = 1;              // how many models' predictions were pooled
};

class WeightedBoxFusion final : public Suppressor {
 public:
  explicit WeightedBoxFusion(WeightedBoxFusionOptions options = {});
  Suppression suppress(const ScoredBoxes& input) const override;
  const WeightedBoxFusionOptions& options() const { return options_; }

 private:
  WeightedBoxFusionOptions options_;
};

// Non-max merging (as SAHI's NMM): boxes that match are merged into the enclosing box of the group
// instead of being dropped; the group keeps its top-ranked member's score and label.
// Greedy: a group is a kept box of hard NMS (metric > threshold) and the boxes it suppressed, each
// suppressed box joining the highest-ranked kept box it matches.
// Full: groups are the connected components of the "matches" relation, so chains merge too.
struct NonMaxMergeOptions {
  double match_threshold = 0.5;
  BoxMetric metric = BoxMetric::IoS;
  bool greedy = true;
  bool class_aware = true;
};

class NonMaxMerge final : public Suppressor {
 public:
  explicit NonMaxMerge(NonMaxMergeOptions options = {});
  Suppression suppress(const ScoredBoxes& input) const override;
  const NonMaxMergeOptions& options() const { return options_; }

 private:
  NonMaxMergeOptions options_;
};

// torchvision.ops.nms: kept indices, by decreasing score; suppress when IoU > iou_threshold.
std::vector<std::int64_t> nms(Span<Box> boxes, Span<float> scores, double iou_threshold);
// torchvision.ops.batched_nms: the same, never across labels.
std::vector<std::int64_t> batched_nms(Span<Box> boxes, Span<float> scores, Span<std::int64_t> labels,
                                      double iou_threshold);

}  // namespace bloodcv
