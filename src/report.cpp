#include "bloodcv/report.hpp"

#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "bloodcv/image.hpp"

namespace bloodcv {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Distinct BGR colours, one per class index.
cv::Scalar palette(std::size_t i) {
  static const cv::Scalar colours[] = {{60, 20, 220}, {80, 175, 76}, {243, 150, 33}, {0, 152, 255}, {156, 39, 176},
                                       {136, 150, 0}, {7, 193, 255}, {96, 125, 139}, {180, 105, 255}, {0, 87, 183},
                                       {200, 200, 0}, {30, 30, 30}};
  return colours[i % (sizeof(colours) / sizeof(colours[0]))];
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string quoted = "\"";
  for (const char c : s) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) throw std::runtime_error(fmt::format("cannot write '{}'", path.string()));
}

}  // namespace

cv::Mat draw_overlay(const cv::Mat& image, const AnalysisResult& result) {
  cv::Mat overlay = to_bgr8(image, "image").clone();
  const int thickness = std::max(1, std::min(overlay.cols, overlay.rows) / 400);
  const double font = std::max(0.4, std::min(overlay.cols, overlay.rows) / 1200.0);
  for (const Cell& cell : result.cells) {
    const Box& b = cell.detection.box;
    const bool typed = cell.type.has_value();
    const std::size_t colour_index = typed ? result.detector_labels.size() + static_cast<std::size_t>(cell.type->label)
                                           : static_cast<std::size_t>(cell.detection.label);
    const cv::Scalar colour = palette(colour_index);
    const cv::Point p1(static_cast<int>(b.x1), static_cast<int>(b.y1)), p2(static_cast<int>(b.x2), static_cast<int>(b.y2));
    cv::rectangle(overlay, p1, p2, colour, typed ? thickness + 1 : thickness);
    if (typed || result.cells.size() < 400) {  // on crowded slides only typed cells get text
      const std::string text = typed ? fmt::format("{} {:.2f}", cell.type_label, cell.type->score)
                                     : fmt::format("{} {:.2f}", cell.label, cell.detection.score);
      int baseline = 0;
      const cv::Size size = cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, font, 1, &baseline);
      const cv::Point origin(p1.x, std::max(size.height + 2, p1.y - 2));
      cv::rectangle(overlay, origin + cv::Point(0, baseline), origin + cv::Point(size.width, -size.height - 2), colour, cv::FILLED);
      cv::putText(overlay, text, origin, cv::FONT_HERSHEY_SIMPLEX, font, cv::Scalar(255, 255, 255), 1, cv::LINE_AA);
    }
  }
  return overlay;
}

std::string to_json(const AnalysisResult& r, const std::string& image_path) {
  json cells = json::array();
  for (std::size_t i = 0; i < r.cells.size(); ++i) {
    const Cell& c = r.cells[i];
    const Box& b = c.detection.box;
    json cell{{"id", i}, {"box", {b.x1, b.y1, b.x2, b.y2}}, {"label", c.label}, {"score", c.detection.score}};
    if (c.detection.predicted_iou) cell["predicted_iou"] = *c.detection.predicted_iou;
    if (c.type) {
      cell["type"] = c.type_label;
      cell["type_score"] = c.type->score;
      json probs = json::object();
      for (std::size_t k = 0; k < c.type->probabilities.size() && k < r.classifier_labels.size(); ++k)
        probs[r.classifier_labels[k]] = c.type->probabilities[k];
      cell["type_probabilities"] = probs;
    }
    cells.push_back(std::move(cell));
  }
  const json doc{{"schema", kReportSchema},
                 {"schema_version", kReportSchemaVersion},
                 {"image", {{"path", image_path}, {"width", r.image_size.width}, {"height", r.image_size.height}}},
                 {"tiles", r.tiles},
                 {"detector_labels", r.detector_labels},
                 {"classifier_labels", r.classifier_labels},
                 {"cells", cells},
                 {"counts", r.counts},
                 {"type_counts", r.type_counts},
                 {"differential_percent", r.differential},
                 {"timings_ms",
                  {{"tiling", r.timings.tiling_ms},
                   {"detection", r.timings.detection_ms},
                   {"merging", r.timings.merging_ms},
                   {"classification", r.timings.classification_ms},
                   {"total", r.timings.total_ms}}}};
  return doc.dump(1) + "\n";
}

std::string to_csv(const AnalysisResult& r) {
  std::string out = "id,x1,y1,x2,y2,label,score,type,type_score\n";
  for (std::size_t i = 0; i < r.cells.size(); ++i) {
    const Cell& c = r.cells[i];
    const Box& b = c.detection.box;
    out += fmt::format("{},{:.2f},{:.2f},{:.2f},{:.2f},{},{:.5f},{},{}\n", i, b.x1, b.y1, b.x2, b.y2, csv_field(c.label), c.detection.score,
                       csv_field(c.type_label), c.type ? fmt::format("{:.5f}", c.type->score) : "");
  }
  return out;
}

std::string to_coco_results(const AnalysisResult& r, std::int64_t image_id) {
  json results = json::array();
  for (const Cell& c : r.cells) {
    const Box& b = c.detection.box;
    results.push_back({{"image_id", image_id},
                       {"category_id", c.detection.label + 1},
                       {"bbox", {b.x1, b.y1, b.width(), b.height()}},
                       {"score", c.detection.score}});
  }
  return results.dump() + "\n";
}

ReportPaths write_reports(const cv::Mat& image, const AnalysisResult& result, const std::string& out_dir, const std::string& stem,
                          std::int64_t image_id, const std::string& image_path) {
  const fs::path dir(out_dir);
  fs::create_directories(dir);
  const ReportPaths paths{(dir / (stem + ".overlay.jpg")).string(), (dir / (stem + ".json")).string(), (dir / (stem + ".csv")).string(),
                          (dir / (stem + ".coco.json")).string()};
  auto partial = [](const std::string& p) {
    const fs::path path(p);
    return path.parent_path() / (".partial." + path.filename().string());
  };
  const std::string finals[] = {paths.overlay, paths.json, paths.csv, paths.coco};
  try {
    if (!cv::imwrite(partial(paths.overlay).string(), draw_overlay(image, result)))
      throw std::runtime_error(fmt::format("cannot write '{}'", paths.overlay));
    write_text(partial(paths.json), to_json(result, image_path));
    write_text(partial(paths.csv), to_csv(result));
    write_text(partial(paths.coco), to_coco_results(result, image_id));
    for (const std::string& p : finals) fs::rename(partial(p), p);
  } catch (...) {
    std::error_code ec;
    for (const std::string& p : finals) {
      fs::remove(partial(p), ec);
      fs::remove(p, ec);
    }
    throw;
  }
  return paths;
}

}  // namespace bloodcv
