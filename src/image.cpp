#include "bloodcv/image.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
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

// Whether a JPEG stream is complete: the marker segments are walked from SOI to EOI, skipping the
// entropy-coded data after each SOS (where 0xFF is followed by 0x00 stuffing or RSTn). libjpeg decodes a
// truncated file with a warning and grey rows, and OpenCV returns that image as if whole. Returns the
// reason when the stream is cut short or malformed.
std::optional<std::string> jpeg_defect(const std::vector<unsigned char>& data) {
  const std::size_t n = data.size();
  if (n < 4 || data[0] != 0xFF || data[1] != 0xD8) return "no JPEG start-of-image marker";
  std::size_t i = 2;
  while (i < n) {
    if (data[i] != 0xFF) return fmt::format("byte {} is not a marker", i);
    while (i < n && data[i] == 0xFF) ++i;  // fill bytes
    if (i >= n) break;
    const unsigned char marker = data[i++];
    if (marker == 0xD9) return std::nullopt;  // EOI
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;  // TEM, RSTn: no length
    if (i + 2 > n) break;
    const std::size_t length = (std::size_t{data[i]} << 8) | data[i + 1];
    if (length < 2) return fmt::format("marker 0x{:02X} has a length of {}", marker, length);
    i += length;
    if (marker != 0xDA) continue;
    while (i + 1 < n && !(data[i] == 0xFF && data[i + 1] != 0x00 && !(data[i + 1] >= 0xD0 && data[i + 1] <= 0xD7))) ++i;
    if (i + 1 >= n) break;
  }
  return "truncated: the file ends before the JPEG end-of-image marker";
}

bool is_jpeg(const std::vector<unsigned char>& data) { return data.size() >= 2 && data[0] == 0xFF && data[1] == 0xD8; }

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
    case CV_32F: {
      // Values outside [0, 1] are almost always 0-255 floats: saturating them would give a white image.
      if (!cv::checkRange(image)) fail_argument("{} is float32 with NaN or infinite values", what);
      double low = 0, high = 0;
      cv::minMaxIdx(image.reshape(1), &low, &high);
      if (!(low >= 0.0 && high <= 1.0))
        fail_argument("{} is float32 with values in [{}, {}]; float images must hold finite values in [0, 1] (divide 0-255 data by 255)",
                      what, low, high);
      image.convertTo(eight, CV_8U, 255.0);
      break;
    }
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
  std::ifstream file(path, std::ios::binary);
  const std::vector<unsigned char> data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (!file.eof() && file.fail()) throw std::runtime_error("cannot read image '" + path + "': the file cannot be read");
  if (data.empty()) throw std::runtime_error("cannot read image '" + path + "': the file is empty");
  if (is_jpeg(data))
    if (const auto defect = jpeg_defect(data)) throw std::runtime_error("cannot read image '" + path + "': damaged JPEG, " + *defect);
  cv::Mat raw;
  try {
    raw = cv::imdecode(data, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    // OpenCV refuses a header declaring more than CV_IO_MAX_IMAGE_PIXELS (2^30) before allocating them.
    if (e.err.find("CV_IO_MAX_IMAGE_PIXELS") != std::string::npos)
      throw std::runtime_error("cannot read image '" + path + "': its header declares more than 2^30 pixels, beyond what is "
                               "decoded whole; store a whole slide as a pyramidal TIFF, which is read region by region");
    throw std::runtime_error("cannot read image '" + path + "': damaged (" + e.err + ")");
  }
  if (raw.empty()) throw std::runtime_error("cannot read image '" + path + "': not an image OpenCV can decode, or damaged");
  try {
    return to_bgr8(raw, path);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("cannot use image: ") + e.what());
  }
}

const std::vector<std::string>& image_extensions() {
  static const std::vector<std::string> extensions{".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".dib", ".webp", ".jp2",
                                                   ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".exr", ".hdr", ".pic",
                                                   ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide"};
  return extensions;
}

bool is_image_file(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const auto& known = image_extensions();
  return std::find(known.begin(), known.end(), ext) != known.end();
}

std::map<std::string, std::string> images_by_stem(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::directory_iterator entries(dir, ec);
  if (ec) throw std::runtime_error(fmt::format("cannot list images in '{}': {}", dir, ec.message()));
  std::map<std::string, std::string> images;
  for (const auto& e : entries) {
    if (!e.is_regular_file(ec) || !is_image_file(e.path().string())) continue;
    const auto [it, added] = images.emplace(e.path().stem().string(), e.path().string());
    if (!added)
      throw std::runtime_error(fmt::format("two images named '{}' in '{}': '{}' and '{}'", it->first, dir, fs::path(it->second).filename().string(),
                                           e.path().filename().string()));
  }
  return images;
}

}  // namespace bloodcv
