// Pipeline configs (load_pipeline_config: `bloodcv analyze --config`, Python's Pipeline.from_config), and
// then what make_pipeline builds from a config besides the models (which this build cannot load): the
// merger, the tiler and its plan of a field of view, and the stain normaliser of a given target.
#include <cstdint>
#include <exception>

#include "bloodcv/merge.hpp"
#include "bloodcv/pipeline.hpp"
#include "bloodcv/stain.hpp"
#include "bloodcv/tiler.hpp"
#include "scratch_files.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bloodcv::fuzz::ScratchDir scratch;
  const std::string path = scratch.write("pipeline.json", data, size);
  bloodcv::PipelineConfig config;
  try {
    config = bloodcv::load_pipeline_config(path);
  } catch (const std::exception&) {
    return 0;
  }
  try {
    bloodcv::make_merger(config.merge_strategy, config.merge);
  } catch (const std::exception&) {
  }
  try {
    bloodcv::GridTilerOptions tiling;
    tiling.tile_size = config.tile.value_or(cv::Size(640, 640));
    tiling.overlap_ratio = config.overlap;
    tiling.whole_image_pass = config.whole_image;
    bloodcv::GridTiler(tiling).plan({1600, 1200});
  } catch (const std::exception&) {
  }
  if (config.stain_normalize && config.stain_target) {
    try {
      bloodcv::make_stain_normalizer(*config.stain_normalize, *config.stain_target);
    } catch (const std::exception&) {
    }
  }
  return 0;
}
