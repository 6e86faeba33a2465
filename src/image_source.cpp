#include "bloodcv/image_source.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#include <fmt/format.h>
#include <opencv2/imgproc.hpp>
#include <openslide/openslide.h>

#include "bloodcv/image.hpp"

namespace bloodcv {

cv::Size ImageSource::size() const { return levels().at(0).size; }

int ImageSource::level_for_downsample(double downsample) const {
  const std::vector<SourceLevel> all = levels();
  int best = 0;
  for (std::size_t i = 0; i < all.size(); ++i)
    if (all[i].downsample <= downsample * (1 + 1e-6) && all[i].downsample > all[static_cast<std::size_t>(best)].downsample)
      best = static_cast<int>(i);
  return best;
}

void check_region(const ImageSource& source, const cv::Rect& region, int level) {
  const std::vector<SourceLevel> all = source.levels();
  if (level < 0 || static_cast<std::size_t>(level) >= all.size())
    throw std::out_of_range(fmt::format("{}: level {} does not exist (levels 0 to {})", source.name(), level, all.size() - 1));
  const cv::Size s = all[static_cast<std::size_t>(level)].size;
  if (region.width <= 0 || region.height <= 0 || region.x < 0 || region.y < 0 || region.x + region.width > s.width ||
      region.y + region.height > s.height)
    throw std::out_of_range(fmt::format("{}: region x={} y={} {}x{} is not inside level {} ({}x{})", source.name(), region.x, region.y,
                                        region.width, region.height, level, s.width, s.height));
}

// --- in memory -----------------------------------------------------------------------------------------------
MatImageSource::MatImageSource(const cv::Mat& image, std::string name, std::optional<double> microns_per_pixel)
    : image_(to_bgr8(image, name)), name_(std::move(name)), mpp_(microns_per_pixel) {
  if (mpp_ && !(*mpp_ > 0 && std::isfinite(*mpp_)))
    throw std::invalid_argument(fmt::format("{}: microns_per_pixel must be positive, got {}", name_, *mpp_));
}

std::vector<SourceLevel> MatImageSource::levels() const { return {SourceLevel{image_.size(), 1.0}}; }

cv::Mat MatImageSource::read(const cv::Rect& region, int level) const {
  check_region(*this, region, level);
  return image_(region).clone();
}

// --- OpenSlide -----------------------------------------------------------------------------------------------
struct OpenSlideSource::Impl {
  std::string path;
  // After a failed read an OpenSlide handle stays in error: it is reopened, under the lock that reads hold.
  std::mutex lock;
  openslide_t* slide = nullptr;  // owned: closed with the Impl, also when the constructor fails half-way
  std::vector<SourceLevel> levels;
  std::optional<double> mpp;
  ~Impl();
};

namespace {

[[noreturn]] void fail_open(const std::string& path, const std::string& why) {
  throw std::runtime_error(fmt::format("cannot open slide '{}': {}", path, why));
}

}  // namespace

OpenSlideSource::OpenSlideSource(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->slide = openslide_open(path.c_str());
  if (!impl_->slide) fail_open(path, "not a slide OpenSlide can read (missing, or not a tiled TIFF, SVS, NDPI, MRXS, ...)");
  if (const char* error = openslide_get_error(impl_->slide)) fail_open(path, error);
  const int count = openslide_get_level_count(impl_->slide);
  for (int level = 0; level < count; ++level) {
    int64_t w = 0, h = 0;
    openslide_get_level_dimensions(impl_->slide, level, &w, &h);
    if (w <= 0 || h <= 0 || w > (1LL << 31) - 1 || h > (1LL << 31) - 1) fail_open(path, fmt::format("level {} has size {}x{}", level, w, h));
    impl_->levels.push_back({cv::Size(static_cast<int>(w), static_cast<int>(h)), openslide_get_level_downsample(impl_->slide, level)});
  }
  if (impl_->levels.empty()) fail_open(path, "it has no levels");
  const auto number = [&](const char* property) -> std::optional<double> {
    const char* text = openslide_get_property_value(impl_->slide, property);
    if (!text) return std::nullopt;
    char* end = nullptr;
    const double value = std::strtod(text, &end);
    return end != text && value > 0 && std::isfinite(value) ? std::optional<double>(value) : std::nullopt;
  };
  impl_->mpp = number(OPENSLIDE_PROPERTY_NAME_MPP_X);
  if (!impl_->mpp) {  // a generic TIFF states its resolution in pixels per centimetre or inch
    const char* unit = openslide_get_property_value(impl_->slide, "tiff.ResolutionUnit");
    const auto per_unit = number("tiff.XResolution");
    if (unit && per_unit && std::string(unit) == "centimeter") impl_->mpp = 1e4 / *per_unit;
    if (unit && per_unit && std::string(unit) == "inch") impl_->mpp = 25400.0 / *per_unit;
    // Outside 0.01 to 100 microns per pixel it is no microscope's, but a writer's default (72 dpi is 353).
    if (impl_->mpp && !(*impl_->mpp >= 0.01 && *impl_->mpp <= 100)) impl_->mpp.reset();
  }
}

OpenSlideSource::Impl::~Impl() {
  if (slide) openslide_close(slide);
}

OpenSlideSource::~OpenSlideSource() = default;

std::vector<SourceLevel> OpenSlideSource::levels() const { return impl_->levels; }
std::optional<double> OpenSlideSource::microns_per_pixel() const { return impl_->mpp; }
std::string OpenSlideSource::name() const { return impl_->path; }

std::string OpenSlideSource::vendor() const {
  const char* v = openslide_get_property_value(impl_->slide, OPENSLIDE_PROPERTY_NAME_VENDOR);
  return v ? v : "generic-tiff";
}

cv::Mat OpenSlideSource::read(const cv::Rect& region, int level) const {
  check_region(*this, region, level);
  const double down = impl_->levels[static_cast<std::size_t>(level)].downsample;
  cv::Mat argb(region.height, region.width, CV_8UC4);  // OpenSlide writes premultiplied ARGB as native uint32
  {
    std::lock_guard<std::mutex> guard(impl_->lock);
    if (!impl_->slide) throw ReadError(fmt::format("{}: the slide could not be reopened after an earlier read error", impl_->path));
    // Its region starts in level-0 coordinates, its size is in the level's pixels.
    openslide_read_region(impl_->slide, reinterpret_cast<uint32_t*>(argb.data), static_cast<int64_t>(std::llround(region.x * down)),
                          static_cast<int64_t>(std::llround(region.y * down)), level, region.width, region.height);
    if (const char* error = openslide_get_error(impl_->slide)) {
      const std::string why = error;
      openslide_close(impl_->slide);
      impl_->slide = openslide_open(impl_->path.c_str());
      throw ReadError(fmt::format("{}: cannot read level {} region x={} y={} {}x{}: {}", impl_->path, level, region.x, region.y,
                                  region.width, region.height, why));
    }
  }
  // Little-endian uint32 ARGB is B, G, R, A in memory. Premultiplied: composite over white.
  cv::Mat bgr(region.size(), CV_8UC3);
  for (int y = 0; y < region.height; ++y) {
    const cv::Vec4b* in = argb.ptr<cv::Vec4b>(y);
    cv::Vec3b* out = bgr.ptr<cv::Vec3b>(y);
    for (int x = 0; x < region.width; ++x) {
      const int white = 255 - in[x][3];
      out[x] = cv::Vec3b(cv::saturate_cast<uchar>(in[x][0] + white), cv::saturate_cast<uchar>(in[x][1] + white),
                         cv::saturate_cast<uchar>(in[x][2] + white));
    }
  }
  return bgr;
}

bool is_slide(const std::string& path) {
  openslide_t* slide = openslide_open(path.c_str());
  if (!slide) return false;
  const bool ok = openslide_get_error(slide) == nullptr;
  openslide_close(slide);
  return ok;
}

std::unique_ptr<ImageSource> open_image_source(const std::string& path) {
  if (is_slide(path)) return std::make_unique<OpenSlideSource>(path);
  return std::make_unique<MatImageSource>(read_image(path), path);
}

cv::Mat read_overview(const ImageSource& source, int max_side, double at_least, double* downsample) {
  if (max_side < 1) throw std::invalid_argument(fmt::format("{}: an overview needs max_side >= 1, got {}", source.name(), max_side));
  const cv::Size s0 = source.size();
  const double down = std::max({at_least, 1.0, static_cast<double>(std::max(s0.width, s0.height)) / max_side});
  const int level = source.level_for_downsample(down);
  const SourceLevel l = source.levels().at(static_cast<std::size_t>(level));
  const cv::Size out_size(std::max(1, static_cast<int>(std::lround(s0.width / down))), std::max(1, static_cast<int>(std::lround(s0.height / down))));
  cv::Mat out(out_size, CV_8UC3, cv::Scalar(255, 255, 255));
  const double fy = static_cast<double>(out_size.height) / l.size.height;
  // Strips of about 4 M level pixels: a slide without a coarse level is still never read whole.
  const int strip = std::max(1, static_cast<int>((4LL << 20) / std::max(1, l.size.width)));
  for (int y = 0; y < l.size.height; y += strip) {
    const int h = std::min(strip, l.size.height - y);
    const int o0 = static_cast<int>(std::floor(y * fy));
    const int o1 = y + h == l.size.height ? out_size.height : static_cast<int>(std::floor((y + h) * fy));
    if (o1 <= o0) continue;
    cv::Mat rows = out.rowRange(o0, o1);
    cv::Mat strip_pixels;
    try {
      strip_pixels = source.read(cv::Rect(0, y, l.size.width, h), level);
    } catch (const ReadError&) {
      // Block by block; a block that cannot be read is black: dark, so the mask calls it tissue and the
      // tiles over it run, and report the error, instead of being skipped as background in silence.
      strip_pixels = cv::Mat(h, l.size.width, CV_8UC3, cv::Scalar(0, 0, 0));
      constexpr int kBlock = 256;
      for (int x = 0; x < l.size.width; x += kBlock) {
        const cv::Rect block(x, y, std::min(kBlock, l.size.width - x), h);
        try {
          source.read(block, level).copyTo(strip_pixels(cv::Rect(x, 0, block.width, h)));
        } catch (const ReadError&) {
        }
      }
    }
    cv::resize(strip_pixels, rows, cv::Size(out_size.width, o1 - o0), 0, 0, cv::INTER_AREA);
  }
  if (downsample) *downsample = down;
  return out;
}

// --- background ---------------------------------------------------------------------------------------------
cv::Mat tissue_mask(const cv::Mat& bgr, const TissueMaskOptions& options) {
  const cv::Mat image = to_bgr8(bgr, "mask image");
  cv::Mat hsv, grey, coloured, dark, mask;
  cv::cvtColor(image, hsv, cv::COLOR_BGR2HSV);
  cv::extractChannel(hsv, coloured, 1);
  cv::threshold(coloured, coloured, options.min_saturation, 255, cv::THRESH_BINARY);
  cv::cvtColor(image, grey, cv::COLOR_BGR2GRAY);
  cv::threshold(grey, dark, options.max_grey, 255, cv::THRESH_BINARY_INV);
  cv::bitwise_or(coloured, dark, mask);
  if (options.close_radius > 0) {
    const int k = 2 * options.close_radius + 1;
    cv::morphologyEx(mask, mask, cv::MORPH_CLOSE, cv::getStructuringElement(cv::MORPH_ELLIPSE, {k, k}));
  }
  return mask;
}

}  // namespace bloodcv
