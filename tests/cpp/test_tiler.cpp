#include <catch2/catch.hpp>

#include <random>

#include "bloodcv/merge.hpp"
#include "bloodcv/tiler.hpp"

using namespace bloodcv;
using Catch::Matchers::Contains;

namespace {

GridTiler make_tiler(int w, int h, double overlap = 0.15, bool whole_image = false) {
  GridTilerOptions o;
  o.tile_size = {w, h};
  o.overlap_ratio = overlap;
  o.whole_image_pass = whole_image;
  return GridTiler(o);
}

std::vector<cv::Rect> regions(const std::vector<Tile>& tiles) {
  std::vector<cv::Rect> out;
  for (const Tile& t : tiles) out.push_back(t.region);
  return out;
}

}  // namespace

TEST_CASE("grid plan: steps of tile - overlap, last tile shifted inward", "[tiler]") {
  const GridTiler tiler = make_tiler(400, 400);
  CHECK(tiler.overlap() == cv::Size(60, 60));
  // x: 0, 340, then 680 + 400 > 1000 so the last starts at 600; y: 0, then 100.
  CHECK(regions(tiler.plan({1000, 500})) ==
        std::vector<cv::Rect>{{0, 0, 400, 400}, {340, 0, 400, 400}, {600, 0, 400, 400},
                              {0, 100, 400, 400}, {340, 100, 400, 400}, {600, 100, 400, 400}});
  CHECK(tiler.plan({400, 400}).size() == 1);
  CHECK(tiler.plan({401, 400}).size() == 2);
}

TEST_CASE("plans near the int range: no overflow, and too many tiles are refused", "[tiler][errors]") {
  // A tile of 2^30 on an image one pixel wider: two tiles, the second shifted to end at the border (the
  // position 2^30 + 2^30 once overflowed int and looped for ever).
  const GridTiler wide = make_tiler(1 << 30, 64, 0.0);
  CHECK(regions(wide.plan({(1 << 30) + 1, 64})) == std::vector<cv::Rect>{{0, 0, 1 << 30, 64}, {1, 0, 1 << 30, 64}});
  // 2^31 - 1 pixels in 640-pixel tiles (544-pixel steps) would be 3.9 million tiles.
  CHECK_THROWS_WITH(make_tiler(640, 640).plan({2147483647, 100}), Contains("3947581 tiles (at most 1000000)"));
  CHECK(make_tiler(640, 640).plan({544 * 999 + 640, 100}).size() == 1000);
}

TEST_CASE("overlap in pixels and the whole-image pass", "[tiler]") {
  GridTilerOptions o;
  o.tile_size = {100, 50};
  o.overlap_pixels = 20;
  o.whole_image_pass = true;
  const auto tiles = GridTiler(o).plan({180, 50});
  REQUIRE(tiles.size() == 3);
  CHECK(tiles[0].region == cv::Rect(0, 0, 100, 50));
  CHECK(tiles[1].region == cv::Rect(80, 0, 100, 50));
  CHECK(tiles[2].whole_image);
  CHECK(tiles[2].region == cv::Rect(0, 0, 180, 50));
}

TEST_CASE("tiles are views of the source image", "[tiler]") {
  cv::Mat image(480, 640, CV_8UC3);
  cv::randu(image, 0, 255);
  const auto tiles = make_tiler(256, 256).tiles(image);
  REQUIRE(tiles.size() == 9);  // overlap 38 px, step 218: x 0, 218, 384; y 0, 218, 224
  for (const Tile& t : tiles) {
    CHECK(t.image.size() == cv::Size(256, 256));
    CHECK(t.image.data == image.ptr(t.region.y, t.region.x));  // no copy
  }
}

TEST_CASE("an image smaller than a tile gives one padded tile", "[tiler]") {
  cv::Mat image(100, 150, CV_8UC3, cv::Scalar(1, 2, 3));
  const auto tiles = make_tiler(256, 200, 0.15, true).tiles(image);
  REQUIRE(tiles.size() == 1);  // the whole-image pass would repeat the only tile
  CHECK(tiles[0].region == cv::Rect(0, 0, 150, 100));
  CHECK(tiles[0].image.size() == cv::Size(256, 200));
  CHECK(tiles[0].image.at<cv::Vec3b>(99, 149) == cv::Vec3b(1, 2, 3));
  CHECK(tiles[0].image.at<cv::Vec3b>(150, 200) == cv::Vec3b(114, 114, 114));
}

TEST_CASE("tiling round trip: cells cut by seams are found exactly once", "[tiler]") {
  // Cells on a lattice, none touching another; a perfect detector sees in each tile the visible part
  // of every cell it meets, scored by the visible fraction.
  const cv::Size image_size(1000, 700);
  std::vector<Box> cells;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> jitter(0, 8), side(20, 40);
  for (float y = 5; y + 50 < image_size.height; y += 55)
    for (float x = 5; x + 50 < image_size.width; x += 55) {
      const float x1 = x + jitter(rng), y1 = y + jitter(rng);
      cells.push_back({x1, y1, x1 + side(rng), y1 + side(rng)});
    }
  const GridTiler tiler = make_tiler(256, 256, 0.2);  // overlap 51 px >= the largest cell
  const auto tiles = tiler.plan(image_size);
  std::vector<std::vector<Detection>> per_tile(tiles.size());
  std::size_t cut = 0;
  for (std::size_t t = 0; t < tiles.size(); ++t) {
    const cv::Rect r = tiles[t].region;
    const Box tile_box{float(r.x), float(r.y), float(r.x + r.width), float(r.y + r.height)};
    for (std::size_t c = 0; c < cells.size(); ++c) {
      const float visible = intersection(cells[c], tile_box);
      if (visible <= 0) continue;
      const Box part = clip_box({cells[c].x1 - r.x, cells[c].y1 - r.y, cells[c].x2 - r.x, cells[c].y2 - r.y}, float(r.width),
                                float(r.height));
      if (visible < cells[c].area()) ++cut;
      per_tile[t].push_back(Detection{part, visible / cells[c].area(), static_cast<std::int64_t>(c % 2)});
    }
  }
  REQUIRE(cut > 20);  // the test means something only if seams cut many cells
  const auto merged = SeamMerger().merge(per_tile, tiles, image_size);
  REQUIRE(merged.size() == cells.size());
  for (const Box& cell : cells) {
    const auto same = std::count_if(merged.begin(), merged.end(), [&](const Detection& d) {
      return std::abs(d.box.x1 - cell.x1) < 1e-3f && std::abs(d.box.y1 - cell.y1) < 1e-3f &&
             std::abs(d.box.x2 - cell.x2) < 1e-3f && std::abs(d.box.y2 - cell.y2) < 1e-3f && d.score == 1.f;
    });
    CHECK(same == 1);
  }
}

TEST_CASE("seam merging tells touching cells apart where pooled IoS merging cannot", "[tiler]") {
  // Tiles x 0..120 and 80..200 share x 80..120. Cell A is whole in tile 0 and cut in tile 1; cell B,
  // overlapping A, is cut in tile 0 and whole in tile 1. The cut part of B lies mostly inside A
  // (IoS 0.55), so pooled IoS merging swallows it into A; the parts of A and B inside the shared
  // region differ (IoU 0.43), while the two views of each cell coincide there.
  GridTilerOptions o;
  o.tile_size = {120, 100};
  o.overlap_pixels = 40;
  const auto tiles = GridTiler(o).plan({200, 100});
  REQUIRE(tiles.size() == 2);
  const Box a{60, 10, 110, 60}, b{84, 22, 134, 72};
  auto det = [](Box box, float score) { return Detection{box, score, 0}; };
  const std::vector<std::vector<Detection>> per_tile{
      {det(a, 1.f), det({84, 22, 120, 72}, 0.72f)},                   // tile 0, local = image coordinates
      {det({0, 10, 30, 60}, 0.6f), det({4, 22, 54, 72}, 1.f)}};       // tile 1, shifted by 80
  const auto seam = SeamMerger().merge(per_tile, tiles, {200, 100});
  REQUIRE(seam.size() == 2);
  CHECK(seam[0].box == a);
  CHECK(seam[1].box == b);

  const auto pooled = PooledMerger(std::make_shared<NonMaxMerge>()).merge(per_tile, tiles, {200, 100});
  REQUIRE(pooled.size() == 2);
  CHECK(pooled[0].box == Box{60, 10, 120, 72});  // A grew over the cut part of B
}

TEST_CASE("seam merging never merges two detections of the same tile", "[tiler]") {
  GridTilerOptions o;
  o.tile_size = {100, 100};
  const auto tiles = GridTiler(o).plan({100, 100});
  const std::vector<std::vector<Detection>> per_tile{{Detection{{10, 10, 50, 50}, 0.9f, 0}, Detection{{10, 10, 50, 50}, 0.8f, 0}}};
  CHECK(SeamMerger().merge(per_tile, tiles, {100, 100}).size() == 2);
}

TEST_CASE("mapping to image coordinates shifts, clips and drops padding", "[tiler]") {
  Tile tile{cv::Rect(100, 50, 60, 40), {}, false};
  std::vector<Detection> dets(3);
  dets[0].box = {10, 10, 20, 20};
  dets[1].box = {50, 30, 90, 60};  // runs into the padding: clipped
  dets[2].box = {70, 0, 80, 10};   // wholly in the padding: dropped
  const auto out = to_image_coordinates(dets, tile, {160, 90});
  REQUIRE(out.size() == 2);
  CHECK(out[0].box == Box{110, 60, 120, 70});
  CHECK(out[1].box == Box{150, 80, 160, 90});
}

TEST_CASE("bad tiler input names the argument and value", "[tiler][errors]") {
  CHECK_THROWS_WITH(make_tiler(0, 10), Contains("tile_size") && Contains("0x10"));
  CHECK_THROWS_WITH(make_tiler(10, 10, 1.0), Contains("overlap_ratio") && Contains("1"));
  CHECK_THROWS_WITH(make_tiler(10, 10, -0.1), Contains("overlap_ratio"));
  GridTilerOptions o;
  o.tile_size = {64, 32};
  o.overlap_pixels = 32;
  CHECK_THROWS_WITH(GridTiler(o), Contains("overlap_pixels") && Contains("32"));
  CHECK_THROWS_WITH(make_tiler(64, 64).tiles(cv::Mat()), Contains("image is empty"));
  CHECK_THROWS_WITH(make_tiler(64, 64).plan({0, 10}), Contains("image size"));
  CHECK_THROWS_WITH(SeamMerger().merge({{}}, {}, {10, 10}), Contains("1 tiles but 0"));
}

TEST_CASE("a zero or negative image size is refused by the mapping and by every merger", "[tiler][errors]") {
  // Otherwise every box is clipped to nothing and dropped: no cells, and no word why.
  const Tile tile{cv::Rect(0, 0, 64, 64), {}, false};
  const std::vector<Detection> local{{{10, 10, 30, 30}, 0.9f, 0}};
  CHECK_THROWS_WITH(to_image_coordinates(local, tile, {0, 64}), Contains("image_size must be positive, got 0x64"));
  for (const char* strategy : {"seam", "nmm", "nms", "wbf", "soft-nms"}) {
    INFO(strategy);
    CHECK_THROWS_WITH(make_merger(strategy)->merge({local}, {tile}, {64, -5}), Contains("image_size must be positive, got 64x-5"));
  }
}

TEST_CASE("a tile far larger than the image is refused, naming the sizes, instead of padded", "[tiler][errors]") {
  const cv::Mat image(480, 640, CV_8UC3, cv::Scalar::all(0));
  GridTilerOptions huge;
  huge.tile_size = {100000, 100000};
  CHECK_THROWS_WITH(GridTiler(huge).tiles(image), Contains("tile_size 100000x100000 is larger than the 640x480 image") &&
                                                      Contains("10000000000 pixels"));
  GridTilerOptions padded;  // twice the image: still padded, to keep the detector's scale
  padded.tile_size = {1280, 960};
  const auto tiles = GridTiler(padded).tiles(image);
  REQUIRE(tiles.size() == 1);
  CHECK(tiles[0].image.size() == cv::Size(1280, 960));
}

TEST_CASE("boxes left with no area by clipping are dropped", "[tiler]") {
  const Tile tile{cv::Rect(440, 0, 200, 200), {}, false};
  const std::vector<Detection> local{{{-30, 10, -5, 40}, 0.9f, 0}, {{10, 10, 30, 30}, 0.8f, 0}};  // the first lies left of the tile
  const Tile left_edge{cv::Rect(0, 0, 200, 200), {}, false};
  const auto at_edge = to_image_coordinates(local, left_edge, {640, 480});  // ... and so left of the image
  REQUIRE(at_edge.size() == 1);
  CHECK(at_edge[0].box == Box{10, 10, 30, 30});
  const auto inside = to_image_coordinates(local, tile, {640, 480});  // inside the image: kept
  REQUIRE(inside.size() == 2);
  CHECK(inside[0].box == Box{410, 10, 435, 40});
}

TEST_CASE("mergers by name; every strategy merges the seam duplicates of one cell", "[tiler][merge]") {
  // One cell, 60..140 x 10..50, cut by the seam of two 100-pixel tiles overlapping by 20 (80..100).
  const std::vector<Tile> tiles{{cv::Rect(0, 0, 100, 60), {}, false}, {cv::Rect(80, 0, 100, 60), {}, false}};
  const std::vector<std::vector<Detection>> per_tile{{{{60, 10, 100, 50}, 0.9f, 0}}, {{{0, 10, 60, 50}, 0.8f, 0}}};
  for (const char* name : {"seam", "nmm", "nms", "wbf", "soft-nms"}) {
    INFO(name);
    const auto merged = make_merger(name)->merge(per_tile, tiles, {180, 60});
    REQUIRE_FALSE(merged.empty());
    CHECK(merged[0].score > 0.5f);
  }
  CHECK(make_merger("seam")->merge(per_tile, tiles, {180, 60}).front().box == Box{60, 10, 140, 50});
  CHECK(dynamic_cast<const PooledMerger*>(make_merger("wbf").get()) != nullptr);
  CHECK_THROWS_WITH(make_merger("average"), Contains("seam, nmm, nms, wbf or soft-nms") && Contains("average"));
  CHECK_THROWS_WITH(SeamMerger(SeamMergeOptions{1.5}), Contains("match_threshold"));
  CHECK_THROWS_WITH(PooledMerger(nullptr), Contains("needs a suppressor"));
}

TEST_CASE("a tile region outside the image is refused by the mapping and by every merger", "[tiler][errors]") {
  const std::vector<Detection> local{{Box{1, 1, 10, 10}, 0.9f, 0}};
  // The fuzzer's case: corners past the int range overflowed in the seam merger (fuzz_tiler_merge, regressions/).
  const Tile huge{cv::Rect(1120060098, 0, 1120060098, 64), cv::Mat()};
  CHECK_THROWS_WITH(to_image_coordinates(local, huge, {64, 64}),
                    Contains("tile region 1120060098x64 at (1120060098, 0) is not inside the 64x64 image"));
  for (const char* strategy : {"seam", "nmm", "nms", "wbf", "soft-nms"}) {
    CAPTURE(strategy);
    for (const cv::Rect& region : {cv::Rect(-1, 0, 32, 32), cv::Rect(40, 0, 32, 32), cv::Rect(0, 0, 0, 32), cv::Rect(0, 40, 32, 32)}) {
      CAPTURE(region);
      const Tile inside{cv::Rect(0, 0, 32, 32), cv::Mat()}, outside{region, cv::Mat()};
      CHECK_THROWS_WITH(make_merger(strategy)->merge({local, local}, {inside, outside}, {64, 64}), Contains("is not inside the 64x64 image"));
    }
  }
  const Tile edge{cv::Rect(32, 32, 32, 32), cv::Mat()};  // touching the far corner is inside
  CHECK(to_image_coordinates(local, edge, {64, 64}).front().box == Box{33, 33, 42, 42});
}
