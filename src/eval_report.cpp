// The evaluation reports as Markdown tables and JSON.
#include "bloodcv/eval.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "eval_internal.hpp"

namespace bloodcv::eval {

using json = nlohmann::json;
using internal::threshold_index;

// --- reports ---------------------------------------------------------------------------------------
namespace {

std::string number(double v) { return v < 0 ? "—" : fmt::format("{:.4f}", v); }

}  // namespace

std::string to_markdown(const DetectionReport& r) {
  std::string s = fmt::format("Detection: {} images, {} predictions.\n", r.images, r.predictions);
  if (r.images_without_predictions)
    s += fmt::format("\n{} of the {} images have no predictions: all their cells count as missed.\n", r.images_without_predictions, r.images);
  if (!r.unmatched_prediction_images.empty())
    s += fmt::format("\n{} predicted images are not in the ground truth and were ignored (e.g. '{}').\n", r.unmatched_prediction_images.size(),
                     r.unmatched_prediction_images.front());
  s += "\n| metric | value |\n|---|---:|\n";
  for (const auto& [k, v] : r.coco) s += fmt::format("| {} | {} |\n", k, number(v));
  s += "\nAll classes, ranked by score across classes: precision, recall and F1 at the confidence that maximises F1.\n\n"
       "| IoU | precision | recall | F1 | confidence | AP |\n|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& row : r.by_iou)
    s += fmt::format("| {:.2f} | {:.4f} | {:.4f} | {:.4f} | {:.3f} | {} |\n", row.iou, row.precision, row.recall, row.f1, row.confidence, number(row.ap));
  s += "\n| class | ground truth | AP | AP50 | AP75 | P@0.5 | R@0.5 | F1@0.5 | count MAE (score ≥) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  const auto& th = r.options.iou_thresholds;
  const std::size_t t50 = threshold_index(th, 0.5) < th.size() ? threshold_index(th, 0.5) : 0;
  for (const auto& c : r.classes) {
    const ThresholdRow& row = c.by_iou[t50];
    s += fmt::format("| {} | {} | {} | {} | {} | {:.4f} | {:.4f} | {:.4f} | {:.3f} ({:.3f}) |\n", c.label, c.ground_truth, number(c.ap),
                     number(c.ap50), number(c.ap75), row.precision, row.recall, row.f1, c.count_mae, c.count_threshold);
  }
  s += fmt::format("\nMean counting error over classes: {:.3f} cells per image.\n", r.count_mae);
  return s;
}

std::string to_json(const DetectionReport& r) {
  auto rows = [](const std::vector<ThresholdRow>& v) {
    json out = json::array();
    for (const auto& row : v)
      out.push_back({{"iou", row.iou}, {"precision", row.precision}, {"recall", row.recall}, {"f1", row.f1}, {"confidence", row.confidence}, {"ap", row.ap}});
    return out;
  };
  json coco = json::object();
  for (const auto& [k, v] : r.coco) coco[k] = v;
  json classes = json::array();
  for (const auto& c : r.classes)
    classes.push_back({{"label", c.label}, {"ground_truth", c.ground_truth}, {"ap", c.ap}, {"ap50", c.ap50}, {"ap75", c.ap75},
                       {"by_iou", rows(c.by_iou)}, {"count_mae", c.count_mae}, {"count_threshold", c.count_threshold}});
  json opts{{"iou_thresholds", r.options.iou_thresholds}, {"max_detections", r.options.max_detections}};
  return json{{"images", r.images}, {"predictions", r.predictions}, {"images_without_predictions", r.images_without_predictions},
              {"unmatched_prediction_images", r.unmatched_prediction_images}, {"coco", coco}, {"by_iou", rows(r.by_iou)},
              {"classes", classes}, {"count_mae", r.count_mae}, {"options", opts}}
             .dump(1) + "\n";
}

std::string to_markdown(const ClassificationReport& r) {
  int total = 0;
  for (const int s : r.support) total += s;
  std::string s = fmt::format("Accuracy {:.4f} over {} samples.\n\n| class | precision | recall | F1 | support |\n|---|---:|---:|---:|---:|\n",
                              r.accuracy, total);
  for (std::size_t c = 0; c < r.labels.size(); ++c)
    s += fmt::format("| {} | {:.4f} | {:.4f} | {:.4f} | {} |\n", r.labels[c], r.precision[c], r.recall[c], r.f1[c], r.support[c]);
  s += fmt::format("| macro avg | {:.4f} | {:.4f} | {:.4f} | {} |\n", r.macro_precision, r.macro_recall, r.macro_f1, total);
  s += fmt::format("| weighted avg | {:.4f} | {:.4f} | {:.4f} | {} |\n", r.weighted_precision, r.weighted_recall, r.weighted_f1, total);
  s += "\nConfusion matrix (rows: true, columns: predicted)\n\n| |";
  for (const auto& l : r.labels) s += " " + l + " |";
  s += "\n|---|" + std::string() ;
  for (std::size_t c = 0; c < r.labels.size(); ++c) s += "---:|";
  s += "\n";
  for (std::size_t c = 0; c < r.labels.size(); ++c) {
    s += "| " + r.labels[c] + " |";
    for (const int v : r.confusion[c]) s += fmt::format(" {} |", v);
    s += "\n";
  }
  return s;
}

std::string to_json(const ClassificationReport& r) {
  return json{{"labels", r.labels}, {"accuracy", r.accuracy}, {"precision", r.precision}, {"recall", r.recall}, {"f1", r.f1},
              {"support", r.support}, {"macro", {{"precision", r.macro_precision}, {"recall", r.macro_recall}, {"f1", r.macro_f1}}},
              {"weighted", {{"precision", r.weighted_precision}, {"recall", r.weighted_recall}, {"f1", r.weighted_f1}}},
              {"confusion", r.confusion}}
             .dump(1) + "\n";
}

}  // namespace bloodcv::eval
