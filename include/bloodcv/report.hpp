// What an analysis leaves behind: an overlay to check by eye, JSON, CSV and COCO results.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "bloodcv/image_source.hpp"
#include "bloodcv/pipeline.hpp"

namespace bloodcv {

// The JSON report's schema name and version ("schema": "bloodcv.analysis", "schema_version": 1):
// {"image": {"path", "width", "height"}, "tiles", "detector_labels", "classifier_labels",
//  "cells": [{"id", "box": [x1, y1, x2, y2], "label", "score", "predicted_iou"?, "type"? (a type or
//             "uncertain"), "type_score"?, "uncertain"?, "type_top3"?: [{"type", "probability"}],
//             "type_entropy"? (nats), "type_probabilities"?: {name: p}}],
//  "counts": {label: n}, "type_counts": {type: n}, "differential_percent": {type: %},
//  "differential_cells": n, "differential_note": "why it is empty or partial, or empty",
//  "timings_ms": {"stain", "tiling", "detection", "merging", "classification", "total"}}
inline constexpr const char* kReportSchema = "bloodcv.analysis";
inline constexpr int kReportSchemaVersion = 1;

// The image with every cell's box, coloured by type (or by detector label when not classified),
// and its label and score, placed inside the image and clear of other labels where there is room.
// `image` must be the analysed image (its size is checked: std::invalid_argument).
cv::Mat draw_overlay(const cv::Mat& image, const AnalysisResult& result);

std::string to_json(const AnalysisResult& result, const std::string& image_path = "");
// One row per cell: id,x1,y1,x2,y2,label,score,type,type_score,top1,top1_p,top2,top2_p,top3,top3_p,type_entropy
// (type is "uncertain" below the classifier's threshold; top1..3: the most probable types; entropy in nats)
std::string to_csv(const AnalysisResult& result);
// COCO detection results: [{"image_id", "category_id" (detector label index + 1), "bbox": [x, y, w, h], "score"}]
std::string to_coco_results(const AnalysisResult& result, std::int64_t image_id);

// Files that appear whole and together, or not at all: add() writes each under a hidden name beside it
// (".partial.<name>", the same extension, so image writers pick the format); commit() renames them all
// into place. Files not committed (an exception on the way) are removed when the object goes.
class AtomicFiles {
 public:
  AtomicFiles() = default;
  AtomicFiles(const AtomicFiles&) = delete;
  AtomicFiles& operator=(const AtomicFiles&) = delete;
  ~AtomicFiles();
  // `write` creates the file at the path it is given and returns whether it succeeded (cv::imwrite's
  // answer); false, or no file made, throws std::runtime_error naming `path` and the system's reason.
  void add(const std::string& path, const std::function<bool(const std::string& partial)>& write);
  void add_text(const std::string& path, const std::string& text);
  void commit();

 private:
  std::vector<std::pair<std::string, std::string>> files_;  // (partial, final)
  bool committed_ = false;
};

// One text file, whole or not at all (AtomicFiles).
void write_text_file(const std::string& path, const std::string& text);

struct ReportPaths {
  std::string overlay, json, csv, coco;
  std::string density;  // slides only: the cell-density heat map
};

// A slide's pictures at a reduced scale: its overview (at most max_side pixels a side, read_overview) with
// every cell drawn, and a heat map of cell density (cells per square of the overview) over it.
struct SlideOverview {
  cv::Mat cells, density;
  double downsample = 1;  // level-0 pixels per overview pixel
};
SlideOverview draw_slide_overview(const ImageSource& source, const AnalysisResult& result, int max_side = 2048);

// A slide's reports: <stem>.overview.jpg (as overlay) and <stem>.density.jpg instead of a full-size overlay,
// with .json, .csv and .coco.json; all or none, as write_reports.
ReportPaths write_slide_reports(const ImageSource& source, const AnalysisResult& result, const std::string& out_dir, const std::string& stem,
                                std::int64_t image_id);

// Writes <out_dir>/<stem>.overlay.jpg, .json, .csv and .coco.json. Each file is written under a
// temporary name and renamed when complete; if any write fails, none of the four is left behind.
ReportPaths write_reports(const cv::Mat& image, const AnalysisResult& result, const std::string& out_dir, const std::string& stem,
                          std::int64_t image_id, const std::string& image_path = "");

}  // namespace bloodcv
