// Image files (read_image: every image bloodcv analyzes, eval reads and serve stores): OpenCV's decoders
// behind bloodcv's checks (empty or cut-short files, the JPEG marker walk) and the conversion to 8-bit BGR.
#include <cstdint>
#include <exception>

#include "bloodcv/image.hpp"
#include "scratch_files.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bloodcv::fuzz::ScratchDir scratch;
  const std::string path = scratch.write("image", data, size);
  try {
    bloodcv::read_image(path);
  } catch (const std::exception&) {
  }
  return 0;
}
