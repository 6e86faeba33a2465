#include "bloodcv/assign.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <sstream>
#include <tuple>

#include <ATen/ATen.h>

#include "check.hpp"

namespace bloodcv {

using detail::fail_argument;

namespace {

constexpr double kPi = 3.14159265358979323846;

std::string shape(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

void check_boxes(const at::Tensor& t, const char* name, bool required = true) {
  if (!t.defined()) {
    if (required) fail_argument("{} is required", name);
    return;
  }
  if (t.dim() != 2 || t.size(1) != 4) fail_argument("{} must have shape [N, 4], got {}", name, shape(t));
  if (!t.is_floating_point()) fail_argument("{} must be floating point, got {}", name, c10::toString(t.scalar_type()));
  if (t.numel() && !at::isfinite(t).all().item<bool>()) fail_argument("{} holds NaN or infinite coordinates", name);
  // An inverted box has a negative area: IoU, centres and distances would mislead every strategy.
  if (t.numel()) {
    const at::Tensor inverted = (t.select(1, 2) < t.select(1, 0)) | (t.select(1, 3) < t.select(1, 1));
    if (inverted.any().item<bool>())
      fail_argument("{}[{}] is inverted: x2 >= x1 and y2 >= y1 are required", name, inverted.nonzero()[0][0].item<std::int64_t>());
  }
}

// Every tensor on the anchors' device, and that one a CPU or CUDA device (checked first: the other checks
// read values, which a tensor on another backend cannot give).
void check_devices(const AssignInput& in) {
  if (!in.anchors.defined()) return;
  const c10::Device device = in.anchors.device();
  if (!device.is_cpu() && !device.is_cuda()) fail_argument("anchors are on device '{}': assigners run on cpu or cuda", device.str());
  const std::pair<const at::Tensor*, const char*> others[] = {
      {&in.gt_boxes, "gt_boxes"}, {&in.gt_labels, "gt_labels"}, {&in.pred_boxes, "pred_boxes"}, {&in.pred_scores, "pred_scores"}};
  for (const auto& [t, name] : others)
    if (t->defined() && t->device() != device) fail_argument("{} is on '{}' but anchors are on '{}'", name, t->device().str(), device.str());
}

void check_input(const AssignInput& in, bool needs_predictions) {
  check_devices(in);
  check_boxes(in.anchors, "anchors");
  check_boxes(in.gt_boxes, "gt_boxes");
  if (!in.gt_labels.defined() || in.gt_labels.dim() != 1 || in.gt_labels.size(0) != in.gt_boxes.size(0))
    fail_argument("gt_labels must have shape [{}] (one per box), got {}", in.gt_boxes.size(0),
                  in.gt_labels.defined() ? shape(in.gt_labels) : std::string("none"));
  if (!c10::isIntegralType(in.gt_labels.scalar_type(), /*includeBool=*/false))
    fail_argument("gt_labels must be integers, got {}", c10::toString(in.gt_labels.scalar_type()));
  if (needs_predictions) {
    check_boxes(in.pred_boxes, "pred_boxes");
    if (in.pred_boxes.size(0) != in.anchors.size(0))
      fail_argument("pred_boxes has {} rows but anchors has {}", in.pred_boxes.size(0), in.anchors.size(0));
    if (!in.pred_scores.defined() || in.pred_scores.dim() != 2 || in.pred_scores.size(0) != in.anchors.size(0))
      fail_argument("pred_scores must have shape [{}, C] (class probabilities per anchor)", in.anchors.size(0));
    if (in.pred_scores.numel() && (!at::isfinite(in.pred_scores).all().item<bool>() || in.pred_scores.min().item<double>() < 0 ||
                                   in.pred_scores.max().item<double>() > 1))
      fail_argument("pred_scores must be probabilities in [0, 1]");
    if (in.gt_labels.numel() && (in.gt_labels.min().item<std::int64_t>() < 0 || in.gt_labels.max().item<std::int64_t>() >= in.pred_scores.size(1)))
      fail_argument("gt_labels must be in [0, {}) (the classes of pred_scores)", in.pred_scores.size(1));
  }
}

std::vector<std::int64_t> checked_levels(const AssignInput& in) {
  std::vector<std::int64_t> levels = in.anchors_per_level;
  if (levels.empty()) levels = {in.anchors.size(0)};
  std::int64_t total = 0;
  for (const auto n : levels) {
    if (n < 0) fail_argument("anchors_per_level holds a negative count {}", n);
    // Each count is at most the anchors, so the sum cannot overflow before it is refused.
    if (n > in.anchors.size(0) - total)
      fail_argument("anchors_per_level sums to more than the {} anchors (a count of {})", in.anchors.size(0), n);
    total += n;
  }
  if (total != in.anchors.size(0)) fail_argument("anchors_per_level sums to {} but there are {} anchors", total, in.anchors.size(0));
  return levels;
}

// Everything background; overlaps 0.
AssignResult all_background(const AssignInput& in) {
  const auto a = in.anchors.size(0);
  const auto opts = in.anchors.options();
  AssignResult r;
  r.gt_index = at::full({a}, kBackground, opts.dtype(at::kLong));
  r.overlaps = at::zeros({a}, opts.dtype(at::kFloat));
  r.labels = at::full({a}, -1, opts.dtype(at::kLong));
  r.weights = at::zeros({a}, opts.dtype(at::kFloat));
  r.num_gts = in.gt_boxes.size(0);
  return r;
}

// Fills labels and weights (1 for positives) from gt_index.
void finish(AssignResult& r, const AssignInput& in, const at::Tensor& weights = {}) {
  const at::Tensor positive = r.gt_index >= 0;
  r.labels = at::full_like(r.gt_index, -1);
  if (positive.any().item<bool>()) r.labels.index_put_({positive}, in.gt_labels.to(at::kLong).index({r.gt_index.index({positive})}));
  r.weights = weights.defined() ? weights.to(at::kFloat) : positive.to(at::kFloat);
  r.overlaps = r.overlaps.to(at::kFloat);
  r.num_gts = in.gt_boxes.size(0);
}

at::Tensor centers(const at::Tensor& boxes) {
  return at::stack({(boxes.select(1, 0) + boxes.select(1, 2)) / 2, (boxes.select(1, 1) + boxes.select(1, 3)) / 2}, 1);
}

// [G, A] true where the anchor's centre lies strictly inside the box.
at::Tensor centers_inside(const at::Tensor& anchors, const at::Tensor& gt, double margin = 0.01) {
  const at::Tensor c = centers(anchors);
  const at::Tensor cx = c.select(1, 0).unsqueeze(0), cy = c.select(1, 1).unsqueeze(0);
  const at::Tensor l = cx - gt.select(1, 0).unsqueeze(1), t = cy - gt.select(1, 1).unsqueeze(1);
  const at::Tensor r = gt.select(1, 2).unsqueeze(1) - cx, b = gt.select(1, 3).unsqueeze(1) - cy;
  return at::stack({l, t, r, b}, 0).amin(0) > margin;
}

}  // namespace

at::Tensor box_iou(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor area_a = (a.select(1, 2) - a.select(1, 0)) * (a.select(1, 3) - a.select(1, 1));
  const at::Tensor area_b = (b.select(1, 2) - b.select(1, 0)) * (b.select(1, 3) - b.select(1, 1));
  const at::Tensor lt = at::max(a.slice(1, 0, 2).unsqueeze(1), b.slice(1, 0, 2).unsqueeze(0));
  const at::Tensor rb = at::min(a.slice(1, 2, 4).unsqueeze(1), b.slice(1, 2, 4).unsqueeze(0));
  const at::Tensor wh = (rb - lt).clamp_min(0);
  const at::Tensor inter = wh.select(2, 0) * wh.select(2, 1);
  const at::Tensor uni = area_a.unsqueeze(1) + area_b.unsqueeze(0) - inter;
  return at::where(uni > 0, inter / uni.clamp_min(std::numeric_limits<float>::min()), at::zeros_like(inter));
}

// --- max IoU ---------------------------------------------------------------------------------------
MaxIoUAssigner::MaxIoUAssigner(MaxIoUOptions o) : options_(o) {
  detail::check_unit_interval(o.pos_iou_threshold, "pos_iou_threshold");
  detail::check_unit_interval(o.neg_iou_threshold, "neg_iou_threshold");
  detail::check_unit_interval(o.min_pos_iou, "min_pos_iou");
  if (o.neg_iou_threshold > o.pos_iou_threshold)
    fail_argument("neg_iou_threshold ({}) must not exceed pos_iou_threshold ({})", o.neg_iou_threshold, o.pos_iou_threshold);
}

AssignResult MaxIoUAssigner::assign(const AssignInput& in) const {
  check_input(in, false);
  AssignResult r = all_background(in);
  if (in.gt_boxes.size(0) == 0 || in.anchors.size(0) == 0) return r;
  const at::Tensor iou = box_iou(in.gt_boxes.to(at::kFloat), in.anchors.to(at::kFloat));  // [G, A]
  auto [max_iou, argmax] = iou.max(0);
  r.overlaps = max_iou;
  r.gt_index = at::where(max_iou < options_.neg_iou_threshold, at::full_like(argmax, kBackground), at::full_like(argmax, kIgnore));
  r.gt_index = at::where(max_iou >= options_.pos_iou_threshold, argmax, r.gt_index);
  if (options_.match_low_quality) {
    const at::Tensor gt_max = std::get<0>(iou.max(1));  // [G]
    for (std::int64_t g = 0; g < in.gt_boxes.size(0); ++g) {  // in order: a later box wins a shared anchor, as mmdetection
      const double best = gt_max[g].item<double>();
      if (best <= options_.min_pos_iou) continue;
      const at::Tensor mine = iou[g] == best;
      r.gt_index.masked_fill_(mine, g);
      r.overlaps = at::where(mine, iou[g], r.overlaps);
    }
  }
  finish(r, in);
  return r;
}

// --- ATSS ------------------------------------------------------------------------------------------
AtssAssigner::AtssAssigner(AtssOptions o) : options_(o) {
  if (o.top_k < 1) fail_argument("top_k must be >= 1, got {}", o.top_k);
}

AssignResult AtssAssigner::assign(const AssignInput& in) const {
  check_input(in, false);
  const auto levels = checked_levels(in);
  AssignResult r = all_background(in);
  const auto g_count = in.gt_boxes.size(0), a_count = in.anchors.size(0);
  if (g_count == 0 || a_count == 0) return r;
  const at::Tensor anchors = in.anchors.to(at::kFloat), gt = in.gt_boxes.to(at::kFloat);
  const at::Tensor iou = box_iou(gt, anchors);                                   // [G, A]
  const at::Tensor distance = at::cdist(centers(gt), centers(anchors));          // [G, A]
  std::vector<at::Tensor> candidates;                                            // [G, k] anchor indices per level
  std::int64_t start = 0;
  for (const auto n : levels) {
    if (n > 0) {
      const auto k = std::min(options_.top_k, n);
      candidates.push_back(std::get<1>(distance.slice(1, start, start + n).topk(k, 1, /*largest=*/false)) + start);
    }
    start += n;
  }
  const at::Tensor cand = at::cat(candidates, 1);                                // [G, K]
  const at::Tensor cand_iou = iou.gather(1, cand);
  // mean + unbiased standard deviation (as mmdetection); a lone candidate has no spread: its IoU is the threshold
  const at::Tensor threshold = cand_iou.mean(1, true) + at::nan_to_num(cand_iou.std(1, /*unbiased=*/true, true), 0.0);
  const at::Tensor inside = centers_inside(anchors, gt).gather(1, cand);
  const at::Tensor positive = (cand_iou >= threshold) & inside;                 // [G, K]
  // IoU of each box with the anchors it claims, -inf elsewhere; the highest claim wins.
  at::Tensor claims = at::full({g_count, a_count}, -std::numeric_limits<float>::infinity(), iou.options());
  claims.scatter_(1, cand, at::where(positive, cand_iou, at::full_like(cand_iou, -std::numeric_limits<float>::infinity())));
  auto [best, owner] = claims.max(0);
  const at::Tensor assigned = best > -std::numeric_limits<float>::infinity();
  r.gt_index = at::where(assigned, owner, at::full_like(owner, kBackground));
  r.overlaps = at::where(assigned, best, std::get<0>(iou.max(0)));
  finish(r, in);
  return r;
}

// --- GMM and PAA -----------------------------------------------------------------------------------
namespace {

double log_gauss(double x, double mean, double var) { return -0.5 * (std::log(2 * kPi * var) + (x - mean) * (x - mean) / var); }

// E-step: log responsibilities and the mean log-likelihood.
double e_step(const Gmm1d& g, const std::vector<double>& x, std::vector<std::array<double, 2>>& log_resp) {
  double total = 0;
  log_resp.resize(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double a = std::log(g.weights[0]) + log_gauss(x[i], g.means[0], g.variances[0]);
    const double b = std::log(g.weights[1]) + log_gauss(x[i], g.means[1], g.variances[1]);
    const double m = std::max(a, b);
    const double norm = m + std::log(std::exp(a - m) + std::exp(b - m));
    log_resp[i] = {a - norm, b - norm};
    total += norm;
  }
  return total / static_cast<double>(x.size());
}

}  // namespace

Gmm1d fit_gmm_1d(const std::vector<double>& x, Gmm1d g, int max_iterations, double tolerance) {
  if (x.size() < 2) fail_argument("a Gaussian mixture needs at least 2 values, got {}", x.size());
  if (max_iterations < 1) fail_argument("max_iterations must be >= 1, got {}", max_iterations);
  if (!(tolerance >= 0)) fail_argument("tolerance must be >= 0, got {}", tolerance);
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(x[i])) fail_argument("x[{}] is {}: values must be finite", i, x[i]);
  for (int k = 0; k < 2; ++k)
    if (!std::isfinite(g.means[k]) || !(g.variances[k] > 0 && std::isfinite(g.variances[k])) || !(g.weights[k] > 0 && g.weights[k] <= 1))
      fail_argument("initial component {}: mean {} must be finite, variance {} positive and weight {} in (0, 1]", k, g.means[k],
                    g.variances[k], g.weights[k]);
  constexpr double kRegCovar = 1e-6, kEps = 10 * std::numeric_limits<double>::epsilon();
  std::vector<std::array<double, 2>> log_resp;
  double lower_bound = -std::numeric_limits<double>::infinity();
  for (g.iterations = 1; g.iterations <= max_iterations; ++g.iterations) {
    const double previous = lower_bound;
    lower_bound = e_step(g, x, log_resp);
    for (int k = 0; k < 2; ++k) {  // M-step
      double nk = kEps, sum = 0;
      for (std::size_t i = 0; i < x.size(); ++i) {
        const double r = std::exp(log_resp[i][static_cast<std::size_t>(k)]);
        nk += r;
        sum += r * x[i];
      }
      const double mean = sum / nk;
      double var = 0;
      for (std::size_t i = 0; i < x.size(); ++i) var += std::exp(log_resp[i][static_cast<std::size_t>(k)]) * (x[i] - mean) * (x[i] - mean);
      g.means[k] = mean;
      g.variances[k] = var / nk + kRegCovar;
      g.weights[k] = nk / static_cast<double>(x.size());
    }
    if (std::abs(lower_bound - previous) < tolerance) {
      g.converged = true;
      break;
    }
  }
  g.iterations = std::min(g.iterations, max_iterations);
  return g;
}

std::vector<double> gmm_posterior(const Gmm1d& g, const std::vector<double>& x) {
  std::vector<std::array<double, 2>> log_resp;
  e_step(g, x, log_resp);
  std::vector<double> p(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) p[i] = std::exp(log_resp[i][1]);
  return p;
}

PaaAssigner::PaaAssigner(PaaOptions o) : options_(o) {
  if (o.top_k < 1) fail_argument("top_k must be >= 1, got {}", o.top_k);
  if (!(o.iou_lambda >= 0)) fail_argument("iou_lambda must be >= 0, got {}", o.iou_lambda);
  detail::check_unit_interval(o.candidate_iou, "candidate_iou");
  if (o.em_iterations < 1) fail_argument("em_iterations must be >= 1, got {}", o.em_iterations);
}

AssignResult PaaAssigner::assign(const AssignInput& in) const {
  check_input(in, true);
  const auto levels = checked_levels(in);
  AssignResult r = all_background(in);
  const auto g_count = in.gt_boxes.size(0), a_count = in.anchors.size(0);
  if (g_count == 0 || a_count == 0) return r;
  const at::Tensor gt = in.gt_boxes.to(at::kFloat);
  const at::Tensor anchor_iou = box_iou(gt, in.anchors.to(at::kFloat));  // [G, A]
  auto [max_iou, owner] = anchor_iou.max(0);
  r.overlaps = max_iou;
  // score[g, a] = p(class of g | a) · IoU(pred a, g)^lambda
  const at::Tensor pred_iou = box_iou(gt, in.pred_boxes.to(at::kFloat));
  const at::Tensor cls = in.pred_scores.to(at::kFloat).t().index_select(0, in.gt_labels.to(at::kLong));  // [G, A]
  const at::Tensor score = (cls * pred_iou.pow(options_.iou_lambda)).to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor candidate = ((owner.unsqueeze(0) == at::arange(g_count, owner.options()).unsqueeze(1)) &
                                (max_iou.unsqueeze(0) >= options_.candidate_iou)).to(at::kCPU).contiguous();
  at::Tensor gt_index = at::full({a_count}, kBackground, at::kLong);
  at::Tensor weights = at::zeros({a_count}, at::kDouble);
  const double* s = score.data_ptr<double>();
  const bool* c = candidate.data_ptr<bool>();
  for (std::int64_t g = 0; g < g_count; ++g) {
    // top_k candidates per level by score
    std::vector<std::int64_t> chosen;
    std::int64_t start = 0;
    for (const auto n : levels) {
      std::vector<std::int64_t> level;
      for (std::int64_t a = start; a < start + n; ++a)
        if (c[g * a_count + a]) level.push_back(a);
      const auto k = std::min<std::size_t>(level.size(), static_cast<std::size_t>(options_.top_k));
      std::partial_sort(level.begin(), level.begin() + static_cast<std::ptrdiff_t>(k), level.end(),
                        [&](auto x, auto y) { return s[g * a_count + x] > s[g * a_count + y] || (s[g * a_count + x] == s[g * a_count + y] && x < y); });
      chosen.insert(chosen.end(), level.begin(), level.begin() + static_cast<std::ptrdiff_t>(k));
      start += n;
    }
    if (chosen.empty()) continue;
    std::vector<double> x;
    for (const auto a : chosen) x.push_back(s[g * a_count + a]);
    const double lo = *std::min_element(x.begin(), x.end()), hi = *std::max_element(x.begin(), x.end());
    std::vector<double> positive_probability(x.size(), 1.0);
    double band_low = -std::numeric_limits<double>::infinity(), band_high = band_low;  // nothing ignored
    if (chosen.size() >= 2 && hi > lo) {
      // Initial variances: the scores' own (the reference's 1.0 suits its loss-based scores, not
      // probabilities in [0, 1], where EM would stop before the components separate).
      double mean = 0, var = 0;
      for (const double v : x) mean += v / static_cast<double>(x.size());
      for (const double v : x) var += (v - mean) * (v - mean) / static_cast<double>(x.size());
      const Gmm1d init{{0.5, 0.5}, {lo, hi}, {var + 1e-6, var + 1e-6}};
      const Gmm1d gmm = fit_gmm_1d(x, init, options_.em_iterations, options_.em_tolerance);
      positive_probability = gmm_posterior(gmm, x);
      if (options_.ignore_band) std::tie(band_low, band_high) = std::minmax(gmm.means[0], gmm.means[1]);
    }
    for (std::size_t i = 0; i < chosen.size(); ++i) {
      const bool positive = options_.ignore_band ? x[i] >= band_high : positive_probability[i] > 0.5;
      if (positive) {
        gt_index[chosen[i]] = g;
        weights[chosen[i]] = positive_probability[i];
      } else if (options_.ignore_band && x[i] >= band_low) {
        gt_index[chosen[i]] = kIgnore;
      }
    }
  }
  r.gt_index = gt_index.to(in.anchors.device());
  finish(r, in, weights.to(in.anchors.device()));
  return r;
}

// --- optimal transport -----------------------------------------------------------------------------
at::Tensor sinkhorn_log(const at::Tensor& cost, const at::Tensor& supply, const at::Tensor& demand, double epsilon, int iterations) {
  if (cost.dim() != 2 || supply.dim() != 1 || demand.dim() != 1 || cost.size(0) != supply.size(0) || cost.size(1) != demand.size(0))
    fail_argument("sinkhorn_log needs cost [S, D], supply [S], demand [D]; got {}, {}, {}", shape(cost), shape(supply), shape(demand));
  if (!(epsilon > 0)) fail_argument("epsilon must be positive, got {}", epsilon);
  if (iterations < 1) fail_argument("iterations must be >= 1, got {}", iterations);
  for (const auto& [t, name] : {std::pair{cost, "cost"}, std::pair{supply, "supply"}, std::pair{demand, "demand"}})
    if (t.numel() && !at::isfinite(t).all().item<bool>()) fail_argument("{} holds NaN or infinite values", name);
  if (supply.numel() && (supply < 0).any().item<bool>()) fail_argument("supply must not be negative");
  if (demand.numel() && (demand < 0).any().item<bool>()) fail_argument("demand must not be negative");
  const at::Tensor log_supply = supply.to(cost.scalar_type()).clamp_min(1e-30).log();
  const at::Tensor log_demand = demand.to(cost.scalar_type()).clamp_min(1e-30).log();
  const at::Tensor scaled = -cost / epsilon;  // log of the Gibbs kernel
  at::Tensor f = at::zeros_like(log_supply), g = at::zeros_like(log_demand);  // log potentials
  for (int it = 0; it < iterations; ++it) {
    f = log_supply - at::logsumexp(scaled + g.unsqueeze(0), 1);
    g = log_demand - at::logsumexp(scaled + f.unsqueeze(1), 0);
  }
  return (scaled + f.unsqueeze(1) + g.unsqueeze(0)).exp();
}

OtaAssigner::OtaAssigner(OtaOptions o) : options_(o) {
  if (!(o.epsilon > 0)) fail_argument("epsilon must be positive, got {}", o.epsilon);
  if (o.iterations < 1) fail_argument("iterations must be >= 1, got {}", o.iterations);
  if (o.top_q < 1) fail_argument("top_q must be >= 1, got {}", o.top_q);
  if (!(o.reg_lambda >= 0)) fail_argument("reg_lambda must be >= 0, got {}", o.reg_lambda);
  if (!(o.center_prior_cost >= 0 && std::isfinite(o.center_prior_cost)))
    fail_argument("center_prior_cost must be finite and >= 0, got {}", o.center_prior_cost);
}

AssignResult OtaAssigner::assign(const AssignInput& in) const {
  check_input(in, true);
  AssignResult r = all_background(in);
  const auto g_count = in.gt_boxes.size(0), a_count = in.anchors.size(0);
  if (g_count == 0 || a_count == 0) return r;
  const at::Tensor gt = in.gt_boxes.to(at::kFloat);
  const at::Tensor pred_iou = box_iou(gt, in.pred_boxes.to(at::kFloat));  // [G, A]
  // Supplies: dynamic k per box, the rest to the background.
  const auto q = std::min(options_.top_q, a_count);
  at::Tensor k = std::get<0>(pred_iou.topk(q, 1)).sum(1).floor().clamp_min(1);
  const double total = k.sum().item<double>();
  if (total > static_cast<double>(a_count)) k = (k * (static_cast<double>(a_count) / total)).floor().clamp_min(0);  // more boxes than anchors
  const at::Tensor supply = at::cat({k, (static_cast<double>(a_count) - k.sum()).clamp_min(0).reshape({1})});
  const at::Tensor demand = at::ones({a_count}, gt.options());
  // Costs: BCE of the class probabilities against the box's class (or against nothing), + lambda (1 - IoU).
  const at::Tensor p = in.pred_scores.to(at::kFloat).clamp(1e-6, 1 - 1e-6);
  const at::Tensor neg = (-at::log1p(-p)).sum(1);                                         // [A]: BCE against all-zero
  const at::Tensor labels = in.gt_labels.to(at::kLong);
  const at::Tensor pos_gain = (-p.log() + at::log1p(-p)).t().index_select(0, labels);      // [G, A]: swap one class to positive
  at::Tensor cost_fg = neg.unsqueeze(0) + pos_gain + options_.reg_lambda * (1 - pred_iou);
  if (options_.center_prior)
    cost_fg = cost_fg + (~centers_inside(in.anchors.to(at::kFloat), gt, 0.0)).to(at::kFloat) * options_.center_prior_cost;
  const at::Tensor cost = at::cat({cost_fg, neg.unsqueeze(0)}, 0);                         // [G + 1, A]
  const at::Tensor plan = sinkhorn_log(cost.to(at::kDouble), supply.to(at::kDouble), demand.to(at::kDouble), options_.epsilon, options_.iterations);
  auto [mass, supplier] = plan.max(0);
  const at::Tensor foreground = supplier < g_count;
  r.gt_index = at::where(foreground, supplier, at::full_like(supplier, kBackground));
  const at::Tensor anchor_iou = box_iou(gt, in.anchors.to(at::kFloat));
  r.overlaps = at::where(foreground, anchor_iou.gather(0, supplier.clamp_max(g_count - 1).unsqueeze(0)).squeeze(0), std::get<0>(anchor_iou.max(0)));
  finish(r, in, at::where(foreground, mass, at::zeros_like(mass)));
  return r;
}

std::unique_ptr<LabelAssigner> make_assigner(std::string_view name) {
  if (name == "max_iou") return std::make_unique<MaxIoUAssigner>();
  if (name == "atss") return std::make_unique<AtssAssigner>();
  if (name == "paa") return std::make_unique<PaaAssigner>();
  if (name == "ota") return std::make_unique<OtaAssigner>();
  throw std::invalid_argument(fmt::format("unknown assigner '{}'; choose one of atss, max_iou, ota, paa", name));
}

}  // namespace bloodcv
