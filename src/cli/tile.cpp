// bloodcv tile: cut an image into overlapping tiles; with --boxes, show how seam duplicates are merged
// by running a perfect "detector" (the known boxes, cut by each tile) through the tile pipeline.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "bloodcv/bloodcv.hpp"
#include "commands.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace bloodcv::cli {

namespace {

struct TileCommand {
  std::string image;
  std::string boxes;
  std::string tile = "320x240";
  double overlap = 0.15;
  std::string merge = "seam";
  std::string out = "out";
};


struct LabelledBoxes {
  std::vector<Box> boxes;
  std::vector<std::string> labels;
};

LabelledBoxes read_boxes(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(fmt::format("cannot open boxes file '{}'", path));
  json doc;
  try {
    doc = json::parse(in);
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("boxes file '{}' is not valid JSON: {}", path, e.what()));
  }
  LabelledBoxes out;
  try {
    for (const auto& obj : doc.at("objects")) {
      const auto b = obj.at("box").get<std::vector<float>>();
      if (b.size() != 4) throw std::runtime_error("a box needs 4 numbers");
      out.boxes.push_back({b[0], b[1], b[2], b[3]});
      out.labels.push_back(obj.at("label").get<std::string>());
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("boxes file '{}': expected {{\"objects\": [{{\"label\": str, \"box\": [x1, y1, x2, y2]}}]}}: {}",
                                         path, e.what()));
  }
  validate_boxes(out.boxes, fmt::format("{}: objects", path));
  return out;
}

// What a perfect detector reports in one tile: the visible part of each box, in tile coordinates,
// scored by the fraction of the box that is visible.
std::vector<Detection> perfect_detections(const LabelledBoxes& truth, const std::vector<std::int64_t>& label_ids, const Tile& tile) {
  const cv::Rect& r = tile.region;
  const Box tile_box{float(r.x), float(r.y), float(r.x + r.width), float(r.y + r.height)};
  std::vector<Detection> out;
  for (std::size_t i = 0; i < truth.boxes.size(); ++i) {
    const Box& b = truth.boxes[i];
    const float visible = intersection(b, tile_box);
    if (visible <= 0) continue;
    Detection d;
    d.box = clip_box({b.x1 - tile_box.x1, b.y1 - tile_box.y1, b.x2 - tile_box.x1, b.y2 - tile_box.y1}, float(r.width), float(r.height));
    d.score = b.area() > 0 ? visible / b.area() : 1.f;
    d.label = label_ids[i];
    out.push_back(d);
  }
  return out;
}

int run_tile(const TileCommand& cmd) {
  const cv::Mat image = read_image(cmd.image);
  GridTilerOptions options;
  options.tile_size = parse_size(cmd.tile);
  options.overlap_ratio = cmd.overlap;
  const GridTiler tiler(options);
  const std::shared_ptr<const TileMerger> merger = make_merger(cmd.merge);
  const std::vector<Tile> tiles = tiler.tiles(image);

  json report{{"image", cmd.image},
              {"width", image.cols},
              {"height", image.rows},
              {"tile_size", {options.tile_size.width, options.tile_size.height}},
              {"overlap_pixels", {tiler.overlap().width, tiler.overlap().height}},
              {"tiles", json::array()}};
  for (const Tile& t : tiles) report["tiles"].push_back({t.region.x, t.region.y, t.region.width, t.region.height});

  cv::Mat overlay = image.clone();
  for (const Tile& t : tiles) cv::rectangle(overlay, t.region, cv::Scalar(255, 160, 0), 1);
  fmt::print("{}: {}x{} -> {} tiles of {}x{} (overlap {} px)\n", cmd.image, image.cols, image.rows, tiles.size(),
             options.tile_size.width, options.tile_size.height, tiler.overlap().width);

  if (!cmd.boxes.empty()) {
    const LabelledBoxes truth = read_boxes(cmd.boxes);
    std::map<std::string, std::int64_t> ids;
    std::vector<std::string> names;
    std::vector<std::int64_t> label_ids;
    for (const auto& l : truth.labels) {
      if (!ids.count(l)) {
        ids[l] = static_cast<std::int64_t>(names.size());
        names.push_back(l);
      }
      label_ids.push_back(ids[l]);
    }
    std::vector<std::vector<Detection>> per_tile;
    std::size_t tile_detections = 0;
    for (const Tile& t : tiles) {
      per_tile.push_back(perfect_detections(truth, label_ids, t));
      tile_detections += per_tile.back().size();
    }
    const auto start = std::chrono::steady_clock::now();
    const auto merged = merger->merge(per_tile, tiles, image.size());
    const double merge_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

    std::size_t recovered = 0;  // known boxes matched by a merged box of their label at IoU >= 0.95
    for (std::size_t i = 0; i < truth.boxes.size(); ++i)
      for (const Detection& d : merged)
        if (d.label == label_ids[i] && iou(d.box, truth.boxes[i]) >= 0.95f) {
          ++recovered;
          break;
        }
    report["merge"] = cmd.merge;
    report["known_boxes"] = truth.boxes.size();
    report["tile_detections"] = tile_detections;
    report["merged_detections"] = merged.size();
    report["recovered_at_iou_0.95"] = recovered;
    report["detections"] = json::array();
    for (const Detection& d : merged) {
      report["detections"].push_back({{"box", {d.box.x1, d.box.y1, d.box.x2, d.box.y2}},
                                      {"label", names[static_cast<std::size_t>(d.label)]},
                                      {"score", d.score}});
      const cv::Scalar colour = names[static_cast<std::size_t>(d.label)] == "WBC" ? cv::Scalar(255, 0, 255) : cv::Scalar(0, 200, 0);
      cv::rectangle(overlay, cv::Point2f(d.box.x1, d.box.y1), cv::Point2f(d.box.x2, d.box.y2), colour, 2);
    }
    fmt::print("{} known boxes -> {} detections in tiles -> {} after merging ({}, {:.2f} ms); {} of {} recovered (IoU >= 0.95)\n",
               truth.boxes.size(), tile_detections, merged.size(), cmd.merge, merge_ms, recovered, truth.boxes.size());
  }

  const fs::path out_dir(cmd.out);
  fs::create_directories(out_dir);
  const std::string stem = fs::path(cmd.image).stem().string();
  AtomicFiles files;  // the picture and its numbers together
  files.add((out_dir / (stem + ".tiles.png")).string(), [&](const std::string& partial) { return cv::imwrite(partial, overlay); });
  files.add_text((out_dir / (stem + ".tiles.json")).string(), report.dump(1) + "\n");
  files.commit();
  fmt::print("wrote {0}/{1}.tiles.png and {0}/{1}.tiles.json\n", out_dir.string(), stem);
  return 0;
}

}  // namespace


Runner add_tile_command(CLI::App& app) {
  auto tile = std::make_shared<TileCommand>();
  CLI::App* cmd = app.add_subcommand("tile", "Cut an image into overlapping tiles and merge detections across seams");
  cmd->add_option("image", tile->image, "Image file")->required();
  cmd->add_option("--boxes", tile->boxes,
                  "JSON of known boxes {\"objects\": [{\"label\", \"box\": [x1, y1, x2, y2]}]}: simulate a perfect detector per tile");
  cmd->add_option("--tile", tile->tile, "Tile size W or WxH in pixels")->capture_default_str();
  cmd->add_option("--overlap", tile->overlap, "Overlap between tiles, a fraction of the tile size in [0, 1)")->capture_default_str();
  cmd->add_option("--merge", tile->merge,
                  "Seam merger: seam (tile-aware: IoU of the parts in the tiles' shared region), or pooled: nmm (IoS non-max merging, as SAHI), nms (IoS), wbf, soft-nms")
      ->check(CLI::IsMember({"seam", "nmm", "nms", "wbf", "soft-nms"}))
      ->capture_default_str();
  cmd->add_option("--out", tile->out, "Output directory")->capture_default_str();
  return [cmd, tile] { return cmd->parsed() ? run_tile(*tile) : -1; };
}

}  // namespace bloodcv::cli
