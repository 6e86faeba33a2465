// Detection metrics follow pycocotools' COCOeval step by step (evaluateImg, accumulate, summarize), so
// the numbers agree with the standard evaluator; the comments name the step each part mirrors.
#include "bloodcv/eval.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "check.hpp"
#include "eval_internal.hpp"

namespace bloodcv::eval {

using bloodcv::detail::fail_argument;
using internal::box_area;
using internal::coco_iou;
using internal::threshold_index;

namespace {

constexpr int kRecallPoints = 101;  // COCO's recThrs: 0, 0.01, ..., 1


struct ClassImage {  // one class in one image
  std::vector<GroundTruthBox> gt;
  std::vector<Box> dt;
  std::vector<float> scores;
};

// COCOeval.evaluateImg for one image, class, area range and max detections.
struct ImageEval {
  std::vector<float> dt_scores;                 // sorted, at most max_det
  std::vector<std::vector<char>> dt_matched;    // [T][D]
  std::vector<std::vector<char>> dt_ignored;    // [T][D]
  std::vector<char> gt_ignored;                 // [G]
};

ImageEval evaluate_image(const ClassImage& ci, const AreaRange& area, int max_det, const std::vector<double>& thresholds) {
  ImageEval e;
  const std::size_t g_count = ci.gt.size();
  std::vector<char> g_ignore(g_count);
  for (std::size_t g = 0; g < g_count; ++g) {
    const double a = box_area(ci.gt[g].box);
    g_ignore[g] = ci.gt[g].ignore || a < area.min_area || a > area.max_area;
  }
  std::vector<std::size_t> gt_order(g_count);  // not-ignored first, stable
  std::iota(gt_order.begin(), gt_order.end(), std::size_t{0});
  std::stable_sort(gt_order.begin(), gt_order.end(), [&](std::size_t a, std::size_t b) { return g_ignore[a] < g_ignore[b]; });
  std::vector<std::size_t> dt_order(ci.dt.size());
  std::iota(dt_order.begin(), dt_order.end(), std::size_t{0});
  std::stable_sort(dt_order.begin(), dt_order.end(), [&](std::size_t a, std::size_t b) { return ci.scores[a] > ci.scores[b]; });
  if (dt_order.size() > static_cast<std::size_t>(max_det)) dt_order.resize(static_cast<std::size_t>(max_det));
  const std::size_t d_count = dt_order.size();

  const std::size_t t_count = thresholds.size();
  std::vector<std::vector<char>> gt_matched(t_count, std::vector<char>(g_count, 0));
  e.dt_matched.assign(t_count, std::vector<char>(d_count, 0));
  e.dt_ignored.assign(t_count, std::vector<char>(d_count, 0));
  for (std::size_t t = 0; t < t_count; ++t)
    for (std::size_t d = 0; d < d_count; ++d) {
      const Box& db = ci.dt[dt_order[d]];
      double best = std::min(thresholds[t], 1 - 1e-10);
      std::ptrdiff_t m = -1;
      for (std::size_t gi = 0; gi < g_count; ++gi) {
        const std::size_t g = gt_order[gi];
        if (gt_matched[t][gi] && !ci.gt[g].ignore) continue;  // taken, and only crowds match twice
        if (m > -1 && !g_ignore[gt_order[static_cast<std::size_t>(m)]] && g_ignore[g]) break;  // good match found; the rest are ignored
        const double v = coco_iou(db, ci.gt[g].box, ci.gt[g].ignore);
        if (v < best) continue;
        best = v;
        m = static_cast<std::ptrdiff_t>(gi);
      }
      if (m == -1) continue;
      e.dt_ignored[t][d] = g_ignore[gt_order[static_cast<std::size_t>(m)]];
      e.dt_matched[t][d] = 1;
      gt_matched[t][static_cast<std::size_t>(m)] = 1;
    }
  for (std::size_t d = 0; d < d_count; ++d) {  // unmatched detections outside the area range are ignored
    const double a = box_area(ci.dt[dt_order[d]]);
    const bool outside = a < area.min_area || a > area.max_area;
    for (std::size_t t = 0; t < t_count; ++t)
      if (!e.dt_matched[t][d] && outside) e.dt_ignored[t][d] = 1;
  }
  for (std::size_t d = 0; d < d_count; ++d) e.dt_scores.push_back(ci.scores[dt_order[d]]);
  for (std::size_t gi = 0; gi < g_count; ++gi) e.gt_ignored.push_back(g_ignore[gt_order[gi]]);
  return e;
}

// The detections of several images at one threshold, pooled and ranked as COCOeval.accumulate does.
struct Ranked {
  std::vector<float> scores;
  std::vector<char> tp, fp;  // ignored detections are neither
  int positives = 0;         // not-ignored ground truth
};

void append(Ranked& r, const ImageEval& e, std::size_t t, std::size_t max_det) {
  const std::size_t n = std::min(max_det, e.dt_scores.size());
  for (std::size_t d = 0; d < n; ++d) {
    r.scores.push_back(e.dt_scores[d]);
    r.tp.push_back(e.dt_matched[t][d] && !e.dt_ignored[t][d]);
    r.fp.push_back(!e.dt_matched[t][d] && !e.dt_ignored[t][d]);
  }
  for (const char ig : e.gt_ignored) r.positives += !ig;
}

void rank(Ranked& r) {  // np.argsort(-scores, kind='mergesort')
  std::vector<std::size_t> order(r.scores.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return r.scores[a] > r.scores[b]; });
  Ranked sorted;
  sorted.positives = r.positives;
  for (const std::size_t i : order) {
    sorted.scores.push_back(r.scores[i]);
    sorted.tp.push_back(r.tp[i]);
    sorted.fp.push_back(r.fp[i]);
  }
  r = std::move(sorted);
}

struct Curve {
  std::vector<double> precision, recall;  // cumulative, per ranked detection
};

Curve curve_of(const Ranked& r) {
  Curve c;
  double tp = 0, fp = 0;
  for (std::size_t i = 0; i < r.scores.size(); ++i) {
    tp += r.tp[i];
    fp += r.fp[i];
    c.recall.push_back(tp / r.positives);
    c.precision.push_back(tp / (fp + tp + std::numeric_limits<double>::epsilon()));
  }
  return c;
}

// The 101-point interpolated precision and the final recall (COCOeval.accumulate's inner loop).
std::pair<std::vector<double>, double> interpolate(Curve c) {
  std::vector<double> q(kRecallPoints, 0.0);
  const double recall = c.recall.empty() ? 0.0 : c.recall.back();
  for (std::size_t i = c.precision.size(); i-- > 1;)
    if (c.precision[i] > c.precision[i - 1]) c.precision[i - 1] = c.precision[i];
  for (int ri = 0; ri < kRecallPoints; ++ri) {
    const double threshold = ri * 0.01;  // np.linspace(0, 1, 101), value for value
    const auto it = std::lower_bound(c.recall.begin(), c.recall.end(), threshold);
    if (it != c.recall.end()) q[static_cast<std::size_t>(ri)] = c.precision[static_cast<std::size_t>(it - c.recall.begin())];
  }
  return {q, recall};
}

ThresholdRow best_f1(const Ranked& r, double iou) {
  ThresholdRow row;
  row.iou = iou;
  if (r.positives == 0) return row;
  const Curve c = curve_of(r);
  for (std::size_t i = 0; i < c.precision.size(); ++i) {
    const double p = c.precision[i], rc = c.recall[i];
    const double f1 = p + rc > 0 ? 2 * p * rc / (p + rc) : 0;
    if (f1 > row.f1) row = {iou, p, rc, f1, r.scores[i], -1};
  }
  return row;
}

double mean_defined(const std::vector<double>& values) {
  double sum = 0;
  int n = 0;
  for (const double v : values)
    if (v > -1) {
      sum += v;
      ++n;
    }
  return n ? sum / n : -1;
}


}  // namespace

double DetectionReport::metric(const std::string& name) const {
  for (const auto& [k, v] : coco)
    if (k == name) return v;
  fail_argument("no metric '{}' in the report", name);
}

DetectionReport evaluate_detections(const GroundTruth& truth, const Predictions& predictions, const DetectionEvalOptions& given) {
  if (given.iou_thresholds.empty() || given.max_detections.empty() || given.areas.empty())
    fail_argument("evaluation needs IoU thresholds, max detections and area ranges");
  for (const double t : given.iou_thresholds) detail::check_unit_interval(t, "iou_thresholds");
  for (const int m : given.max_detections)
    if (m < 1) fail_argument("max_detections must be >= 1, got {}", m);
  DetectionEvalOptions options = given;  // COCO's summary reads AP at the last, largest max_detections
  std::sort(options.max_detections.begin(), options.max_detections.end());
  options.max_detections.erase(std::unique(options.max_detections.begin(), options.max_detections.end()), options.max_detections.end());

  const std::size_t k_count = truth.labels.size();
  std::vector<std::int64_t> label_map(predictions.labels.size());  // prediction label → ground-truth label
  for (std::size_t i = 0; i < predictions.labels.size(); ++i) {
    const auto it = std::find(truth.labels.begin(), truth.labels.end(), predictions.labels[i]);
    if (it == truth.labels.end())
      fail_argument("predicted label '{}' is not a ground-truth label ({})", predictions.labels[i], fmt::join(truth.labels, ", "));
    label_map[i] = it - truth.labels.begin();
  }

  // Images in name order (COCO evaluates imgIds sorted), each split by class.
  std::map<std::string, const ImagePredictions*> by_name;
  for (const auto& p : predictions.images) by_name[p.image] = &p;
  DetectionReport report;
  std::set<std::string> truth_names;
  std::vector<const ImageGroundTruth*> images;
  for (const auto& im : truth.images) {
    truth_names.insert(im.image);
    const bool predicted = by_name.count(im.image) > 0;
    if (!predicted && options.predicted_images_only) continue;
    report.images_without_predictions += !predicted;
    images.push_back(&im);
  }
  for (const auto& [name, p] : by_name)
    if (!truth_names.count(name)) report.unmatched_prediction_images.push_back(name);
  if (!by_name.empty() && report.unmatched_prediction_images.size() == by_name.size())
    fail_argument("none of the {} predicted images is in the ground truth (e.g. '{}'; ground truth has e.g. '{}'): images are matched by "
                  "file name without extension",
                  by_name.size(), by_name.begin()->first, truth.images.empty() ? "" : truth.images.front().image);
  std::stable_sort(images.begin(), images.end(), [](auto* a, auto* b) { return a->image < b->image; });
  report.options = options;
  report.images = static_cast<int>(images.size());
  std::vector<std::vector<ClassImage>> split(k_count, std::vector<ClassImage>(images.size()));
  for (std::size_t i = 0; i < images.size(); ++i) {
    for (const GroundTruthBox& g : images[i]->boxes) {
      if (g.label < 0 || static_cast<std::size_t>(g.label) >= k_count)
        fail_argument("image '{}': ground-truth label {} out of range", images[i]->image, g.label);
      split[static_cast<std::size_t>(g.label)][i].gt.push_back(g);
    }
    const auto it = by_name.find(images[i]->image);
    if (it == by_name.end()) continue;
    for (const Detection& d : it->second->detections) {
      if (d.label < 0 || static_cast<std::size_t>(d.label) >= label_map.size())
        fail_argument("image '{}': predicted label {} out of range", images[i]->image, d.label);
      ClassImage& ci = split[static_cast<std::size_t>(label_map[static_cast<std::size_t>(d.label)])][i];
      ci.dt.push_back(d.box);
      ci.scores.push_back(d.score);
      ++report.predictions;
    }
  }

  const auto& thresholds = options.iou_thresholds;
  const std::size_t t_count = thresholds.size(), a_count = options.areas.size(), m_count = options.max_detections.size();
  const int largest = *std::max_element(options.max_detections.begin(), options.max_detections.end());
  // precision[t][k][a][m] holds the 101-point curve; recall[t][k][a][m]; -1 where a class has no ground truth.
  std::vector<double> precision(t_count * k_count * a_count * m_count * kRecallPoints, -1.0), recall(t_count * k_count * a_count * m_count, -1.0);
  auto at = [&](std::size_t t, std::size_t k, std::size_t a, std::size_t m) { return ((t * k_count + k) * a_count + a) * m_count + m; };
  std::vector<std::vector<Ranked>> all_area_largest(t_count, std::vector<Ranked>(k_count));  // for the F1 table

  for (std::size_t k = 0; k < k_count; ++k)
    for (std::size_t a = 0; a < a_count; ++a) {
      std::vector<ImageEval> evals;
      for (const ClassImage& ci : split[k]) evals.push_back(evaluate_image(ci, options.areas[a], largest, thresholds));
      for (std::size_t m = 0; m < m_count; ++m)
        for (std::size_t t = 0; t < t_count; ++t) {
          Ranked r;
          for (const ImageEval& e : evals) append(r, e, t, static_cast<std::size_t>(options.max_detections[m]));
          if (r.positives == 0) continue;
          rank(r);
          auto [q, rc] = interpolate(curve_of(r));
          recall[at(t, k, a, m)] = rc;
          std::copy(q.begin(), q.end(), precision.begin() + static_cast<std::ptrdiff_t>(at(t, k, a, m) * kRecallPoints));
          if (a == 0 && options.max_detections[m] == largest) all_area_largest[t][k] = std::move(r);
        }
    }

  // COCOeval.summarize: means over the defined entries.
  const std::size_t m_last = m_count - 1;
  auto ap = [&](std::optional<std::size_t> t, std::optional<std::size_t> k, std::size_t a, std::size_t m) {
    std::vector<double> v;
    for (std::size_t ti = 0; ti < t_count; ++ti)
      for (std::size_t ki = 0; ki < k_count; ++ki) {
        if ((t && *t != ti) || (k && *k != ki)) continue;
        const auto base = precision.begin() + static_cast<std::ptrdiff_t>(at(ti, ki, a, m) * kRecallPoints);
        v.insert(v.end(), base, base + kRecallPoints);
      }
    return mean_defined(v);
  };
  auto ar = [&](std::size_t a, std::size_t m) {
    std::vector<double> v;
    for (std::size_t ti = 0; ti < t_count; ++ti)
      for (std::size_t ki = 0; ki < k_count; ++ki) v.push_back(recall[at(ti, ki, a, m)]);
    return mean_defined(v);
  };
  const std::size_t t50 = threshold_index(thresholds, 0.5), t75 = threshold_index(thresholds, 0.75);
  auto ap_at = [&](std::size_t t, std::optional<std::size_t> k) { return t < t_count ? ap(t, k, 0, m_last) : -1.0; };
  report.coco.emplace_back("AP", ap(std::nullopt, std::nullopt, 0, m_last));
  report.coco.emplace_back("AP50", ap_at(t50, std::nullopt));
  report.coco.emplace_back("AP75", ap_at(t75, std::nullopt));
  for (std::size_t a = 1; a < a_count; ++a) report.coco.emplace_back("AP_" + options.areas[a].name, ap(std::nullopt, std::nullopt, a, m_last));
  for (std::size_t m = 0; m < m_count; ++m) report.coco.emplace_back(fmt::format("AR{}", options.max_detections[m]), ar(0, m));
  for (std::size_t a = 1; a < a_count; ++a) report.coco.emplace_back("AR_" + options.areas[a].name, ar(a, m_last));

  // Per class: AP, the F1 table, counting error.
  const std::size_t t_count_threshold = t50 < t_count ? t50 : 0;
  std::vector<Ranked> pooled(t_count);
  for (std::size_t k = 0; k < k_count; ++k) {
    ClassDetectionMetrics c;
    c.label = truth.labels[k];
    for (const ClassImage& ci : split[k])
      for (const GroundTruthBox& g : ci.gt) c.ground_truth += !g.ignore;
    c.ap = ap(std::nullopt, k, 0, m_last);
    c.ap50 = ap_at(t50, k);
    c.ap75 = ap_at(t75, k);
    for (std::size_t t = 0; t < t_count; ++t) {
      ThresholdRow row = best_f1(all_area_largest[t][k], thresholds[t]);
      row.ap = ap(t, k, 0, m_last);
      c.by_iou.push_back(row);
      const Ranked& r = all_area_largest[t][k];
      pooled[t].positives += r.positives;
      pooled[t].scores.insert(pooled[t].scores.end(), r.scores.begin(), r.scores.end());
      pooled[t].tp.insert(pooled[t].tp.end(), r.tp.begin(), r.tp.end());
      pooled[t].fp.insert(pooled[t].fp.end(), r.fp.begin(), r.fp.end());
    }
    c.count_threshold = options.count_score_threshold.value_or(static_cast<float>(c.by_iou[t_count_threshold].confidence));
    double error = 0;
    for (const ClassImage& ci : split[k]) {
      int truth_count = 0, predicted = 0;
      for (const GroundTruthBox& g : ci.gt) truth_count += !g.ignore;
      for (const float s : ci.scores) predicted += s >= c.count_threshold;
      error += std::abs(predicted - truth_count);
    }
    c.count_mae = images.empty() ? 0 : error / static_cast<double>(images.size());
    report.classes.push_back(std::move(c));
  }
  for (std::size_t t = 0; t < t_count; ++t) {
    rank(pooled[t]);
    ThresholdRow row = best_f1(pooled[t], thresholds[t]);
    row.ap = ap(t, std::nullopt, 0, m_last);
    report.by_iou.push_back(row);
  }
  std::vector<double> maes;
  for (const auto& c : report.classes)
    if (c.ground_truth > 0) maes.push_back(c.count_mae);
  report.count_mae = maes.empty() ? 0 : std::accumulate(maes.begin(), maes.end(), 0.0) / static_cast<double>(maes.size());
  return report;
}

}  // namespace bloodcv::eval
