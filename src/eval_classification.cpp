// Classification metrics (as scikit-learn's classification_report), the confusion matrix as an image,
// and the detect-then-classify chain.
#include "bloodcv/eval.hpp"

#include <algorithm>
#include <map>

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>

#include "check.hpp"
#include "eval_internal.hpp"

namespace bloodcv::eval {

using bloodcv::detail::fail_argument;
using internal::coco_iou;

// --- classification --------------------------------------------------------------------------------
ClassificationReport evaluate_classification(const std::vector<std::int64_t>& truth, const std::vector<std::int64_t>& predicted,
                                             const std::vector<std::string>& labels) {
  if (truth.size() != predicted.size()) fail_argument("truth has {} entries but predicted has {}", truth.size(), predicted.size());
  const std::size_t k = labels.size();
  if (k == 0) fail_argument("labels is empty");
  // The confusion matrix is k x k: 4,096 labels hold 64 MB of it, 30,000 would hold 3.6 GB.
  if (k > kMaxClassificationLabels) fail_argument("{} labels: at most {} are supported (the confusion matrix is labels²)", k, kMaxClassificationLabels);
  ClassificationReport r;
  r.labels = labels;
  r.confusion.assign(k, std::vector<int>(k, 0));
  for (std::size_t i = 0; i < truth.size(); ++i) {
    for (const auto v : {truth[i], predicted[i]})
      if (v < 0 || static_cast<std::size_t>(v) >= k) fail_argument("label index {} at position {} is outside [0, {})", v, i, k);
    ++r.confusion[static_cast<std::size_t>(truth[i])][static_cast<std::size_t>(predicted[i])];
  }
  int correct = 0, total = static_cast<int>(truth.size());
  for (std::size_t c = 0; c < k; ++c) correct += r.confusion[c][c];
  r.accuracy = total ? static_cast<double>(correct) / total : 0;
  std::vector<bool> occurs(k);  // in the truth or the predictions
  for (std::size_t c = 0; c < k; ++c) {
    int predicted_c = 0, support = 0;
    for (std::size_t o = 0; o < k; ++o) {
      predicted_c += r.confusion[o][c];
      support += r.confusion[c][o];
    }
    const double p = predicted_c ? static_cast<double>(r.confusion[c][c]) / predicted_c : 0;
    const double rc = support ? static_cast<double>(r.confusion[c][c]) / support : 0;
    r.precision.push_back(p);
    r.recall.push_back(rc);
    r.f1.push_back(p + rc > 0 ? 2 * p * rc / (p + rc) : 0);
    r.support.push_back(support);
    occurs[c] = support || predicted_c;
    r.weighted_precision += p * support;
    r.weighted_recall += rc * support;
    r.weighted_f1 += r.f1.back() * support;
  }
  // Macro averages over the classes that occur in the truth or the predictions, as scikit-learn's (labels
  // not given, zero_division=0): a class only ever predicted counts, with recall and F1 of 0.
  const auto occurring = static_cast<double>(std::count(occurs.begin(), occurs.end(), true));
  for (std::size_t c = 0; c < k; ++c)
    if (occurs[c]) {
      r.macro_precision += r.precision[c] / occurring;
      r.macro_recall += r.recall[c] / occurring;
      r.macro_f1 += r.f1[c] / occurring;
    }
  if (total) {
    r.weighted_precision /= total;
    r.weighted_recall /= total;
    r.weighted_f1 /= total;
  }
  return r;
}

cv::Mat draw_confusion(const ClassificationReport& r, int cell_px) {
  const int k = static_cast<int>(r.labels.size()), margin = 140;
  if (cell_px < 16 || cell_px > 256) fail_argument("cell_px must be in [16, 256], got {}", cell_px);
  // 600 labels in 48-pixel cells would be a 2.5 GB image no one could read.
  if (k > kMaxConfusionImageLabels)
    fail_argument("a confusion image of {} labels would be {} pixels a side: at most {} labels are drawn (the report holds the matrix)", k,
                  margin + k * cell_px + 10, kMaxConfusionImageLabels);
  if (r.confusion.size() != r.labels.size()) fail_argument("the report's confusion matrix has {} rows for {} labels", r.confusion.size(), k);
  cv::Mat image(margin + k * cell_px + 10, margin + k * cell_px + 10, CV_8UC3, cv::Scalar::all(255));
  for (int t = 0; t < k; ++t) {
    int row_total = 0;
    for (const int v : r.confusion[static_cast<std::size_t>(t)]) row_total += v;
    for (int p = 0; p < k; ++p) {
      const int v = r.confusion[static_cast<std::size_t>(t)][static_cast<std::size_t>(p)];
      const double share = row_total ? static_cast<double>(v) / row_total : 0;
      const cv::Rect cell(margin + p * cell_px, margin + t * cell_px, cell_px, cell_px);
      cv::rectangle(image, cell, cv::Scalar(255, 255 - 200 * share, 255 - 200 * share), cv::FILLED);
      cv::rectangle(image, cell, cv::Scalar::all(180), 1);
      cv::putText(image, std::to_string(v), cell.tl() + cv::Point(6, cell_px / 2 + 5), cv::FONT_HERSHEY_SIMPLEX, 0.45,
                  share > 0.6 ? cv::Scalar::all(255) : cv::Scalar::all(0), 1, cv::LINE_AA);
    }
    cv::putText(image, r.labels[static_cast<std::size_t>(t)].substr(0, 16), {4, margin + t * cell_px + cell_px / 2 + 5},
                cv::FONT_HERSHEY_SIMPLEX, 0.45, cv::Scalar::all(0), 1, cv::LINE_AA);
  }
  for (int p = 0; p < k; ++p) {  // column labels, written upwards
    cv::Mat text(cell_px, margin - 6, CV_8UC3, cv::Scalar::all(255));
    cv::putText(text, r.labels[static_cast<std::size_t>(p)].substr(0, 16), {2, cell_px / 2 + 5}, cv::FONT_HERSHEY_SIMPLEX, 0.45,
                cv::Scalar::all(0), 1, cv::LINE_AA);
    cv::Mat rotated;
    cv::rotate(text, rotated, cv::ROTATE_90_COUNTERCLOCKWISE);
    rotated.copyTo(image(cv::Rect(margin + p * cell_px, 2, cell_px, margin - 6)));
  }
  cv::putText(image, "true \\ predicted", {4, 16}, cv::FONT_HERSHEY_SIMPLEX, 0.4, cv::Scalar::all(90), 1, cv::LINE_AA);
  return image;
}

// --- detect, then classify ---------------------------------------------------------------------------
ChainReport evaluate_chain(const std::map<std::string, std::vector<TypedBox>>& truth,
                           const std::map<std::string, std::vector<TypedBox>>& predicted, double iou_threshold) {
  detail::check_unit_interval(iou_threshold, "iou_threshold");
  ChainReport r;
  std::vector<std::string> types;
  auto type_index = [&](const std::string& t) {
    const auto it = std::find(types.begin(), types.end(), t);
    if (it != types.end()) return static_cast<std::int64_t>(it - types.begin());
    types.push_back(t);
    return static_cast<std::int64_t>(types.size() - 1);
  };
  std::vector<std::int64_t> true_types, predicted_types;
  for (const auto& [image, cells] : truth) {
    r.cells += static_cast<int>(cells.size());
    const auto it = predicted.find(image);
    if (it == predicted.end()) continue;
    std::vector<TypedBox> preds = it->second;
    std::stable_sort(preds.begin(), preds.end(), [](const TypedBox& a, const TypedBox& b) { return a.score > b.score; });
    std::vector<char> taken(cells.size(), 0);
    for (const TypedBox& p : preds) {
      std::ptrdiff_t best = -1;
      double best_iou = iou_threshold;
      for (std::size_t g = 0; g < cells.size(); ++g) {
        const double v = coco_iou(p.box, cells[g].box, false);
        if (!taken[g] && v >= best_iou) {
          best = static_cast<std::ptrdiff_t>(g);
          best_iou = v;
        }
      }
      if (best < 0) continue;
      taken[static_cast<std::size_t>(best)] = 1;
      ++r.detected;
      const std::string& t = cells[static_cast<std::size_t>(best)].type;
      r.correct += p.type == t;
      true_types.push_back(type_index(t));
      predicted_types.push_back(type_index(p.type));
    }
  }
  r.detection_recall = r.cells ? static_cast<double>(r.detected) / r.cells : 0;
  r.end_to_end_accuracy = r.cells ? static_cast<double>(r.correct) / r.cells : 0;
  if (!types.empty()) r.types = evaluate_classification(true_types, predicted_types, types);
  return r;
}

}  // namespace bloodcv::eval
