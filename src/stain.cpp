#include "bloodcv/stain.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include <Eigen/Dense>
#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>

#include "bloodcv/image.hpp"
#include "check.hpp"

namespace bloodcv {

using detail::fail_argument;
using json = nlohmann::json;

namespace {

// --- Reinhard ----------------------------------------------------------------------------------------
cv::Mat to_lab(const cv::Mat& image) {
  cv::Mat unit, lab;
  to_bgr8(image, "image").convertTo(unit, CV_32F, 1.0 / 255.0);
  cv::cvtColor(unit, lab, cv::COLOR_BGR2Lab);
  return lab;
}

ReinhardTarget lab_statistics(const cv::Mat& lab) {
  cv::Scalar mean, stddev;
  cv::meanStdDev(lab, mean, stddev);
  return {{mean[0], mean[1], mean[2]}, {stddev[0], stddev[1], stddev[2]}};
}

// --- Macenko -----------------------------------------------------------------------------------------
using Od = Eigen::Matrix<double, Eigen::Dynamic, 3, Eigen::RowMajor>;  // one row per pixel, RGB order
using Stains = Eigen::Matrix<double, 3, 2>;                              // columns: the two stain vectors

Od optical_density(const cv::Mat& bgr, double background) {
  Od od(static_cast<Eigen::Index>(bgr.total()), 3);
  Eigen::Index i = 0;
  for (int y = 0; y < bgr.rows; ++y) {
    const auto* row = bgr.ptr<cv::Vec3b>(y);
    for (int x = 0; x < bgr.cols; ++x, ++i)
      for (int c = 0; c < 3; ++c) od(i, c) = -std::log((row[x][2 - c] + 1.0) / background);
  }
  return od;
}

double percentile(std::vector<double> values, double p) {
  const auto k = static_cast<std::size_t>(std::clamp(p / 100.0, 0.0, 1.0) * static_cast<double>(values.size() - 1));
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(k), values.end());
  return values[k];
}

struct StainEstimate {
  Stains stains;
  Eigen::Vector2d max_concentrations;
};

// Macenko et al. 2009: the plane of the two largest eigenvectors of the stained pixels' optical density,
// the extreme angles in it (robust percentiles) as the stain directions, the 99th percentile of each
// stain's amount. Stained: the optical density's norm reaches the threshold (the paper's test, every
// channel above it, drops pale eosin-like pixels, whose red density is tiny). Empty when too few.
std::optional<StainEstimate> estimate_stains(const Od& od, const MacenkoOptions& o) {
  std::vector<Eigen::Index> stained;
  for (Eigen::Index i = 0; i < od.rows(); ++i)
    if (od.row(i).norm() >= o.od_threshold) stained.push_back(i);
  if (static_cast<int>(stained.size()) < o.min_stained_pixels) return std::nullopt;
  Od tissue(static_cast<Eigen::Index>(stained.size()), 3);
  for (std::size_t k = 0; k < stained.size(); ++k) tissue.row(static_cast<Eigen::Index>(k)) = od.row(stained[k]);

  const Eigen::RowVector3d mean = tissue.colwise().mean();
  const Eigen::Matrix3d cov = (tissue.rowwise() - mean).transpose() * (tissue.rowwise() - mean) / double(tissue.rows() - 1);
  const Eigen::SelfAdjointEigenSolver<Eigen::Matrix3d> eig(cov);  // eigenvalues ascending
  Eigen::Matrix<double, 3, 2> plane;
  plane.col(0) = eig.eigenvectors().col(2);
  plane.col(1) = eig.eigenvectors().col(1);
  for (int c = 0; c < 2; ++c)
    if (plane.col(c).sum() < 0) plane.col(c) *= -1;  // stains absorb: point into positive density

  const Eigen::MatrixX2d projected = tissue * plane;
  std::vector<double> angles(static_cast<std::size_t>(projected.rows()));
  for (Eigen::Index i = 0; i < projected.rows(); ++i) angles[static_cast<std::size_t>(i)] = std::atan2(projected(i, 1), projected(i, 0));
  const double low = percentile(angles, o.angle_percentile), high = percentile(angles, 100 - o.angle_percentile);
  Eigen::Vector3d a = plane * Eigen::Vector2d(std::cos(low), std::sin(low));
  Eigen::Vector3d b = plane * Eigen::Vector2d(std::cos(high), std::sin(high));
  if (a.sum() < 0) a = -a;
  if (b.sum() < 0) b = -b;
  a = a.cwiseMax(0.0);  // a stain absorbs in every channel or not at all: estimates slightly below 0 are noise
  b = b.cwiseMax(0.0);
  if (a.norm() < 1e-9 || b.norm() < 1e-9) return std::nullopt;
  StainEstimate e;
  e.stains.col(0) = (a(0) >= b(0) ? a : b).normalized();  // the more red-absorbing: haematoxylin-like
  e.stains.col(1) = (a(0) >= b(0) ? b : a).normalized();

  const Eigen::MatrixX2d amounts = tissue * e.stains.completeOrthogonalDecomposition().pseudoInverse().transpose();
  for (int c = 0; c < 2; ++c) {
    const Eigen::VectorXd column = amounts.col(c);
    e.max_concentrations(c) = percentile(std::vector<double>(column.data(), column.data() + column.size()), 99);
    if (!(e.max_concentrations(c) > 0)) return std::nullopt;
  }
  return e;
}

Stains stains_of(const MacenkoTarget& t) {
  Stains s;
  for (int c = 0; c < 2; ++c) s.col(c) = Eigen::Vector3d(t.stains[static_cast<std::size_t>(c)].data());
  return s;
}

// --- JSON --------------------------------------------------------------------------------------------
template <std::size_t N>
std::array<double, N> numbers(const json& j, const char* key) {
  if (!j.contains(key)) fail_argument("stain target: no '{}'", key);
  const json& v = j.at(key);
  if (!v.is_array() || v.size() != N) fail_argument("stain target: '{}' must be a list of {} numbers", key, N);
  std::array<double, N> out{};
  for (std::size_t i = 0; i < N; ++i) {
    if (!v[i].is_number() || !std::isfinite(v[i].get<double>())) fail_argument("stain target: '{}' must hold finite numbers", key);
    out[i] = v[i].get<double>();
  }
  return out;
}

}  // namespace

// --- Reinhard ----------------------------------------------------------------------------------------
ReinhardNormalizer::ReinhardNormalizer(ReinhardTarget target) : target_(target) {
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(target_.mean[static_cast<std::size_t>(c)])) fail_argument("Reinhard target: mean[{}] must be finite", c);
    detail::check_positive(target_.std[static_cast<std::size_t>(c)], "Reinhard target std");
  }
}

ReinhardTarget ReinhardNormalizer::fit(const cv::Mat& image) { return lab_statistics(to_lab(image)); }

cv::Mat ReinhardNormalizer::normalize(const cv::Mat& image) const {
  cv::Mat lab = to_lab(image);
  const ReinhardTarget source = lab_statistics(lab);
  std::vector<cv::Mat> channels;
  cv::split(lab, channels);
  for (std::size_t c = 0; c < 3; ++c) {
    // A flat channel has no spread to match: only its mean moves.
    const double scale = source.std[c] > 1e-6 ? target_.std[c] / source.std[c] : 1.0;
    channels[c].convertTo(channels[c], CV_32F, scale, target_.mean[c] - source.mean[c] * scale);
  }
  cv::merge(channels, lab);
  cv::Mat unit, out;
  cv::cvtColor(lab, unit, cv::COLOR_Lab2BGR);
  unit.convertTo(out, CV_8U, 255.0);  // saturates outside [0, 1]
  return out;
}

// --- Macenko -----------------------------------------------------------------------------------------
MacenkoNormalizer::MacenkoNormalizer(MacenkoTarget target, MacenkoOptions options) : target_(target), options_(options) {
  for (std::size_t c = 0; c < 2; ++c) {
    const auto& v = target_.stains[c];
    const double norm = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
    if (!std::isfinite(norm) || norm < 1e-6 || *std::min_element(v.begin(), v.end()) < -1e-6)
      fail_argument("Macenko target: stains[{}] must be a non-negative, non-zero optical-density vector", c);
    for (double& x : target_.stains[c]) x /= norm;
    detail::check_positive(target_.max_concentrations[c], "Macenko target max_concentrations");
  }
  detail::check_positive(options_.background, "Macenko background");
}

MacenkoTarget MacenkoNormalizer::fit(const cv::Mat& image, const MacenkoOptions& options) {
  const auto estimate = estimate_stains(optical_density(to_bgr8(image, "image"), options.background), options);
  if (!estimate)
    fail_argument("Macenko: fewer than {} stained pixels (optical density >= {} in every channel) in the reference image",
                  options.min_stained_pixels, options.od_threshold);
  MacenkoTarget t;
  for (std::size_t c = 0; c < 2; ++c) {
    for (std::size_t k = 0; k < 3; ++k) t.stains[c][k] = estimate->stains(static_cast<Eigen::Index>(k), static_cast<Eigen::Index>(c));
    t.max_concentrations[c] = estimate->max_concentrations(static_cast<Eigen::Index>(c));
  }
  return t;
}

cv::Mat MacenkoNormalizer::normalize(const cv::Mat& image) const {
  const cv::Mat bgr = to_bgr8(image, "image");
  const Od od = optical_density(bgr, options_.background);
  const auto source = estimate_stains(od, options_);
  if (!source) return bgr.clone();  // a blank field: nothing stained to re-render
  const Eigen::Matrix<double, 2, 3> unmix = source->stains.completeOrthogonalDecomposition().pseudoInverse();
  const Eigen::Vector2d scale(target_.max_concentrations[0] / source->max_concentrations(0),
                              target_.max_concentrations[1] / source->max_concentrations(1));
  // Source OD → target OD: the stain amounts re-rendered in the target's stains; what the two source
  // stains do not explain (background tint, red-cell colour) is kept as it was.
  const Eigen::Matrix3d residual = Eigen::Matrix3d::Identity() - source->stains * unmix;
  const Eigen::Matrix3d remix = stains_of(target_) * scale.asDiagonal() * unmix + residual;
  cv::Mat out(bgr.size(), CV_8UC3);
  Eigen::Index i = 0;
  for (int y = 0; y < out.rows; ++y) {
    auto* row = out.ptr<cv::Vec3b>(y);
    for (int x = 0; x < out.cols; ++x, ++i) {
      const Eigen::Vector3d density = remix * od.row(i).transpose();
      for (int c = 0; c < 3; ++c) row[x][2 - c] = cv::saturate_cast<uchar>(options_.background * std::exp(-density(c)));
    }
  }
  return out;
}

// --- from model files --------------------------------------------------------------------------------
std::shared_ptr<const StainNormalizer> make_stain_normalizer(const std::string& method, const std::string& target_json) {
  json j;
  try {
    j = json::parse(target_json);
  } catch (const json::exception& e) {
    fail_argument("stain target for '{}' is not valid JSON: {}", method, e.what());
  }
  if (!j.is_object()) fail_argument("stain target for '{}' must be an object", method);
  if (method == "reinhard") return std::make_shared<ReinhardNormalizer>(ReinhardTarget{numbers<3>(j, "mean"), numbers<3>(j, "std")});
  if (method == "macenko") {
    if (!j.contains("stains") || !j.at("stains").is_array() || j.at("stains").size() != 2)
      fail_argument("stain target: 'stains' must be two [r, g, b] optical-density vectors");
    MacenkoTarget t;
    for (std::size_t c = 0; c < 2; ++c) t.stains[c] = numbers<3>(json{{"stains", j.at("stains")[c]}}, "stains");
    t.max_concentrations = numbers<2>(j, "max_concentrations");
    return std::make_shared<MacenkoNormalizer>(t);
  }
  fail_argument("stain normalisation must be none, reinhard or macenko, got '{}'", method);
}

std::string fit_stain_target(const std::string& method, const cv::Mat& image) {
  if (method == "reinhard") {
    const ReinhardTarget t = ReinhardNormalizer::fit(image);
    return json{{"mean", t.mean}, {"std", t.std}}.dump();
  }
  if (method == "macenko") {
    const MacenkoTarget t = MacenkoNormalizer::fit(image);
    return json{{"stains", t.stains}, {"max_concentrations", t.max_concentrations}}.dump();
  }
  fail_argument("stain normalisation must be reinhard or macenko, got '{}'", method);
}

}  // namespace bloodcv
