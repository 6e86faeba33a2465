// Times bloodcv::Pipeline from C++ on one image, for benchmarks/run.py's end-to-end table.
//   bench_pipeline --detector M --image PATH [--tile WxH] [--overlap R] [--batch B] [--merge seam|nms]
//                  [--repeats N] [--dump FILE]
// Prints one JSON object: images/s, tiles/s, ms per image (median), cells, peak resident memory (MiB).
// --merge nms pools the tiles' detections into class-aware hard NMS at IoU 0.5 (what a plain
// torchvision loop does), so both sides can be checked to give the same cells; --dump writes them.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "bloodcv/bloodcv.hpp"

using namespace bloodcv;

int main(int argc, char** argv) {
  std::string detector, image_path, merge = "seam", dump;
  cv::Size tile{0, 0};
  double overlap = 0.15;
  int batch = 8, repeats = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    if (key == "--detector") detector = value;
    else if (key == "--image") image_path = value;
    else if (key == "--tile") tile = value.find('x') == std::string::npos ? cv::Size(std::stoi(value), std::stoi(value))
                                                                          : cv::Size(std::stoi(value), std::stoi(value.substr(value.find('x') + 1)));
    else if (key == "--overlap") overlap = std::stod(value);
    else if (key == "--batch") batch = std::stoi(value);
    else if (key == "--merge") merge = value;
    else if (key == "--repeats") repeats = std::stoi(value);
    else if (key == "--dump") dump = value;
    else {
      fmt::print(stderr, "unknown option {}\n", key);
      return 2;
    }
  }
  if (detector.empty() || image_path.empty()) {
    fmt::print(stderr, "usage: bench_pipeline --detector M --image PATH [options]\n");
    return 2;
  }
  TorchScriptDetectorOptions options;
  options.runtime.batch_size = batch;
  auto model = std::make_shared<TorchScriptDetector>(detector, options);
  GridTilerOptions tiling;
  tiling.tile_size = tile.width > 0 ? tile : model->tile_size();
  tiling.overlap_ratio = overlap;
  PipelineOptions pipeline_options;  // "nms": plain IoU NMS over pooled tiles, as the Python loop it is compared with
  if (merge == "nms") pipeline_options.merger = std::make_shared<PooledMerger>(std::make_shared<HardNms>());
  const Pipeline pipeline(std::make_shared<GridTiler>(tiling), model, nullptr, pipeline_options);

  const cv::Mat image = read_image(image_path);
  AnalysisResult result = pipeline.analyze(image);  // warm-up
  std::vector<double> ms;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    result = pipeline.analyze(image);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  // Peak resident memory of this process (VmHWM; ru_maxrss would include the parent's before exec).
  double peak_mib = 0;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) peak_mib = std::stod(line.substr(6)) / 1024.0;
  fmt::print("{{\"ms_per_image\": {:.2f}, \"images_per_s\": {:.3f}, \"tiles_per_s\": {:.2f}, \"tiles\": {}, \"cells\": {}, \"peak_mib\": {:.1f}}}\n",
             median, 1000.0 / median, result.tiles * 1000.0 / median, result.tiles, result.cells.size(), peak_mib);
  if (!dump.empty()) {
    std::ofstream out(dump);
    for (const Cell& c : result.cells)
      out << fmt::format("{} {} {} {} {} {}\n", c.detection.box.x1, c.detection.box.y1, c.detection.box.x2, c.detection.box.y2,
                         c.detection.score, c.detection.label);
  }
  return 0;
}
