// Pascal VOC XML annotations (eval::read_voc): `bloodcv eval --truth` and the training readers take them.
#include <cstdint>
#include <exception>

#include "bloodcv/eval.hpp"
#include "scratch_files.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bloodcv::fuzz::ScratchDir scratch;
  const std::string path = scratch.write("annotation.xml", data, size);
  // Labels in order of appearance, and a fixed label set (names outside it are refused).
  try {
    bloodcv::eval::read_voc(path);
  } catch (const std::exception&) {
  }
  try {
    bloodcv::eval::read_voc(path, {"WBC", "RBC", "Platelets"});
  } catch (const std::exception&) {
  }
  return 0;
}
