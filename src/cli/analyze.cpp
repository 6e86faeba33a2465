// bloodcv analyze: every cell found, white cells typed, counts and the differential, per image, with
// an overlay, JSON, CSV and COCO results for each, and a summary over all images.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "bloodcv/bloodcv.hpp"
#include "commands.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace bloodcv::cli {

namespace {

struct AnalyzeCommand {
  std::vector<std::string> inputs;
  std::string detector, classifier, tile, config, device, precision, classify_labels, stain_normalize;
  std::string out = "out";
  std::optional<double> overlap;
  std::optional<int> batch_size, threads;
  bool no_optimize = false;
  std::optional<float> score_threshold, uncertain_below;
  std::optional<double> mpp;
  bool whole_image = false, keep_background = false, resume = false;
  std::string scheduler;
  std::optional<int> regions_per_task;
};

// Many slides on a Dask cluster: bloodcv.distributed does it, with the same options.
int run_distributed(const AnalyzeCommand& cmd) {
  if (!cmd.config.empty() || !cmd.tile.empty() || cmd.overlap || cmd.whole_image || !cmd.stain_normalize.empty() || cmd.score_threshold ||
      cmd.uncertain_below || !cmd.classify_labels.empty() || !cmd.device.empty() || cmd.batch_size || cmd.resume)
    throw std::invalid_argument("--scheduler takes --detector, --classifier, --mpp, --keep-background, --precision, --regions-per-task and --out; "
                                "the other options run without it");
  std::vector<std::string> args(cmd.inputs.begin(), cmd.inputs.end());
  args.insert(args.end(), {"--scheduler", cmd.scheduler, "--out", cmd.out});
  if (!cmd.detector.empty()) args.insert(args.end(), {"--detector", cmd.detector});
  if (!cmd.classifier.empty()) args.insert(args.end(), {"--classifier", cmd.classifier});
  if (cmd.mpp) args.insert(args.end(), {"--mpp", fmt::format("{}", *cmd.mpp)});
  if (cmd.keep_background) args.push_back("--keep-background");
  if (!cmd.precision.empty()) args.insert(args.end(), {"--precision", cmd.precision});
  if (cmd.regions_per_task) args.insert(args.end(), {"--regions-per-task", std::to_string(*cmd.regions_per_task)});
  exec_python_module("bloodcv.distributed", args);
}

// A file read as a whole slide, tile by tile: one OpenSlide opens and that is pyramidal or too large to
// hold (a small single-level tiled TIFF is read as an image).
std::unique_ptr<OpenSlideSource> open_as_slide(const fs::path& path) {
  if (!is_slide(path.string())) return nullptr;
  auto source = std::make_unique<OpenSlideSource>(path.string());
  const cv::Size s = source->size();
  if (source->levels().size() > 1 || static_cast<long long>(s.width) * s.height > (64LL << 20)) return source;
  return nullptr;
}

// Every image once, in the order given (a directory's images sorted by name).
std::vector<fs::path> collect_images(const std::vector<std::string>& inputs) {
  std::vector<fs::path> images;
  std::set<fs::path> seen;
  auto add = [&](const fs::path& p) {
    std::error_code ec;
    const fs::path key = fs::weakly_canonical(p, ec);
    if (seen.insert(ec ? p : key).second) images.push_back(p);
  };
  for (const std::string& in : inputs) {
    const fs::path p(in);
    if (fs::is_directory(p)) {
      std::vector<fs::path> found;
      for (const auto& e : fs::directory_iterator(p))
        if (e.is_regular_file() && is_image_file(e.path().string())) found.push_back(e.path());
      if (found.empty()) throw std::runtime_error(fmt::format("no images ({}) in directory '{}'", fmt::join(image_extensions(), " "), in));
      std::sort(found.begin(), found.end());
      for (const fs::path& f : found) add(f);
    } else {
      add(p);  // a missing file is reported when its turn comes
    }
  }
  return images;
}

// Report names: each image's file stem, with "-2", "-3", ... for later images of the same stem (a/X.jpg
// and b/X.jpg), so no report overwrites another.
std::vector<std::string> report_stems(const std::vector<fs::path>& images) {
  std::set<std::string> used;
  std::vector<std::string> stems;
  for (const fs::path& image : images) {
    std::string stem = image.stem().string();
    for (int k = 2; !used.insert(stem).second; ++k) stem = fmt::format("{}-{}", image.stem().string(), k);
    stems.push_back(stem);
  }
  return stems;
}

PipelineConfig resolve_config(const AnalyzeCommand& cmd) {
  PipelineConfig c = cmd.config.empty() ? PipelineConfig{} : load_pipeline_config(cmd.config);
  if (!cmd.detector.empty()) c.detector = cmd.detector;
  if (cmd.classifier == "none") {
    c.classifier.reset();
  } else if (!cmd.classifier.empty()) {
    c.classifier = cmd.classifier;
  }
  if (!cmd.tile.empty()) c.tile = parse_size(cmd.tile);
  if (cmd.overlap) c.overlap = *cmd.overlap;
  if (cmd.whole_image) c.whole_image = true;
  if (!cmd.stain_normalize.empty()) c.stain_normalize = cmd.stain_normalize;
  if (!cmd.device.empty()) c.runtime.device = cmd.device;
  if (!cmd.precision.empty()) c.runtime.precision = cmd.precision;
  if (cmd.batch_size) c.runtime.batch_size = *cmd.batch_size;
  // Every core unless told otherwise (a config file's "threads", or --threads).
  c.runtime.threads = cmd.threads ? *cmd.threads : c.runtime.threads ? c.runtime.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (cmd.no_optimize) c.runtime.optimize = false;
  if (cmd.score_threshold) c.score_threshold = *cmd.score_threshold;
  if (cmd.uncertain_below) c.uncertain_below = *cmd.uncertain_below;
  if (!cmd.classify_labels.empty()) {
    c.classify_labels.clear();
    std::stringstream list(cmd.classify_labels);
    for (std::string label; std::getline(list, label, ',');)
      if (!label.empty()) c.classify_labels.push_back(label);
  }
  return c;
}

std::string counts_line(const std::map<std::string, int>& counts) {
  std::string s;
  for (const auto& [name, n] : counts) s += fmt::format("{}{} {}", s.empty() ? "" : ", ", name, n);
  return s;
}

// The output directory, made before any image is analysed: a path that is a file fails here, once. Files
// half-written by a run that was killed (AtomicFiles' hidden ".partial." names) are removed.
void prepare_output_dir(const fs::path& out) {
  std::error_code ec;
  if (fs::exists(out, ec) && !fs::is_directory(out, ec))
    throw std::runtime_error(fmt::format("--out '{}' exists and is not a directory", out.string()));
  fs::create_directories(out, ec);
  if (ec) throw std::runtime_error(fmt::format("--out '{}': cannot create the directory: {}", out.string(), ec.message()));
  for (const auto& entry : fs::directory_iterator(out, ec))
    if (entry.path().filename().string().rfind(".partial.", 0) == 0) fs::remove(entry.path(), ec);
}

// What a run knows of one analysed image: its summary entry, its COCO image and results, and the counts
// for the table.
struct Done {
  json entry, coco_image, coco_results;
  std::map<std::string, int> counts, type_counts;
};

// An image's reports from an earlier run (--resume): complete (the JSON report is renamed last, after the
// others) and of the same input path; nullopt otherwise, and the image is analysed again.
std::optional<Done> earlier_reports(const fs::path& out, const std::string& stem, const fs::path& image, std::int64_t image_id) {
  const fs::path report = out / (stem + ".json");
  std::error_code ec;
  if (!fs::is_regular_file(report, ec)) return std::nullopt;
  json doc;
  try {
    std::ifstream in(report);
    doc = json::parse(in);
    if (doc.at("image").at("path").get<std::string>() != image.string()) return std::nullopt;
    const bool slide = doc.contains("slide");
    for (const char* suffix : {".csv", ".coco.json", slide ? ".overview.jpg" : ".overlay.jpg"})
      if (!fs::is_regular_file(out / (stem + suffix), ec)) return std::nullopt;
    if (slide && !fs::is_regular_file(out / (stem + ".density.jpg"), ec)) return std::nullopt;
    Done d;
    d.counts = doc.at("counts").get<std::map<std::string, int>>();
    d.type_counts = doc.at("type_counts").get<std::map<std::string, int>>();
    d.entry = {{"id", image_id}, {"path", image.string()}, {"report", report.string()}, {"counts", doc.at("counts")},
               {"type_counts", doc.at("type_counts")}, {"differential_percent", doc.at("differential_percent")},
               {"differential_cells", doc.at("differential_cells")}, {"differential_note", doc.at("differential_note")},
               {"total_ms", doc.at("timings_ms").at("total")}};
    if (slide) {
      const json& s = doc.at("slide");
      d.entry["slide"] = {{"tiles", doc.at("tiles")}, {"tiles_skipped", s.at("tiles_skipped")}, {"downsample", s.at("downsample")},
                          {"level", s.at("level")}, {"density", (out / (stem + ".density.jpg")).string()}};
    }
    d.coco_image = {{"id", image_id}, {"file_name", image.filename().string()}, {"width", doc.at("image").at("width")},
                    {"height", doc.at("image").at("height")}};
    std::ifstream coco(out / (stem + ".coco.json"));
    d.coco_results = json::parse(coco);
    for (json& det : d.coco_results) det["image_id"] = image_id;
    return d;
  } catch (const std::exception&) {  // unreadable or of another schema: analysed again
    return std::nullopt;
  }
}

int run_analyze(const AnalyzeCommand& cmd) {
  if (!cmd.scheduler.empty()) return run_distributed(cmd);
  const PipelineConfig config = resolve_config(cmd);
  const std::vector<fs::path> images = collect_images(cmd.inputs);
  const std::vector<std::string> stems = report_stems(images);
  const Pipeline pipeline = make_pipeline(config);  // loads the models: fails before anything is written
  prepare_output_dir(cmd.out);
  const auto detector_labels = pipeline.detector().labels();
  fmt::print("detector {}{}\n", config.detector, config.classifier ? fmt::format(", classifier {}", *config.classifier) : ", no classifier");

  json summary{{"detector", config.detector}, {"classifier", config.classifier ? json(*config.classifier) : json(nullptr)},
               {"images", json::array()}};
  json coco_images = json::array(), coco_results = json::array();
  std::map<std::string, int> total_counts, total_types;
  std::vector<std::pair<std::string, Done>> table;
  json failures = json::array();
  std::size_t resumed = 0;
  const auto record = [&](const fs::path& path, Done d) {
    for (const auto& [k, n] : d.counts) total_counts[k] += n;
    for (const auto& [k, n] : d.type_counts) total_types[k] += n;
    summary["images"].push_back(d.entry);
    coco_images.push_back(d.coco_image);
    for (json& det : d.coco_results) coco_results.push_back(std::move(det));
    table.emplace_back(path.filename().string(), std::move(d));
  };
  for (std::size_t i = 0; i < images.size(); ++i) {
    const fs::path& path = images[i];
    const auto image_id = static_cast<std::int64_t>(i + 1);
    if (cmd.resume) {
      if (auto earlier = earlier_reports(cmd.out, stems[i], path, image_id)) {
        fmt::print("[{}/{}] {}: done by an earlier run (its report is kept)\n", i + 1, images.size(), path.filename().string());
        record(path, std::move(*earlier));
        ++resumed;
        continue;
      }
    }
    try {
      AnalysisResult r;
      ReportPaths written;
      SlideOptions slide_options;
      slide_options.microns_per_pixel = cmd.mpp;
      slide_options.skip_background = !cmd.keep_background;
      if (const auto slide = open_as_slide(path)) {
        r = pipeline.analyze(*slide, slide_options);
        written = write_slide_reports(*slide, r, cmd.out, stems[i], image_id);
      } else {
        const cv::Mat image = read_image(path.string());
        // At a physical scale only where both the image (--mpp) and the detector know theirs.
        r = cmd.mpp && pipeline.detector().microns_per_pixel() ? pipeline.analyze(MatImageSource(image, path.string(), cmd.mpp), slide_options)
                                                              : pipeline.analyze(image);
        written = write_reports(image, r, cmd.out, stems[i], image_id, path.string());
      }
      if (r.slide)
        for (const std::string& error : r.slide->tile_errors)
          std::cerr << fmt::format("[{}/{}] {}: warning: {} (the other tiles were analysed)\n", i + 1, images.size(), path.string(), error);
      if (r.slide && r.slide->tiles_skipped)
        fmt::print("[{}/{}] {}: {} of {} tiles held no tissue and were skipped\n", i + 1, images.size(), path.filename().string(),
                   r.slide->tiles_skipped, r.tiles);
      fmt::print("[{}/{}] {}: {} cells ({}){} in {:.0f} ms\n", i + 1, images.size(), path.filename().string(), r.cells.size(),
                 counts_line(r.counts), r.type_counts.empty() ? "" : "; types: " + counts_line(r.type_counts), r.timings.total_ms);
      std::fflush(stdout);
      Done d;
      d.counts = r.counts;
      d.type_counts = r.type_counts;
      d.entry = {{"id", image_id}, {"path", path.string()}, {"report", written.json}, {"counts", r.counts},
                 {"type_counts", r.type_counts}, {"differential_percent", r.differential},
                 {"differential_cells", r.differential_cells}, {"differential_note", r.differential_note},
                 {"total_ms", r.timings.total_ms}};
      if (r.slide)
        d.entry["slide"] = {{"tiles", r.tiles}, {"tiles_skipped", r.slide->tiles_skipped}, {"downsample", r.slide->downsample},
                            {"level", r.slide->level}, {"density", written.density}};
      d.coco_image = {{"id", image_id}, {"file_name", path.filename().string()}, {"width", r.image_size.width},
                      {"height", r.image_size.height}};
      d.coco_results = json::parse(to_coco_results(r, image_id));
      record(path, std::move(d));
    } catch (const std::exception& e) {
      failures.push_back({{"path", path.string()}, {"error", e.what()}});
      std::cerr << fmt::format("[{}/{}] {}: error: {}\n", i + 1, images.size(), path.string(), e.what());
    }
  }

  // The counts table: one row per image, one column per detector label and cell type.
  std::vector<std::string> columns(detector_labels.begin(), detector_labels.end());
  for (const auto& [name, n] : total_types) columns.push_back(name);
  std::size_t name_width = 5;
  for (const auto& [name, d] : table) name_width = std::max(name_width, name.size());
  std::string header = fmt::format("{:<{}}", "image", name_width);
  for (const auto& c : columns) header += fmt::format(" {:>{}}", c, std::max<std::size_t>(c.size(), 5));
  fmt::print("\n{}\n", header);
  auto row = [&](const std::string& name, const std::map<std::string, int>& counts, const std::map<std::string, int>& types) {
    std::string line = fmt::format("{:<{}}", name, name_width);
    for (const auto& c : columns) {
      const int n = counts.count(c) ? counts.at(c) : types.count(c) ? types.at(c) : 0;
      line += fmt::format(" {:>{}}", n, std::max<std::size_t>(c.size(), 5));
    }
    fmt::print("{}\n", line);
  };
  for (const auto& [name, d] : table) row(name, d.counts, d.type_counts);
  if (table.size() > 1) row("total", total_counts, total_types);

  const Differential differential = differential_of(total_types);
  summary["total_counts"] = total_counts;
  summary["total_type_counts"] = total_types;
  summary["total_differential_percent"] = differential.percent;
  summary["total_differential_cells"] = differential.cells;
  summary["total_differential_note"] = differential.note;
  summary["failed_images"] = failures;  // [{"path", "error"}]

  json categories = json::array();
  for (std::size_t k = 0; k < detector_labels.size(); ++k) categories.push_back({{"id", k + 1}, {"name", detector_labels[k]}});
  AtomicFiles files;  // the summary and the COCO pair together
  files.add_text((fs::path(cmd.out) / "summary.json").string(), summary.dump(1) + "\n");
  files.add_text((fs::path(cmd.out) / "coco_results.json").string(), coco_results.dump() + "\n");
  files.add_text((fs::path(cmd.out) / "coco_images.json").string(),
                 json{{"images", coco_images}, {"categories", categories}, {"annotations", json::array()}}.dump(1) + "\n");
  files.commit();
  fmt::print("\nwrote {} report(s){} and summary.json, coco_results.json, coco_images.json to {}/\n", table.size() - resumed,
             resumed ? fmt::format(" (kept {} from an earlier run)", resumed) : "", cmd.out);
  if (!failures.empty()) fmt::print(stderr, "{} of {} image(s) failed\n", failures.size(), images.size());
  return failures.empty() ? 0 : 1;
}

}  // namespace

Runner add_analyze_command(CLI::App& app) {
  auto a = std::make_shared<AnalyzeCommand>();
  CLI::App* cmd = app.add_subcommand("analyze", "Find, classify and count the cells of smear images; write overlays, JSON, CSV, COCO");
  cmd->add_option("images", a->inputs, "Image files, whole slides (pyramidal TIFF, SVS, NDPI, MRXS, ...) or directories of them")->required();
  cmd->add_option("--detector", a->detector, "Detector model file (default: models/cell_detector.pt)");
  cmd->add_option("--classifier", a->classifier, "Classifier model file, or 'none' (default: models/wbc_classifier.pt if present)");
  cmd->add_option("--tile", a->tile, "Tile size W or WxH in pixels (default: the detector's tile size, the scale it was trained at)");
  cmd->add_option("--overlap", a->overlap, "Overlap between tiles, a fraction of the tile size in [0, 1) (default 0.15)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_flag("--whole-image", a->whole_image, "Also detect on the whole image, resized (as SAHI's standard pass)");
  cmd->add_option("--classify-labels", a->classify_labels, "Comma-separated detector labels whose cells are classified (default WBC)");
  cmd->add_option("--score-threshold", a->score_threshold, "Detector score threshold in [0, 1] (default: the model file's)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--stain-normalize", a->stain_normalize,
                  "Stain normalisation before the classifier: none, reinhard or macenko, to the classifier file's target "
                  "(default: what the classifier file recommends, else none)")
      ->check(CLI::IsMember({"none", "reinhard", "macenko"}));
  cmd->add_option("--uncertain-below", a->uncertain_below,
                  "Type cells whose top type probability is below this 'uncertain' (default: the classifier file's threshold)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--mpp", a->mpp, "Microns per pixel of the inputs (level 0): read at the detector's training scale when its model file "
                                   "records one (default: a slide's own)")->check(CLI::PositiveNumber);
  cmd->add_flag("--keep-background", a->keep_background, "Run every tile of a slide, also those the tissue mask finds empty");
  cmd->add_flag("--resume", a->resume,
                "Keep the reports an earlier (interrupted) run wrote to --out for the same images, analyse the rest, and write the "
                "summary over all of them");
  cmd->add_option("--scheduler", a->scheduler,
                  "Analyse on a Dask cluster (bloodcv.distributed): local, local:N (N local workers) or tcp://HOST:PORT");
  cmd->add_option("--regions-per-task", a->regions_per_task, "With --scheduler: tiles per Dask task (default 16)")->check(CLI::PositiveNumber);
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (default cpu)");
  cmd->add_option("--precision", a->precision,
                  "Arithmetic of the networks: float32 (default), bfloat16 (about 1.8x faster on CPUs with AVX512-BF16 or AMX; "
                  "emulated and slower on others) or float16 (CUDA only)")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  cmd->add_option("--batch-size", a->batch_size, "Tiles or crops per forward pass (default 8)")->check(CLI::PositiveNumber);
  cmd->add_option("--threads", a->threads, "CPU threads for inference (default: every core)")->check(CLI::PositiveNumber);
  cmd->add_flag("--no-optimize", a->no_optimize, "Run the model files as they are, without freezing and optimising them at load");
  cmd->add_option("--config", a->config, "JSON pipeline config; options given here override it");
  cmd->add_option("--out", a->out, "Output directory")->capture_default_str();
  cmd->footer(
      "Writes, for each image STEM: STEM.overlay.jpg, STEM.json (schema bloodcv.analysis v1), STEM.csv, STEM.coco.json\n"
      "(a later image with the same STEM gets STEM-2, ...); and summary.json (failed images listed with the reason),\n"
      "coco_results.json, coco_images.json over all images. Exit status 1 if any image failed.");
  return [cmd, a] { return cmd->parsed() ? run_analyze(*a) : -1; };
}

}  // namespace bloodcv::cli
