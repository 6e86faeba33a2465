// YOLO txt labels (eval::read_yolo): the input is one label file, beside classes.txt, for a 64x48 image.
#include <cstdint>
#include <exception>

#include <opencv2/imgcodecs.hpp>

#include "bloodcv/eval.hpp"
#include "scratch_files.hpp"

namespace {

const bloodcv::fuzz::ScratchDir& dataset() {
  static const bloodcv::fuzz::ScratchDir scratch;
  static const bool made = [] {
    scratch.write("labels/classes.txt", "WBC\nRBC\nPlatelets\n");
    std::filesystem::create_directories(scratch.path() / "images");
    return cv::imwrite((scratch.path() / "images" / "sample.png").string(), cv::Mat(48, 64, CV_8UC3, cv::Scalar(200, 150, 220)));
  }();
  if (!made) std::abort();  // the reader would refuse every input for want of the image
  return scratch;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const bloodcv::fuzz::ScratchDir& scratch = dataset();
  scratch.write("labels/sample.txt", data, size);
  try {
    bloodcv::eval::read_yolo((scratch.path() / "labels").string(), (scratch.path() / "images").string());
  } catch (const std::exception&) {
  }
  return 0;
}
