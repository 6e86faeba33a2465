// Runs the whole pipeline from an application linked against the installed bloodcv package:
//   analyze DETECTOR.pt CLASSIFIER.pt IMAGE [OUT_DIR]
// prints the counts and the differential, and writes the four reports when OUT_DIR is given.
#include <cstdio>

#include <bloodcv/bloodcv.hpp>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s DETECTOR.pt CLASSIFIER.pt IMAGE [OUT_DIR]\n", argv[0]);
    return 2;
  }
  try {
    auto detector = std::make_shared<bloodcv::TorchScriptDetector>(argv[1]);
    auto classifier = std::make_shared<bloodcv::TorchScriptClassifier>(argv[2]);
    bloodcv::GridTilerOptions tiling;
    tiling.tile_size = detector->tile_size();
    const bloodcv::Pipeline pipeline(std::make_shared<bloodcv::GridTiler>(tiling), detector, classifier);

    const cv::Mat image = bloodcv::read_image(argv[3]);
    const bloodcv::AnalysisResult result = pipeline.analyze(image);
    std::printf("%zu cells in %zu tiles, %.0f ms\n", result.cells.size(), result.tiles, result.timings.total_ms);
    for (const auto& [label, n] : result.counts) std::printf("  %-12s %d\n", label.c_str(), n);
    for (const auto& [type, percent] : result.differential) std::printf("  %-12s %5.1f %%\n", type.c_str(), percent);
    if (argc > 4) bloodcv::write_reports(image, result, argv[4], "analysis", 1, argv[3]);
    return result.cells.empty() ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "analyze: %s\n", e.what());
    return 1;
  }
}
