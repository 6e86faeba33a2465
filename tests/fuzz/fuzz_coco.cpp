// COCO instances JSON (eval::read_coco): `bloodcv eval --truth` takes it.
#include <cstdint>
#include <exception>

#include "bloodcv/eval.hpp"
#include "scratch_files.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bloodcv::fuzz::ScratchDir scratch;
  const std::string path = scratch.write("instances.json", data, size);
  try {
    bloodcv::eval::read_coco(path);
  } catch (const std::exception&) {
  }
  return 0;
}
