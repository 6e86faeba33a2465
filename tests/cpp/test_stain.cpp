// Stain normalisation on synthetic stain shifts: the same stain amounts rendered with two laboratories'
// stain colours and strengths, so the right answer is known.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include <opencv2/imgproc.hpp>

#include "bloodcv/stain.hpp"

using namespace bloodcv;
using Catch::Matchers::Contains;

namespace {

using Vec = std::array<double, 3>;

Vec unit(Vec v) {
  const double n = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  return {v[0] / n, v[1] / n, v[2] / n};
}

// Stain amounts of a smear field: purple nuclei (haematoxylin-like) inside pink cells (eosin-like) on
// an unstained background, with a little noise.
std::pair<cv::Mat, cv::Mat> amounts() {
  cv::Mat h(240, 320, CV_64F, cv::Scalar(0)), e(240, 320, CV_64F, cv::Scalar(0));
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> x(30, 290), y(30, 210);
  for (int k = 0; k < 12; ++k) {
    const cv::Point c(x(rng), y(rng));
    cv::circle(e, c, 24, cv::Scalar(0.6 + 0.05 * (k % 4)), cv::FILLED);
    if (k % 3 == 0) {  // a nucleus: haematoxylin only
      cv::circle(h, c, 12, cv::Scalar(1.0 + 0.1 * (k % 2)), cv::FILLED);
      cv::circle(e, c, 12, cv::Scalar(0), cv::FILLED);
    }
  }
  cv::Mat noise(h.size(), CV_64F);
  cv::randn(noise, 0, 0.02);
  cv::add(h, noise, h, h > 0);
  cv::randn(noise, 0, 0.02);
  cv::add(e, noise, e, e > 0);
  return {h, e};
}

cv::Mat render(const cv::Mat& h, const cv::Mat& e, Vec hv, Vec ev, double hs, double es) {
  hv = unit(hv);
  ev = unit(ev);
  cv::Mat out(h.size(), CV_8UC3);
  for (int r = 0; r < h.rows; ++r)
    for (int c = 0; c < h.cols; ++c)
      for (int k = 0; k < 3; ++k) {
        const double od = hv[static_cast<std::size_t>(k)] * h.at<double>(r, c) * hs + ev[static_cast<std::size_t>(k)] * e.at<double>(r, c) * es;
        out.at<cv::Vec3b>(r, c)[2 - k] = cv::saturate_cast<uchar>(240 * std::exp(-od) - 1);
      }
  return out;
}

const Vec kLabH{0.65, 0.70, 0.29}, kLabE{0.07, 0.99, 0.11};       // reference laboratory
const Vec kOtherH{0.45, 0.80, 0.40}, kOtherE{0.20, 0.85, 0.30};   // another stain batch and microscope

double angle_degrees(const std::array<double, 3>& a, Vec b) {
  b = unit(b);
  return std::acos(std::min(1.0, a[0] * b[0] + a[1] * b[1] + a[2] * b[2])) * 180 / M_PI;
}

}  // namespace

TEST_CASE("Reinhard: the normalised image's Lab statistics are the target's", "[stain]") {
  const auto [h, e] = amounts();
  const cv::Mat reference = render(h, e, kLabH, kLabE, 1.0, 1.0), shifted = render(h, e, kOtherH, kOtherE, 1.4, 0.7);
  const ReinhardTarget target = ReinhardNormalizer::fit(reference);
  const ReinhardTarget before = ReinhardNormalizer::fit(shifted);
  const ReinhardTarget after = ReinhardNormalizer::fit(ReinhardNormalizer(target).normalize(shifted));
  double moved = 0;
  for (std::size_t c = 0; c < 3; ++c) {
    moved = std::max(moved, std::abs(before.mean[c] - target.mean[c]));
    CHECK(after.mean[c] == Approx(target.mean[c]).margin(1.0));  // Lab units; 8-bit rounding and clipping
    CHECK(after.std[c] == Approx(target.std[c]).margin(1.0));
  }
  CHECK(moved > 5);  // the shift was real
}

TEST_CASE("Macenko: the stain colours and amounts of the normalised image are the target's", "[stain]") {
  const auto [h, e] = amounts();
  const cv::Mat reference = render(h, e, kLabH, kLabE, 1.0, 1.0), shifted = render(h, e, kOtherH, kOtherE, 1.4, 0.7);
  const MacenkoTarget target = MacenkoNormalizer::fit(reference);
  CHECK(angle_degrees(target.stains[0], kLabH) < 3);  // it recovers the stains it was rendered with
  CHECK(angle_degrees(target.stains[1], kLabE) < 3);
  const MacenkoTarget source = MacenkoNormalizer::fit(shifted);
  CHECK(angle_degrees(source.stains[0], kOtherH) < 3);
  const cv::Mat normalized = MacenkoNormalizer(target).normalize(shifted);
  const MacenkoTarget after = MacenkoNormalizer::fit(normalized);
  for (std::size_t c = 0; c < 2; ++c) {
    CHECK(angle_degrees(after.stains[c], Vec{target.stains[c][0], target.stains[c][1], target.stains[c][2]}) < 2);
    CHECK(after.max_concentrations[c] == Approx(target.max_concentrations[c]).epsilon(0.05));
  }
  // The same amounts in the same stains: over the stained pixels, close to the reference rendering.
  const cv::Mat stained = (h > 0) | (e > 0);
  cv::Mat diff;
  cv::absdiff(normalized, reference, diff);
  const auto channel_mean = [&](const cv::Mat& d) {
    const cv::Scalar m = cv::mean(d, stained);
    return (m[0] + m[1] + m[2]) / 3;
  };
  const double after_error = channel_mean(diff);
  cv::absdiff(shifted, reference, diff);
  const double before_error = channel_mean(diff);
  CHECK(after_error < 3);
  CHECK(before_error > 5 * after_error);
}

TEST_CASE("stain targets from model-file JSON, and their errors", "[stain][errors]") {
  const auto [h, e] = amounts();
  const cv::Mat reference = render(h, e, kLabH, kLabE, 1.0, 1.0);
  for (const char* method : {"reinhard", "macenko"}) {
    const auto normalizer = make_stain_normalizer(method, fit_stain_target(method, reference));
    cv::Mat diff;
    cv::absdiff(normalizer->normalize(reference), reference, diff);
    CHECK(cv::mean(diff)[0] < 2);  // the reference is already in its own colours
  }
  CHECK_THROWS_WITH(make_stain_normalizer("reinhard", R"({"mean": [50, 0, 0]})"), Contains("no 'std'"));
  CHECK_THROWS_WITH(make_stain_normalizer("reinhard", R"({"mean": [50, 0], "std": [1, 1, 1]})"), Contains("'mean' must be a list of 3"));
  CHECK_THROWS_WITH(make_stain_normalizer("reinhard", R"({"mean": [50, 0, 0], "std": [1, 0, 1]})"), Contains("std must be positive"));
  CHECK_THROWS_WITH(make_stain_normalizer("macenko", R"({"stains": [[1, 0, 0]], "max_concentrations": [1, 1]})"), Contains("'stains'"));
  CHECK_THROWS_WITH(make_stain_normalizer("macenko", R"({"stains": [[1, 0, 0], [0, 0, 0]], "max_concentrations": [1, 1]})"),
                    Contains("stains[1]"));
  CHECK_THROWS_WITH(make_stain_normalizer("vahadane", "{}"), Contains("none, reinhard or macenko"));
  CHECK_THROWS_WITH(make_stain_normalizer("reinhard", "{oops"), Contains("not valid JSON"));
}

TEST_CASE("Macenko on a field without stain: fit refuses, normalize leaves it", "[stain][errors]") {
  const cv::Mat blank(100, 100, CV_8UC3, cv::Scalar(235, 235, 235));
  CHECK_THROWS_WITH(MacenkoNormalizer::fit(blank), Contains("fewer than 100 stained pixels"));
  const auto [h, e] = amounts();
  const MacenkoNormalizer normalizer(MacenkoNormalizer::fit(render(h, e, kLabH, kLabE, 1.0, 1.0)));
  cv::Mat diff;
  cv::absdiff(normalizer.normalize(blank), blank, diff);
  CHECK(cv::countNonZero(diff.reshape(1)) == 0);
}
