// bloodcv eval: detection metrics of predictions (or of a detector run first) against ground truth.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <fmt/format.h>

#include "bloodcv/bloodcv.hpp"
#include "bloodcv/eval.hpp"
#include "commands.hpp"

namespace fs = std::filesystem;

namespace bloodcv::cli {

namespace {

struct EvalCommand {
  std::string gt, format, images, labels, split, pred, detector, tile, precision, out = "eval", max_dets = "1,10,100";
  std::optional<double> overlap;
  std::optional<float> score_threshold;
  bool only_predicted = false;
};

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

eval::GroundTruth read_ground_truth(const EvalCommand& cmd) {
  std::error_code ec;
  if (!fs::exists(cmd.gt, ec)) throw std::invalid_argument(fmt::format("--gt '{}': no such file or directory", cmd.gt));
  std::string format = cmd.format;
  if (format.empty()) {  // from what the path holds
    const fs::path p(cmd.gt);
    if (p.extension() == ".json") format = "coco";
    else if (p.extension() == ".xml") format = "voc";
    else if (fs::is_directory(p)) {
      for (const auto& e : fs::directory_iterator(p)) {
        if (e.path().extension() == ".xml") format = "voc";
        if (e.path().extension() == ".txt" && format.empty()) format = "yolo";
      }
    }
    if (format.empty()) throw std::invalid_argument(fmt::format("cannot tell the format of '{}': pass --format voc|yolo|coco", cmd.gt));
  }
  const auto labels = split_list(cmd.labels);
  if (format == "voc") return eval::read_voc(cmd.gt, labels);
  if (format == "coco") return eval::read_coco(cmd.gt);
  if (format == "yolo") {
    if (cmd.images.empty()) throw std::invalid_argument("YOLO ground truth needs --images (for the image sizes)");
    return eval::read_yolo(cmd.gt, cmd.images, labels);
  }
  throw std::invalid_argument(fmt::format("--format must be voc, yolo or coco, got '{}'", format));
}

// Runs the detector over the ground truth's images and writes bloodcv reports to out/predictions.
std::string predict(const EvalCommand& cmd, const eval::GroundTruth& gt) {
  if (cmd.images.empty()) throw std::invalid_argument("--detector needs --images DIR");
  PipelineConfig config;
  config.detector = cmd.detector;
  config.classifier.reset();  // boxes are all eval scores
  if (!cmd.tile.empty()) config.tile = parse_size(cmd.tile);
  if (cmd.overlap) config.overlap = *cmd.overlap;
  config.score_threshold = cmd.score_threshold;
  if (!cmd.precision.empty()) config.runtime.precision = cmd.precision;
  const Pipeline pipeline = make_pipeline(config);
  const std::map<std::string, std::string> files = images_by_stem(cmd.images);
  const fs::path dir = fs::path(cmd.out) / "predictions";
  fs::create_directories(dir);
  std::size_t done = 0;
  for (const auto& image : gt.images) {
    const auto it = files.find(image.image);
    if (it == files.end()) throw std::runtime_error(fmt::format("no image named '{}' in '{}'", image.image, cmd.images));
    const AnalysisResult r = pipeline.analyze(it->second);
    write_text_file((dir / (image.image + ".json")).string(), to_json(r, it->second));
    if (++done % 20 == 0 || done == gt.images.size()) fmt::print(stderr, "\rpredicted {}/{} images", done, gt.images.size());
  }
  fmt::print(stderr, "\n");
  return dir.string();
}

std::vector<int> parse_max_dets(const std::string& text) {
  std::vector<int> out;
  for (const std::string& item : split_list(text)) {
    int value = 0;
    char rest = 0;
    if (std::sscanf(item.c_str(), "%d%c", &value, &rest) != 1 || value < 1)
      throw std::invalid_argument(fmt::format("--max-dets must be positive whole numbers separated by commas, got '{}'", text));
    out.push_back(value);
  }
  if (out.empty()) throw std::invalid_argument("--max-dets needs at least one number");
  return out;
}

int run_eval(const EvalCommand& cmd) {
  if (cmd.pred.empty() == cmd.detector.empty()) throw std::invalid_argument("give either --pred or --detector");
  eval::DetectionEvalOptions options;
  options.max_detections = parse_max_dets(cmd.max_dets);
  options.predicted_images_only = cmd.only_predicted;
  eval::GroundTruth gt = read_ground_truth(cmd);
  if (!cmd.split.empty()) gt = eval::select_images(std::move(gt), eval::read_image_ids(cmd.split));
  const std::string predictions = cmd.pred.empty() ? predict(cmd, gt) : cmd.pred;
  const eval::DetectionReport report = eval::evaluate_detections(gt, eval::read_predictions(predictions), options);
  const std::string markdown = eval::to_markdown(report);
  fmt::print("{}", markdown);
  if (report.images_without_predictions)
    fmt::print(stderr, "warning: {} of the {} ground-truth images have no predictions and count as all missed; pass --split or --only-predicted "
                       "to score only the predicted images\n", report.images_without_predictions, report.images);
  if (!report.unmatched_prediction_images.empty())
    fmt::print(stderr, "warning: {} predicted images are not in the ground truth and were ignored (e.g. '{}')\n",
               report.unmatched_prediction_images.size(), report.unmatched_prediction_images.front());
  fs::create_directories(cmd.out);
  AtomicFiles files;
  files.add_text((fs::path(cmd.out) / "eval.md").string(), markdown);
  files.add_text((fs::path(cmd.out) / "eval.json").string(), eval::to_json(report));
  files.commit();
  fmt::print("\nwrote {0}/eval.md and {0}/eval.json\n", cmd.out);
  return 0;
}

}  // namespace

Runner add_eval_command(CLI::App& app) {
  auto e = std::make_shared<EvalCommand>();
  CLI::App* cmd = app.add_subcommand("eval", "Evaluate detections against ground truth: COCO AP/AR, P/R/F1 by IoU, counting error");
  cmd->add_option("--gt", e->gt, "Ground truth: VOC XML file or directory, YOLO label directory, or COCO JSON")->required();
  cmd->add_option("--format", e->format, "voc, yolo or coco (default: from the path)");
  cmd->add_option("--labels", e->labels, "Comma-separated label names (VOC: fixes the set; YOLO: instead of classes.txt)");
  cmd->add_option("--split", e->split, "File of image ids (one per line, as VOC ImageSets): evaluate only those images");
  cmd->add_option("--pred", e->pred,
                  "Predictions: bloodcv analyze's output directory, one analysis JSON, or COCO results JSON (with coco_images.json beside)");
  cmd->add_option("--detector", e->detector, "Run this detector model over --images first, instead of --pred");
  cmd->add_option("--images", e->images, "Image directory (for --detector, and for YOLO image sizes)");
  cmd->add_option("--tile", e->tile, "Tile size W or WxH for --detector (default: its tile size)");
  cmd->add_option("--overlap", e->overlap, "Tile overlap for --detector (default 0.15)");
  cmd->add_option("--precision", e->precision, "Arithmetic of --detector: float32 (default), bfloat16 or float16 (CUDA only)")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  cmd->add_option("--score-threshold", e->score_threshold, "Detector score threshold for --detector (default: the model file's)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--max-dets", e->max_dets, "Comma-separated COCO max detections per image (AP at the largest)")->capture_default_str();
  cmd->add_flag("--only-predicted", e->only_predicted, "Score only the ground-truth images that the predictions cover");
  cmd->add_option("--out", e->out, "Output directory for eval.json, eval.md (and predictions/)")->capture_default_str();
  return [cmd, e] { return cmd->parsed() ? run_eval(*e) : -1; };
}

}  // namespace bloodcv::cli
