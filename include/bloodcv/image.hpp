// Images as the pipeline takes them: 8-bit, 3-channel BGR cv::Mat (OpenCV's order, cv2.imread's).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <opencv2/core.hpp>

namespace bloodcv {

// Converts what microscopes and files give into 8-bit BGR: grayscale is replicated, BGRA drops alpha,
// 16-bit is scaled by 1/257, float32 images must hold values in [0, 1]. Returns `image` itself (no copy) when it
// already is 8-bit BGR. Throws std::invalid_argument naming `what`, for empty images, 2 or more than 4
// channels, other depths (signed, 32-bit integer, double), and float32 values outside [0, 1] or not finite.
cv::Mat to_bgr8(const cv::Mat& image, std::string_view what = "image");

// Reads any image file OpenCV decodes, at its own bit depth, then to_bgr8. Throws std::runtime_error
// naming the path when the file is missing, empty, damaged (a JPEG cut short) or does not decode.
cv::Mat read_image(const std::string& path);

// The extensions (lower case, with the dot) of the images OpenCV decodes and the whole slides OpenSlide
// reads: what a directory is searched for.
const std::vector<std::string>& image_extensions();
bool is_image_file(const std::string& path);  // by its extension, in any case

// The image files of a directory by stem (the name without extension), as ground truth and predictions name
// their images; other files (annotations beside their images) are left out. Throws std::runtime_error naming
// the directory when it cannot be listed, or two images share a stem.
std::map<std::string, std::string> images_by_stem(const std::string& dir);

}  // namespace bloodcv
