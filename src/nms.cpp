#include "bloodcv/nms.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <queue>

#include "box_grid.hpp"
#include "check.hpp"
#include "ranking.hpp"

namespace bloodcv {

using detail::BoxGrid;
using detail::check_positive;
using detail::check_unit_interval;
using detail::fail_argument;
using detail::rank_by_score;
using detail::ranks_of;
using detail::RankedGroups;

void ScoredBoxes::validate() const {
  if (scores.size() != boxes.size())
    fail_argument("scores has {} entries but boxes has {}", scores.size(), boxes.size());
  if (!labels.empty() && labels.size() != boxes.size())
    fail_argument("labels has {} entries but boxes has {}", labels.size(), boxes.size());
  if (!predicted_ious.empty() && predicted_ious.size() != boxes.size())
    fail_argument("predicted_ious has {} entries but boxes has {}", predicted_ious.size(), boxes.size());
  if (boxes.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    fail_argument("at most 2^31 - 1 boxes are supported, got {}", boxes.size());
  validate_boxes(boxes, "boxes");
  for (std::size_t i = 0; i < scores.size(); ++i)
    if (!std::isfinite(scores[i])) fail_argument("scores[{}] is {}: scores must be finite", i, scores[i]);
  for (std::size_t i = 0; i < predicted_ious.size(); ++i)
    if (!(predicted_ious[i] >= 0.f && predicted_ious[i] <= 1.f))
      fail_argument("predicted_ious[{}] = {} must be in [0, 1]", i, predicted_ious[i]);
}

namespace {

bool same_class(const ScoredBoxes& in, bool class_aware, std::int32_t i, std::int32_t j) {
  return !class_aware || in.labels.empty() || in.labels[static_cast<std::size_t>(i)] == in.labels[static_cast<std::size_t>(j)];
}

// The overlap above which a box is suppressed: its label's own threshold where one is given.
struct SuppressionThreshold {
  double fallback;
  const std::vector<double>& by_label;

  double of(const ScoredBoxes& in, std::int32_t i) const {
    if (by_label.empty() || in.labels.empty()) return fallback;
    const std::int64_t label = in.labels[static_cast<std::size_t>(i)];
    return label >= 0 && label < static_cast<std::int64_t>(by_label.size()) ? by_label[static_cast<std::size_t>(label)] : fallback;
  }
  bool suppresses_none() const {
    return fallback >= 1.0 && std::all_of(by_label.begin(), by_label.end(), [](double t) { return t >= 1.0; });
  }
};

// Greedy NMS over a ranking: a box is kept unless a kept box ranked before it matches it
// (metric > threshold). Only kept boxes enter the grid, so dense clusters cost no more than the few
// boxes they keep. With `leader`, every suppressed box records the highest-ranked kept box it matches.
std::vector<std::int32_t> greedy_suppress(const ScoredBoxes& in, const std::vector<std::int32_t>& order,
                                          const SuppressionThreshold& threshold, BoxMetric metric, bool class_aware,
                                          std::int64_t max_detections, std::vector<std::int32_t>* leader) {
  std::vector<std::int32_t> kept;
  BoxGrid grid(in.boxes);
  std::vector<std::int32_t> rank;
  if (leader) {
    leader->assign(in.boxes.size(), -1);
    rank = ranks_of(order, in.boxes.size());
  }
  // No overlap measure exceeds 1, so at threshold 1 nothing is suppressed; the search would still compare
  // every pair of coinciding boxes (10^5 identical boxes took 30 s).
  if (threshold.suppresses_none()) {
    const std::size_t n = max_detections == kNoLimit ? order.size() : std::min(order.size(), static_cast<std::size_t>(max_detections));
    return {order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n)};
  }
  for (const std::int32_t i : order) {
    if (max_detections != kNoLimit && static_cast<std::int64_t>(kept.size()) >= max_detections) break;
    const Box& box = in.boxes[static_cast<std::size_t>(i)];
    const double box_threshold = threshold.of(in, i);
    std::int32_t best = -1;
    grid.visit(box, [&](std::int32_t k, const Box& kept_box) {
      if (!same_class(in, class_aware, i, k) || !(overlap(kept_box, box, metric) > box_threshold))
        return false;
      if (!leader) {
        best = k;
        return true;  // one match suppresses: stop looking
      }
      if (best < 0 || rank[static_cast<std::size_t>(k)] < rank[static_cast<std::size_t>(best)]) best = k;
      return false;
    });
    if (best >= 0) {
      if (leader) (*leader)[static_cast<std::size_t>(i)] = best;
      continue;
    }
    kept.push_back(i);
    grid.insert(i, box);
  }
  return kept;
}

Suppression kept_as_is(const ScoredBoxes& in, const std::vector<std::int32_t>& kept, Span<float> scores) {
  Suppression out;
  out.keep.reserve(kept.size());
  out.boxes.reserve(kept.size());
  out.scores.reserve(kept.size());
  for (const std::int32_t i : kept) {
    out.keep.push_back(i);
    out.boxes.push_back(in.boxes[static_cast<std::size_t>(i)]);
    out.scores.push_back(scores[static_cast<std::size_t>(i)]);
  }
  return out;
}

void check_max_detections(std::int64_t max_detections) {
  if (max_detections != kNoLimit && max_detections < 0)
    fail_argument("max_detections must be >= 0 or -1 (no limit), got {}", max_detections);
}

void check_hard_nms(const HardNmsOptions& o) {
  check_unit_interval(o.iou_threshold, "iou_threshold");
  if (std::isnan(o.score_threshold)) fail_argument("score_threshold is NaN");
  check_max_detections(o.max_detections);
  if (!o.class_iou_thresholds.empty() && !o.class_aware)
    fail_argument("class_iou_thresholds need class-aware suppression: across labels no one threshold is the box's own");
  for (std::size_t k = 0; k < o.class_iou_thresholds.size(); ++k)
    check_unit_interval(o.class_iou_thresholds[k], fmt::format("class_iou_thresholds[{}]", k));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
HardNms::HardNms(HardNmsOptions options) : options_(options) { check_hard_nms(options_); }

Suppression HardNms::suppress(const ScoredBoxes& in) const {
  in.validate();
  const auto order = rank_by_score(in.scores, options_.score_threshold);
  const auto kept = greedy_suppress(in, order, {options_.iou_threshold, options_.class_iou_thresholds}, options_.metric,
                                    options_.class_aware, options_.max_detections, nullptr);
  return kept_as_is(in, kept, in.scores);
}

// ---------------------------------------------------------------------------------------------------
SoftNms::SoftNms(SoftNmsOptions options) : options_(options) {
  check_unit_interval(options_.iou_threshold, "iou_threshold");
  check_positive(options_.sigma, "sigma");
  if (!std::isfinite(options_.score_threshold)) fail_argument("score_threshold must be finite, got {}", options_.score_threshold);
  check_max_detections(options_.max_detections);
}

Suppression SoftNms::suppress(const ScoredBoxes& in) const {
  in.validate();
  const std::size_t n = in.boxes.size();
  std::vector<float> score(in.scores.begin(), in.scores.end());
  std::vector<char> done(n, 0);  // kept, or dropped below the score threshold

  // Max-heap of (score, index), higher score first and lower index on ties. Scores only decay, so an
  // entry whose score no longer matches is stale and skipped.
  using Entry = std::pair<float, std::int32_t>;
  auto lower = [](const Entry& a, const Entry& b) { return a.first < b.first || (a.first == b.first && a.second > b.second); };
  std::priority_queue<Entry, std::vector<Entry>, decltype(lower)> heap(lower);
  BoxGrid grid(in.boxes);
  for (std::size_t i = 0; i < n; ++i) {
    if (score[i] < options_.score_threshold) {
      done[i] = 1;
      continue;
    }
    heap.emplace(score[i], static_cast<std::int32_t>(i));
    grid.insert(static_cast<std::int32_t>(i), in.boxes[i]);
  }

  std::vector<std::int32_t> kept;
  while (!heap.empty()) {
    if (options_.max_detections != kNoLimit && static_cast<std::int64_t>(kept.size()) >= options_.max_detections) break;
    const float s = heap.top().first;  // named, not a structured binding: the lambda below captures i
    const std::int32_t i = heap.top().second;
    heap.pop();
    const auto ui = static_cast<std::size_t>(i);
    if (done[ui] || s != score[ui]) continue;
    done[ui] = 1;
    kept.push_back(i);
    grid.visit(in.boxes[ui], [&](std::int32_t j, const Box& other) {
      const auto uj = static_cast<std::size_t>(j);
      if (done[uj] || !same_class(in, options_.class_aware, i, j)) return false;
      const float v = iou(in.boxes[ui], other);
      const float weight = options_.method == SoftNmsMethod::Linear ? (v > options_.iou_threshold ? 1.f - v : 1.f)
                                                                     : std::exp(-(v * v) / options_.sigma);
      if (weight >= 1.f) return false;
      score[uj] *= weight;
      if (score[uj] < options_.score_threshold)
        done[uj] = 1;
      else
        heap.emplace(score[uj], j);
      return false;
    });
  }
  return kept_as_is(in, kept, score);
}

// ---------------------------------------------------------------------------------------------------
IouAwareNms::IouAwareNms(IouAwareNmsOptions options) : options_(options) {
  check_unit_interval(options_.alpha, "alpha");
  check_hard_nms(options_.nms);
}

Suppression IouAwareNms::suppress(const ScoredBoxes& in) const {
  in.validate();
  if (in.predicted_ious.empty() && !in.boxes.empty())
    fail_argument("IoU-aware NMS needs predicted_ious (one per box), got none");
  std::vector<float> ranking(in.boxes.size());
  for (std::size_t i = 0; i < ranking.size(); ++i) {
    if (in.scores[i] < 0.f) fail_argument("IoU-aware NMS needs scores in [0, 1]; scores[{}] = {}", i, in.scores[i]);
    ranking[i] = std::pow(in.scores[i], 1.f - options_.alpha) * std::pow(in.predicted_ious[i], options_.alpha);
  }
  const auto order = rank_by_score(ranking, options_.nms.score_threshold);
  const auto kept = greedy_suppress(in, order, {options_.nms.iou_threshold, options_.nms.class_iou_thresholds},
                                    options_.nms.metric, options_.nms.class_aware, options_.nms.max_detections, nullptr);
  return kept_as_is(in, kept, ranking);
}

// ---------------------------------------------------------------------------------------------------
WeightedBoxFusion::WeightedBoxFusion(WeightedBoxFusionOptions options) : options_(options) {
  check_unit_interval(options_.iou_threshold, "iou_threshold");
  check_unit_interval(options_.skip_box_threshold, "skip_box_threshold");
  if (options_.num_models < 1) fail_argument("num_models must be >= 1, got {}", options_.num_models);
}

Suppression WeightedBoxFusion::suppress(const ScoredBoxes& in) const {
  in.validate();
  for (std::size_t i = 0; i < in.scores.size(); ++i)
    if (in.scores[i] < 0.f) fail_argument("weighted box fusion needs scores >= 0; scores[{}] = {}", i, in.scores[i]);

  struct Cluster {
    std::int32_t founder;  // top-ranked member
    double weighted[4] = {0, 0, 0, 0};  // score-weighted coordinate sums
    double score_sum = 0;
    int members = 0;
    Box fused;
  };
  std::vector<Cluster> clusters;
  const auto order = rank_by_score(in.scores, options_.skip_box_threshold);
  BoxGrid grid(in.boxes);
  for (const std::int32_t i : order) {
    const Box& box = in.boxes[static_cast<std::size_t>(i)];
    std::int32_t best = -1;
    double best_iou = options_.iou_threshold;
    grid.visit(box, [&](std::int32_t c, const Box&) {  // the stored box may be stale: read the cluster's
      const Cluster& cluster = clusters[static_cast<std::size_t>(c)];
      if (!same_class(in, true, i, cluster.founder)) return false;
      const float v = iou(cluster.fused, box);
      if (v > best_iou || (v == best_iou && best >= 0 && c < best)) {
        best = c;
        best_iou = v;
      }
      return false;
    });
    if (best < 0) {
      best = static_cast<std::int32_t>(clusters.size());
      clusters.push_back(Cluster{i});
    }
    Cluster& cluster = clusters[static_cast<std::size_t>(best)];
    const double w = in.scores[static_cast<std::size_t>(i)];
    cluster.weighted[0] += w * box.x1;
    cluster.weighted[1] += w * box.y1;
    cluster.weighted[2] += w * box.x2;
    cluster.weighted[3] += w * box.y2;
    cluster.score_sum += w;
    cluster.members += 1;
    const Box previous = cluster.fused;
    if (cluster.score_sum > 0) {
      cluster.fused = {static_cast<float>(cluster.weighted[0] / cluster.score_sum), static_cast<float>(cluster.weighted[1] / cluster.score_sum),
                       static_cast<float>(cluster.weighted[2] / cluster.score_sum), static_cast<float>(cluster.weighted[3] / cluster.score_sum)};
    } else {
      cluster.fused = in.boxes[static_cast<std::size_t>(cluster.founder)];  // all-zero scores: no weights to use
    }
    if (cluster.members == 1 || !grid.same_cells(previous, cluster.fused)) grid.insert(best, cluster.fused);
  }

  std::vector<float> fused_score(clusters.size());
  for (std::size_t c = 0; c < clusters.size(); ++c) {
    const Cluster& cl = clusters[c];
    const double models = options_.num_models;
    fused_score[c] = static_cast<float>(cl.score_sum / cl.members * std::min<double>(cl.members, models) / models);
  }
  // Clusters were created in rank order, so a stable sort keeps founders' rank among equal scores.
  std::vector<std::size_t> by_score(clusters.size());
  std::iota(by_score.begin(), by_score.end(), std::size_t{0});
  std::stable_sort(by_score.begin(), by_score.end(), [&](std::size_t a, std::size_t b) { return fused_score[a] > fused_score[b]; });

  Suppression out;
  for (const std::size_t c : by_score) {
    out.keep.push_back(clusters[c].founder);
    out.boxes.push_back(clusters[c].fused);
    out.scores.push_back(fused_score[c]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
NonMaxMerge::NonMaxMerge(NonMaxMergeOptions options) : options_(options) {
  check_unit_interval(options_.match_threshold, "match_threshold");
}

Suppression NonMaxMerge::suppress(const ScoredBoxes& in) const {
  in.validate();
  const auto order = rank_by_score(in.scores, -std::numeric_limits<float>::infinity());
  const std::size_t n = in.boxes.size();
  std::vector<std::int32_t> group_of(n);  // the top-ranked member of each box's group
  std::vector<std::int32_t> leaders;      // in rank order
  if (options_.greedy) {
    std::vector<std::int32_t> leader;
    const std::vector<double> no_label_thresholds;
    leaders = greedy_suppress(in, order, {options_.match_threshold, no_label_thresholds}, options_.metric, options_.class_aware,
                              kNoLimit, &leader);
    for (std::size_t i = 0; i < n; ++i) group_of[i] = leader[i] < 0 ? static_cast<std::int32_t>(i) : leader[i];
  } else {
    RankedGroups groups(ranks_of(order, n));
    BoxGrid grid(in.boxes);
    for (const std::int32_t i : order) {
      const Box& box = in.boxes[static_cast<std::size_t>(i)];
      grid.visit(box, [&](std::int32_t j, const Box& other) {
        if (same_class(in, options_.class_aware, i, j) && overlap(other, box, options_.metric) > options_.match_threshold)
          groups.unite(i, j);
        return false;
      });
      grid.insert(i, box);
    }
    for (std::size_t i = 0; i < n; ++i) group_of[i] = groups.leader(static_cast<std::int32_t>(i));
    for (const std::int32_t i : order)
      if (group_of[static_cast<std::size_t>(i)] == i) leaders.push_back(i);
  }

  const std::vector<Box> merged = detail::enclosing_boxes_of_groups(in.boxes, group_of);
  Suppression out = kept_as_is(in, leaders, in.scores);
  for (std::size_t k = 0; k < leaders.size(); ++k) out.boxes[k] = merged[static_cast<std::size_t>(leaders[k])];
  return out;
}

// ---------------------------------------------------------------------------------------------------
std::vector<Detection> suppress(const Suppressor& suppressor, const std::vector<Detection>& detections) {
  const std::size_t n = detections.size();
  std::vector<Box> boxes(n);
  std::vector<float> scores(n), ious;
  std::vector<std::int64_t> labels(n);
  const bool all_have_iou =
      n > 0 && std::all_of(detections.begin(), detections.end(), [](const Detection& d) { return d.predicted_iou.has_value(); });
  if (all_have_iou) ious.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    boxes[i] = detections[i].box;
    scores[i] = detections[i].score;
    labels[i] = detections[i].label;
    if (all_have_iou) ious[i] = *detections[i].predicted_iou;
  }
  const Suppression s = suppressor.suppress(ScoredBoxes{boxes, scores, labels, ious});
  std::vector<Detection> out;
  out.reserve(s.keep.size());
  for (std::size_t k = 0; k < s.keep.size(); ++k) {
    Detection d = detections[static_cast<std::size_t>(s.keep[k])];
    d.box = s.boxes[k];
    d.score = s.scores[k];
    out.push_back(std::move(d));
  }
  return out;
}

std::vector<std::int64_t> nms(Span<Box> boxes, Span<float> scores, double iou_threshold) {
  HardNmsOptions options;
  options.iou_threshold = iou_threshold;
  options.class_aware = false;
  return HardNms(options).suppress(ScoredBoxes{boxes, scores}).keep;
}

std::vector<std::int64_t> batched_nms(Span<Box> boxes, Span<float> scores, Span<std::int64_t> labels, double iou_threshold) {
  if (labels.size() != boxes.size()) fail_argument("labels has {} entries but boxes has {}", labels.size(), boxes.size());
  HardNmsOptions options;
  options.iou_threshold = iou_threshold;
  return HardNms(options).suppress(ScoredBoxes{boxes, scores, labels}).keep;
}

}  // namespace bloodcv
