#include "bloodcv/report.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
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

const cv::Scalar kUncertainColour(128, 128, 128);  // grey: typed, but not to be trusted

// The classifier's top-k types of a cell, by decreasing probability.
std::vector<std::pair<std::string, float>> top_types(const Cell& c, const std::vector<std::string>& labels, std::size_t k) {
  std::vector<std::pair<std::string, float>> all;
  for (std::size_t i = 0; i < c.type->probabilities.size() && i < labels.size(); ++i) all.emplace_back(labels[i], c.type->probabilities[i]);
  std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  all.resize(std::min(k, all.size()));
  return all;
}

// Shannon entropy of the cell's type probabilities, in nats: 0 when certain, ln(K) when uniform.
double type_entropy(const Cell& c) {
  double h = 0;
  for (const float p : c.type->probabilities)
    if (p > 0) h -= p * std::log(static_cast<double>(p));
  return h;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string quoted = "\"";
  for (const char c : s) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

}  // namespace

namespace {

double overlap_area(const cv::Rect& a, const std::vector<cv::Rect>& placed) {
  double area = 0;
  for (const cv::Rect& p : placed) area += (a & p).area();
  return area;
}

// Where a label of `size` goes near `box`: above it, below it, inside its top, then the same at its right
// edge, then inside its bottom; each shifted into the image. The first that covers no label placed so far
// wins, else the least covered.
cv::Rect place_label(const cv::Rect& box, cv::Size size, cv::Size image, const std::vector<cv::Rect>& placed) {
  const int right = box.x + box.width - size.width, bottom = box.y + box.height;
  const cv::Point candidates[] = {{box.x, box.y - size.height}, {box.x, bottom},         {box.x, box.y},
                                  {right, box.y - size.height}, {right, bottom},         {right, box.y},
                                  {box.x, bottom - size.height}, {right, bottom - size.height}};
  cv::Rect best;
  double best_overlap = -1;
  for (const cv::Point& c : candidates) {
    const cv::Rect r(std::clamp(c.x, 0, std::max(0, image.width - size.width)), std::clamp(c.y, 0, std::max(0, image.height - size.height)),
                     size.width, size.height);
    const double covered = overlap_area(r, placed);
    if (best_overlap < 0 || covered < best_overlap) {
      best = r;
      best_overlap = covered;
    }
    if (covered == 0) break;
  }
  return best;
}

}  // namespace

cv::Mat draw_overlay(const cv::Mat& image, const AnalysisResult& result) {
  if (!result.image_size.empty() && image.size() != result.image_size)
    throw std::invalid_argument(fmt::format("the image is {}x{}, but the result is of a {}x{} image", image.cols, image.rows,
                                            result.image_size.width, result.image_size.height));
  cv::Mat overlay = to_bgr8(image, "image").clone();
  const int thickness = std::max(1, std::min(overlay.cols, overlay.rows) / 400);
  const double font = std::max(0.4, std::min(overlay.cols, overlay.rows) / 1200.0);
  auto colour_of = [&](const Cell& cell) {
    if (cell.uncertain) return kUncertainColour;
    return palette(cell.type ? result.detector_labels.size() + static_cast<std::size_t>(cell.type->label)
                             : static_cast<std::size_t>(cell.detection.label));
  };
  auto rect_of = [](const Box& b) {
    return cv::Rect(cv::Point(static_cast<int>(b.x1), static_cast<int>(b.y1)), cv::Point(static_cast<int>(b.x2), static_cast<int>(b.y2)));
  };
  for (const Cell& cell : result.cells) cv::rectangle(overlay, rect_of(cell.detection.box), colour_of(cell), cell.type ? thickness + 1 : thickness);

  // Labels after all boxes, typed cells first so that theirs get the free places; on crowded slides only
  // typed cells get text.
  std::vector<const Cell*> labelled;
  for (const Cell& cell : result.cells)
    if (cell.type) labelled.push_back(&cell);
  if (result.cells.size() < 400)
    for (const Cell& cell : result.cells)
      if (!cell.type) labelled.push_back(&cell);
  std::vector<cv::Rect> placed;
  for (const Cell* cell : labelled) {
    // An uncertain cell shows its best guess behind a question mark.
    const std::string text = cell->uncertain ? fmt::format("? {} {:.2f}", result.classifier_labels[static_cast<std::size_t>(cell->type->label)],
                                                           cell->type->score)
                             : cell->type ? fmt::format("{} {:.2f}", cell->type_label, cell->type->score)
                                          : fmt::format("{} {:.2f}", cell->label, cell->detection.score);
    int baseline = 0;
    const cv::Size text_size = cv::getTextSize(text, cv::FONT_HERSHEY_SIMPLEX, font, 1, &baseline);
    const cv::Size label_size(text_size.width + 2, text_size.height + baseline + 2);
    const cv::Rect where = place_label(rect_of(cell->detection.box), label_size, overlay.size(), placed);
    placed.push_back(where);
    cv::rectangle(overlay, where, colour_of(*cell), cv::FILLED);
    cv::putText(overlay, text, where.tl() + cv::Point(1, text_size.height + 1), cv::FONT_HERSHEY_SIMPLEX, font, cv::Scalar(255, 255, 255), 1,
                cv::LINE_AA);
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
      cell["uncertain"] = c.uncertain;
      json top = json::array();
      for (const auto& [name, p] : top_types(c, r.classifier_labels, 3)) top.push_back({{"type", name}, {"probability", p}});
      cell["type_top3"] = top;
      cell["type_entropy"] = type_entropy(c);
      json probs = json::object();
      for (std::size_t k = 0; k < c.type->probabilities.size() && k < r.classifier_labels.size(); ++k)
        probs[r.classifier_labels[k]] = c.type->probabilities[k];
      cell["type_probabilities"] = probs;
    }
    cells.push_back(std::move(cell));
  }
  json doc{{"schema", kReportSchema},
                 {"schema_version", kReportSchemaVersion},
                 {"image", {{"path", image_path}, {"width", r.image_size.width}, {"height", r.image_size.height}}},
                 {"tiles", r.tiles},
                 {"detector_labels", r.detector_labels},
                 {"classifier_labels", r.classifier_labels},
                 {"cells", cells},
                 {"counts", r.counts},
                 {"type_counts", r.type_counts},
                 {"differential_percent", r.differential},
                 {"differential_cells", r.differential_cells},
                 {"differential_note", r.differential_note},
                 {"timings_ms",
                  {{"stain", r.timings.stain_ms},
                   {"tiling", r.timings.tiling_ms},
                   {"detection", r.timings.detection_ms},
                   {"merging", r.timings.merging_ms},
                   {"classification", r.timings.classification_ms},
                   {"total", r.timings.total_ms}}}};
  if (r.slide) {
    const SlideInfo& s = *r.slide;
    doc["slide"] = {{"source", s.source}, {"levels", s.levels}, {"downsample", s.downsample}, {"level", s.level},
                    {"tiles_skipped", s.tiles_skipped}, {"tile_errors", s.tile_errors},
                    {"microns_per_pixel", s.microns_per_pixel ? json(*s.microns_per_pixel) : json(nullptr)}};
  }
  return doc.dump(1) + "\n";
}

std::string to_csv(const AnalysisResult& r) {
  std::string out = "id,x1,y1,x2,y2,label,score,type,type_score,top1,top1_p,top2,top2_p,top3,top3_p,type_entropy\n";
  for (std::size_t i = 0; i < r.cells.size(); ++i) {
    const Cell& c = r.cells[i];
    const Box& b = c.detection.box;
    std::string typed = ",,,,,,,,";
    if (c.type) {
      const auto top = top_types(c, r.classifier_labels, 3);
      typed = fmt::format("{},{:.5f}", csv_field(c.type_label), c.type->score);
      for (std::size_t k = 0; k < 3; ++k)
        typed += k < top.size() ? fmt::format(",{},{:.5f}", csv_field(top[k].first), top[k].second) : std::string(",,");
      typed += fmt::format(",{:.5f}", type_entropy(c));
    }
    out += fmt::format("{},{:.2f},{:.2f},{:.2f},{:.2f},{},{:.5f},{}\n", i, b.x1, b.y1, b.x2, b.y2, csv_field(c.label), c.detection.score, typed);
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

namespace {

// "cannot write 'path'", with the system's reason when the failed call left one (full disk, file too large).
[[noreturn]] void fail_write(const std::string& path) {
  if (errno != 0) throw std::runtime_error(fmt::format("cannot write '{}': {}", path, std::strerror(errno)));
  throw std::runtime_error(fmt::format("cannot write '{}'", path));
}

}  // namespace

AtomicFiles::~AtomicFiles() {
  if (committed_) return;
  std::error_code ignored;
  for (const auto& [partial, final_path] : files_) fs::remove(partial, ignored);
}

void AtomicFiles::add(const std::string& path, const std::function<bool(const std::string& partial)>& write) {
  const fs::path target(path);
  const std::string partial = (target.parent_path() / (".partial." + target.filename().string())).string();
  files_.emplace_back(partial, path);
  errno = 0;
  const bool written = write(partial);
  std::error_code ec;
  if (!written || !fs::is_regular_file(partial, ec)) fail_write(path);
}

void AtomicFiles::add_text(const std::string& path, const std::string& text) {
  add(path, [&](const std::string& partial) {
    std::ofstream out(partial, std::ios::binary);
    out << text;
    out.close();
    return static_cast<bool>(out);
  });
}

void AtomicFiles::commit() {
  for (std::size_t i = 0; i < files_.size(); ++i) {
    std::error_code ec;
    fs::rename(files_[i].first, files_[i].second, ec);
    if (ec) {  // none or all: the files already in place go too (the destructor removes the partial rest)
      const std::string reason = ec.message();
      for (std::size_t k = 0; k < i; ++k) fs::remove(files_[k].second, ec);
      throw std::runtime_error(fmt::format("cannot write '{}': {}", files_[i].second, reason));
    }
  }
  committed_ = true;
}

void write_text_file(const std::string& path, const std::string& text) {
  AtomicFiles file;
  file.add_text(path, text);
  file.commit();
}

ReportPaths write_reports(const cv::Mat& image, const AnalysisResult& result, const std::string& out_dir, const std::string& stem,
                          std::int64_t image_id, const std::string& image_path) {
  const fs::path dir(out_dir);
  fs::create_directories(dir);
  const ReportPaths paths{(dir / (stem + ".overlay.jpg")).string(), (dir / (stem + ".json")).string(), (dir / (stem + ".csv")).string(),
                          (dir / (stem + ".coco.json")).string()};
  AtomicFiles files;
  files.add(paths.overlay, [&](const std::string& partial) {
    return cv::imwrite(partial, draw_overlay(image, result));
  });
  files.add_text(paths.csv, to_csv(result));
  files.add_text(paths.coco, to_coco_results(result, image_id));
  files.add_text(paths.json, to_json(result, image_path));  // renamed last: it marks the image done (analyze --resume)
  files.commit();
  return paths;
}

SlideOverview draw_slide_overview(const ImageSource& source, const AnalysisResult& result, int max_side) {
  SlideOverview out;
  const cv::Mat view = read_overview(source, max_side, 1, &out.downsample);
  out.cells = view.clone();
  const auto d = static_cast<float>(out.downsample);
  for (const Cell& cell : result.cells) {
    const Box& b = cell.detection.box;
    const cv::Scalar colour = cell.uncertain ? kUncertainColour
                                             : palette(cell.type ? result.detector_labels.size() + static_cast<std::size_t>(cell.type->label)
                                                                 : static_cast<std::size_t>(cell.detection.label));
    const cv::Point p1(static_cast<int>(b.x1 / d), static_cast<int>(b.y1 / d)), p2(static_cast<int>(b.x2 / d), static_cast<int>(b.y2 / d));
    if (p2.x - p1.x >= 3 && p2.y - p1.y >= 3) cv::rectangle(out.cells, p1, p2, colour, cell.type ? 2 : 1);
    else cv::circle(out.cells, (p1 + p2) / 2, cell.type ? 3 : 1, colour, cv::FILLED);
  }
  // Cells per square of 1/64 of the longer side, colour-mapped where there are any.
  const int square = std::max(4, std::max(view.cols, view.rows) / 64);
  cv::Mat counts = cv::Mat::zeros((view.rows + square - 1) / square, (view.cols + square - 1) / square, CV_32F);
  for (const Cell& cell : result.cells) {
    const int x = std::clamp(static_cast<int>(cell.detection.box.center_x() / d) / square, 0, counts.cols - 1);
    const int y = std::clamp(static_cast<int>(cell.detection.box.center_y() / d) / square, 0, counts.rows - 1);
    counts.at<float>(y, x) += 1.f;
  }
  double most = 0;
  cv::minMaxLoc(counts, nullptr, &most);
  cv::Mat scaled, heat, big_counts;
  counts.convertTo(scaled, CV_8U, most > 0 ? 255.0 / most : 0.0);
  cv::applyColorMap(scaled, heat, cv::COLORMAP_JET);
  cv::resize(heat, heat, view.size(), 0, 0, cv::INTER_NEAREST);
  cv::resize(counts, big_counts, view.size(), 0, 0, cv::INTER_NEAREST);
  cv::Mat blended;
  cv::addWeighted(view, 0.45, heat, 0.55, 0, blended);
  out.density = view.clone();
  blended.copyTo(out.density, big_counts > 0);
  cv::putText(out.density, fmt::format("cells per {0}x{0} px square (level 0): up to {1}", static_cast<int>(square * out.downsample), most),
              {8, 20}, cv::FONT_HERSHEY_SIMPLEX, 0.5, cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  return out;
}

ReportPaths write_slide_reports(const ImageSource& source, const AnalysisResult& result, const std::string& out_dir, const std::string& stem,
                                std::int64_t image_id) {
  namespace fs = std::filesystem;
  fs::create_directories(out_dir);
  const fs::path dir(out_dir);
  ReportPaths paths{(dir / (stem + ".overview.jpg")).string(), (dir / (stem + ".json")).string(), (dir / (stem + ".csv")).string(),
                    (dir / (stem + ".coco.json")).string(), (dir / (stem + ".density.jpg")).string()};
  const SlideOverview pictures = draw_slide_overview(source, result);
  AtomicFiles files;
  files.add(paths.overlay, [&](const std::string& partial) {
    return cv::imwrite(partial, pictures.cells);
  });
  files.add(paths.density, [&](const std::string& partial) {
    return cv::imwrite(partial, pictures.density);
  });
  files.add_text(paths.csv, to_csv(result));
  files.add_text(paths.coco, to_coco_results(result, image_id));
  files.add_text(paths.json, to_json(result, source.name()));  // renamed last: it marks the slide done (analyze --resume)
  files.commit();
  return paths;
}

}  // namespace bloodcv
