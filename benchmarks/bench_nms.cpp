// Times the NMS family in C++ on synthetic detections laid out as on a whole slide.
//   bench_nms [--boxes N] [--layout spread|clustered] [--repeats R]
// Prints one JSON object per strategy: {"strategy", "layout", "boxes", "kept", "median_ms", "min_ms"}.
// Layouts: "spread" scatters cell-sized boxes (20-60 px) over a square image whose side grows with
// sqrt(N), at the density of a smear; "clustered" puts 10 jittered candidates on each of N/10 cells,
// as a detector's raw output before NMS.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bloodcv/nms.hpp"

using namespace bloodcv;

namespace {

struct Data {
  std::vector<Box> boxes;
  std::vector<float> scores;
  std::vector<std::int64_t> labels;
};

Data make_data(std::size_t n, const std::string& layout, unsigned seed = 42) {
  std::mt19937 rng(seed);
  const float side = 60.f * std::sqrt(static_cast<float>(n));
  std::uniform_real_distribution<float> pos(0, side), size(20, 60), unit(0, 1), jitter(-6, 6);
  std::uniform_int_distribution<int> label(0, 2);
  Data d;
  d.boxes.reserve(n);
  while (d.boxes.size() < n) {
    const float x = pos(rng), y = pos(rng), w = size(rng), h = size(rng);
    const int copies = layout == "clustered" ? 10 : 1;
    const int cls = label(rng);
    for (int c = 0; c < copies && d.boxes.size() < n; ++c) {
      const float dx = c ? jitter(rng) : 0.f, dy = c ? jitter(rng) : 0.f;
      d.boxes.push_back({x + dx, y + dy, x + dx + w, y + dy + h});
      d.scores.push_back(unit(rng));
      d.labels.push_back(cls);
    }
  }
  return d;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t n = 100000;
  std::string layout = "spread";
  int repeats = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--boxes")) n = std::stoul(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--layout")) layout = argv[i + 1];
    else if (!std::strcmp(argv[i], "--repeats")) repeats = std::stoi(argv[i + 1]);
    else {
      fmt::print(stderr, "usage: bench_nms [--boxes N] [--layout spread|clustered] [--repeats R]\n");
      return 2;
    }
  }
  const Data d = make_data(n, layout);
  const ScoredBoxes input{d.boxes, d.scores, d.labels};

  HardNmsOptions class_agnostic;
  class_agnostic.class_aware = false;
  const std::vector<std::pair<std::string, std::function<std::size_t()>>> cases{
      {"nms", [&] { return nms(d.boxes, d.scores, 0.5).size(); }},
      {"batched_nms", [&] { return batched_nms(d.boxes, d.scores, d.labels, 0.5).size(); }},
      {"soft_nms_gaussian", [&] { return SoftNms().suppress(input).keep.size(); }},
      {"weighted_box_fusion", [&] { return WeightedBoxFusion().suppress(input).keep.size(); }},
      {"non_max_merge_greedy", [&] { return NonMaxMerge().suppress(input).keep.size(); }},
      {"non_max_merge_full", [&] {
         NonMaxMergeOptions o;
         o.greedy = false;
         return NonMaxMerge(o).suppress(input).keep.size();
       }},
  };
  for (const auto& [name, run] : cases) {
    std::vector<double> ms;
    std::size_t kept = 0;
    for (int r = 0; r < repeats; ++r) {
      const auto start = std::chrono::steady_clock::now();
      kept = run();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    fmt::print("{{\"strategy\": \"{}\", \"layout\": \"{}\", \"boxes\": {}, \"kept\": {}, \"median_ms\": {:.3f}, \"min_ms\": {:.3f}}}\n", name,
               layout, n, kept, median(ms), *std::min_element(ms.begin(), ms.end()));
  }
  return 0;
}
