// Reading and converting images: what files and arrays are accepted, and the errors for the rest.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <limits>

#include <unistd.h>

#include <opencv2/imgcodecs.hpp>

#include "bloodcv/image.hpp"

using namespace bloodcv;
using Catch::Matchers::Contains;

namespace {

std::filesystem::path write_file(const std::string& name, const std::vector<unsigned char>& bytes) {
  const auto path = std::filesystem::temp_directory_path() / ("bloodcv_test_image_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

std::vector<unsigned char> encoded(const std::string& extension, const std::vector<int>& params = {}) {
  cv::Mat image(120, 160, CV_8UC3);
  cv::randu(image, 0, 255);
  std::vector<unsigned char> bytes;
  REQUIRE(cv::imencode(extension, image, bytes, params));
  return bytes;
}

}  // namespace

TEST_CASE("whole JPEGs are read, truncated ones are refused as damaged", "[image][errors]") {
  for (const bool progressive : {false, true}) {
    const auto jpeg = encoded(".jpg", {cv::IMWRITE_JPEG_PROGRESSIVE, progressive ? 1 : 0});
    const auto whole = write_file("whole.jpg", jpeg);
    CHECK(read_image(whole.string()).size() == cv::Size(160, 120));
    for (const std::size_t keep : {jpeg.size() - 2, jpeg.size() / 2, std::size_t{300}}) {
      const auto cut = write_file("cut.jpg", std::vector<unsigned char>(jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(keep)));
      CHECK_THROWS_WITH(read_image(cut.string()), Contains(cut.string()) && Contains("damaged JPEG"));
    }
    auto trailing = jpeg;  // bytes after the end-of-image marker, as some cameras write, are fine
    trailing.insert(trailing.end(), {0, 0, 0, 0});
    CHECK(read_image(write_file("trailing.jpg", trailing).string()).size() == cv::Size(160, 120));
  }
}

TEST_CASE("empty, truncated PNG and non-image files are refused with the path", "[image][errors]") {
  const auto empty = write_file("empty.png", {});
  CHECK_THROWS_WITH(read_image(empty.string()), Contains(empty.string()) && Contains("empty"));
  const auto png = encoded(".png");
  const auto cut = write_file("cut.png", std::vector<unsigned char>(png.begin(), png.begin() + static_cast<std::ptrdiff_t>(png.size() / 2)));
  CHECK_THROWS_WITH(read_image(cut.string()), Contains(cut.string()));
  const auto text = write_file("text.jpg", {'h', 'e', 'l', 'l', 'o'});
  CHECK_THROWS_WITH(read_image(text.string()), Contains("not an image OpenCV can decode"));
}

TEST_CASE("a header declaring 60000 x 60000 pixels is refused before decoding, naming the limit", "[image][errors]") {
  // A PNG of 60000 x 60000 8-bit RGB pixels by its IHDR chunk, then 10 bytes of data and IEND (CRCs right).
  const std::vector<unsigned char> png{
      0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0xea,
      0x60, 0x00, 0x00, 0xea, 0x60, 0x08, 0x02, 0x00, 0x00, 0x00, 0x0f, 0xb0, 0xe2, 0x15, 0x00, 0x00, 0x00, 0x0b, 0x49,
      0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x60, 0x80, 0x01, 0x00, 0x00, 0x0a, 0x00, 0x01, 0x7f, 0x80, 0x74, 0x5e, 0x00,
      0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};
  const auto huge = write_file("huge.png", png);
  CHECK_THROWS_WITH(read_image(huge.string()), Contains(huge.string()) && Contains("more than 2^30 pixels"));
}

TEST_CASE("1x1, grey, grey+alpha, BGRA and 16-bit files are read as 8-bit BGR", "[image]") {
  const cv::Mat one(1, 1, CV_8UC3, cv::Scalar(10, 20, 30));
  std::vector<unsigned char> bytes;
  cv::imencode(".png", one, bytes);
  CHECK(read_image(write_file("one.png", bytes).string()).at<cv::Vec3b>(0, 0) == cv::Vec3b(10, 20, 30));
  cv::Mat wide(2, 2, CV_16UC3, cv::Scalar(257 * 10, 257 * 20, 257 * 30));
  cv::imencode(".png", wide, bytes);
  CHECK(read_image(write_file("wide.png", bytes).string()).at<cv::Vec3b>(1, 1) == cv::Vec3b(10, 20, 30));
  cv::imencode(".png", cv::Mat(2, 2, CV_8UC4, cv::Scalar(10, 20, 30, 0)), bytes);
  CHECK(read_image(write_file("bgra.png", bytes).string()).at<cv::Vec3b>(0, 1) == cv::Vec3b(10, 20, 30));
  cv::imencode(".png", cv::Mat(2, 2, CV_8UC1, cv::Scalar(77)), bytes);
  CHECK(read_image(write_file("grey.png", bytes).string()).at<cv::Vec3b>(1, 0) == cv::Vec3b(77, 77, 77));
}

TEST_CASE("float images must hold values in [0, 1]", "[image][errors]") {
  cv::Mat unit(4, 4, CV_32FC3, cv::Scalar(0.0, 0.5, 1.0));
  CHECK(to_bgr8(unit).at<cv::Vec3b>(0, 0) == cv::Vec3b(0, 128, 255));
  CHECK_THROWS_WITH(to_bgr8(unit * 255.0, "smear"), Contains("smear is float32 with values in [0, 255]") && Contains("divide"));
  cv::Mat nan = unit.clone();
  nan.at<cv::Vec3f>(1, 1)[0] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(to_bgr8(nan), Contains("NaN or infinite"));
}
