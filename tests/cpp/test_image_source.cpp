// Image sources and slide analysis: regions read exactly, background tiles skipped by the tissue mask, a tile
// that cannot be read reported while the others run (a reading thread feeds the detector).
#include <catch2/catch.hpp>

#include <atomic>

#include <opencv2/imgproc.hpp>

#include "bloodcv/image_source.hpp"
#include "bloodcv/pipeline.hpp"

using namespace bloodcv;
using Catch::Matchers::Contains;

namespace {

// A 2000x1500 grey-white canvas with one stained disk: tissue only there.
cv::Mat canvas_with_disk(cv::Point centre, int radius) {
  cv::Mat image(1500, 2000, CV_8UC3, cv::Scalar(240, 238, 236));
  cv::circle(image, centre, radius, cv::Scalar(150, 60, 120), cv::FILLED);
  return image;
}

// Counts the tiles it is given and finds one cell in the middle of each.
class CountingDetector final : public Detector {
 public:
  mutable std::atomic<int> images{0};
  std::vector<std::vector<Detection>> detect(const std::vector<cv::Mat>& batch) const override {
    images += static_cast<int>(batch.size());
    std::vector<std::vector<Detection>> out;
    for (const cv::Mat& m : batch) {
      Detection d;
      d.box = {m.cols / 2.f - 10, m.rows / 2.f - 10, m.cols / 2.f + 10, m.rows / 2.f + 10};
      d.score = 0.9f;
      out.push_back({d});
    }
    return out;
  }
  std::vector<std::string> labels() const override { return {"WBC"}; }
  cv::Size input_size() const override { return {320, 320}; }
  cv::Size tile_size() const override { return {400, 400}; }
};

// A source whose pixels around one point cannot be read.
class HoleySource final : public ImageSource {
 public:
  HoleySource(cv::Mat image, cv::Point hole) : inner_(image), hole_(hole) {}
  std::vector<SourceLevel> levels() const override { return inner_.levels(); }
  cv::Mat read(const cv::Rect& region, int level) const override {
    if (region.contains(hole_) && region.area() < 1000 * 1000) throw ReadError("a corrupt tile");
    return inner_.read(region, level);
  }
  std::string name() const override { return "holey"; }

 private:
  MatImageSource inner_;
  cv::Point hole_;
};

Pipeline pipeline_of(std::shared_ptr<CountingDetector> detector) {
  GridTilerOptions o;
  o.tile_size = detector->tile_size();
  return Pipeline(std::make_shared<GridTiler>(o), detector);
}

}  // namespace

TEST_CASE("an image in memory is a one-level source read region by region", "[source]") {
  const cv::Mat image = canvas_with_disk({500, 400}, 60);
  const MatImageSource source(image, "canvas", 0.5);
  REQUIRE(source.levels().size() == 1);
  CHECK(source.size() == cv::Size(2000, 1500));
  CHECK(*source.microns_per_pixel() == 0.5);
  const cv::Mat part = source.read({450, 350, 100, 100}, 0);
  CHECK(cv::norm(part, image(cv::Rect(450, 350, 100, 100)), cv::NORM_INF) == 0);
  CHECK_THROWS_WITH(source.read({1990, 0, 20, 10}, 0), Contains("canvas: region x=1990 y=0 20x10 is not inside level 0 (2000x1500)"));
  CHECK_THROWS_WITH(source.read({0, 0, 10, 10}, 1), Contains("canvas: level 1 does not exist"));
  CHECK_THROWS_AS(MatImageSource(image, "bad", -1.0), std::invalid_argument);
}

TEST_CASE("the tissue mask is where the stain is", "[source]") {
  const cv::Mat mask = tissue_mask(canvas_with_disk({500, 400}, 60));
  CHECK(mask.at<uchar>(400, 500) == 255);
  CHECK(mask.at<uchar>(400, 620) == 0);
  CHECK(mask.at<uchar>(10, 10) == 0);
  const double area = cv::countNonZero(mask);
  CHECK(area == Approx(CV_PI * 60 * 60).epsilon(0.05));
}

TEST_CASE("a slide runs only the tiles that meet tissue, and reports a tile it cannot read", "[source][pipeline]") {
  const cv::Point disk(1000, 700);
  auto detector = std::make_shared<CountingDetector>();
  const Pipeline pipeline = pipeline_of(detector);
  const MatImageSource source(canvas_with_disk(disk, 50), "canvas");
  const SlidePlan plan = pipeline.plan(source);
  // 400-pixel tiles, 60 pixels of overlap: the disk (950..1050, 650..750) meets the tiles around it only
  std::size_t meeting = 0;
  for (std::size_t i = 0; i < plan.tiles.size(); ++i) {
    const cv::Rect grown(plan.tiles[i].region.x - 1, plan.tiles[i].region.y - 1, plan.tiles[i].region.width + 2, plan.tiles[i].region.height + 2);
    const bool meets = (grown & cv::Rect(disk.x - 50, disk.y - 50, 101, 101)).area() > 0;
    CHECK(static_cast<bool>(plan.run[i]) == meets);
    meeting += meets;
  }
  CHECK(plan.info.tiles_skipped == plan.tiles.size() - meeting);
  const AnalysisResult r = pipeline.analyze(source);
  CHECK(detector->images == static_cast<int>(meeting));
  REQUIRE(r.slide);
  CHECK(r.slide->tiles_skipped == plan.tiles.size() - meeting);
  CHECK(r.slide->tile_errors.empty());
  CHECK(r.counts.at("WBC") >= 1);

  // the tiles that hold the disk's centre cannot be read: reported; the other tiles over the disk run
  std::size_t holding = 0;
  for (std::size_t i = 0; i < plan.tiles.size(); ++i) holding += plan.run[i] && plan.tiles[i].region.contains(disk);
  REQUIRE(holding > 0);
  REQUIRE(holding < meeting);
  detector->images = 0;
  const HoleySource holey(canvas_with_disk(disk, 50), disk);
  const AnalysisResult h = pipeline.analyze(holey);
  REQUIRE(h.slide);
  CHECK(h.slide->tile_errors.size() == holding);
  CHECK_THAT(h.slide->tile_errors.front(), Contains("a corrupt tile"));
  CHECK(detector->images == static_cast<int>(meeting - holding));
}

TEST_CASE("the detector's physical scale picks the level and the resize", "[source][pipeline]") {
  struct ScaledDetector final : public Detector {
    std::vector<std::vector<Detection>> detect(const std::vector<cv::Mat>& batch) const override {
      return std::vector<std::vector<Detection>>(batch.size());
    }
    std::vector<std::string> labels() const override { return {"WBC"}; }
    cv::Size input_size() const override { return {320, 320}; }
    std::optional<double> microns_per_pixel() const override { return 1.0; }
  };
  GridTilerOptions o;
  o.tile_size = {320, 320};
  const Pipeline pipeline(std::make_shared<GridTiler>(o), std::make_shared<ScaledDetector>());
  const MatImageSource fine(canvas_with_disk({500, 400}, 60), "fine", 0.25);  // four times finer than the detector
  const SlidePlan plan = pipeline.plan(fine);
  CHECK(plan.info.downsample == 4.0);
  CHECK(plan.working_size == cv::Size(500, 375));
  SlideOptions unknown;
  unknown.microns_per_pixel = 1.0;
  CHECK(pipeline.plan(fine, unknown).info.downsample == 1.0);
  unknown.microns_per_pixel = -2.0;
  CHECK_THROWS_AS(pipeline.plan(fine, unknown), std::invalid_argument);
}
