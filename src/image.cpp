#include "bloodcv/image.hpp"

#include <filesystem>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "check.hpp"

namespace bloodcv {

using detail::fail_argument;

namespace {

const char* depth_name(int depth) {
  switch (depth) {
    case CV_8U: return "uint8";
    case CV_8S: return "int8";
    case CV_16U: return "uint16";
    case CV_16S: return "int16";
    case CV_32S: return "int32";
    case CV_32F: return "float32";
    case CV_64F: return "float64";
    default: return "unknown";
  }
}

}  // namespace

cv::Mat to_bgr8(const cv::Mat& image, std::string_view what) {
  if (image.empty()) fail_argument("{} is empty ({}x{})", what, image.cols, image.rows);
  if (image.dims != 2) fail_argument("{} must be 2-D, got {} dimensions", what, image.dims);
  const int channels = image.channels();
  if (channels == 2 || channels > 4) fail_argument("{} has {} channels; 1 (gray), 3 (BGR) or 4 (BGRA) are supported", what, channels);

  cv::Mat eight;
  switch (image.depth()) {
    case CV_8U: eight = image; break;
    case CV_16U: image.convertTo(eight, CV_8U, 1.0 / 257.0); break;
    case CV_32F: image.convertTo(eight, CV_8U, 255.0); break;  // saturates outside [0, 1]
    default:
      fail_argument("{} has pixel type {}; uint8, uint16 and float32 (0 to 1) are supported", what, depth_name(image.depth()));
  }
  if (channels == 3) return eight;
  cv::Mat bgr;
  cv::cvtColor(eight, bgr, channels == 1 ? cv::COLOR_GRAY2BGR : cv::COLOR_BGRA2BGR);
  return bgr;
}

cv::Mat read_image(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) throw std::runtime_error("cannot read image '" + path + "': no such file");
  const cv::Mat raw = cv::imread(path, cv::IMREAD_UNCHANGED);
  if (raw.empty()) throw std::runtime_error("cannot read image '" + path + "': not an image OpenCV can decode");
  try {
    return to_bgr8(raw, path);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("cannot use image: ") + e.what());
  }
}

}  // namespace bloodcv
