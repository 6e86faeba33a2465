// Predictions bloodcv reads back (eval::read_predictions): an analysis report (schema bloodcv.analysis), or
// COCO results with the coco_images.json that bloodcv analyze writes beside them, read as a file and as an
// output directory. The input is the predictions file; when it holds a NUL byte, what follows the first one is coco_images.json (none otherwise).
#include <algorithm>
#include <cstdint>
#include <exception>
#include <filesystem>

#include "bloodcv/eval.hpp"
#include "scratch_files.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bloodcv::fuzz::ScratchDir scratch;
  const std::uint8_t* end = data + size;
  const std::uint8_t* nul = std::find(data, end, std::uint8_t{0});
  const std::string path = scratch.write("predictions.json", data, static_cast<std::size_t>(nul - data));
  std::error_code ec;
  std::filesystem::remove(scratch.path() / "coco_images.json", ec);
  if (nul != end) scratch.write("coco_images.json", nul + 1, static_cast<std::size_t>(end - nul - 1));
  // The file, and the directory that holds it as bloodcv analyze's output directory does.
  for (const std::string& input : {path, scratch.path().string()}) {
    try {
      bloodcv::eval::read_predictions(input);
    } catch (const std::exception&) {
    }
  }
  return 0;
}
