#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include <opencv2/imgcodecs.hpp>

#include "bloodcv/eval.hpp"

using namespace bloodcv;
using namespace bloodcv::eval;
using Catch::Matchers::Contains;

namespace {

GroundTruth truth_of(std::vector<std::vector<GroundTruthBox>> per_image, std::vector<std::string> labels = {"cell"}) {
  GroundTruth gt;
  gt.labels = std::move(labels);
  for (std::size_t i = 0; i < per_image.size(); ++i) gt.images.push_back({"img" + std::to_string(i), {640, 480}, per_image[i]});
  return gt;
}

Predictions predictions_of(std::vector<std::vector<Detection>> per_image, std::vector<std::string> labels = {"cell"}) {
  Predictions p;
  p.labels = std::move(labels);
  for (std::size_t i = 0; i < per_image.size(); ++i) p.images.push_back({"img" + std::to_string(i), per_image[i]});
  return p;
}

const Box kA{10, 10, 60, 60}, kB{100, 100, 150, 150}, kSmall{300, 300, 310, 310};

}  // namespace

TEST_CASE("perfect predictions give AP 1", "[eval]") {
  const auto r = evaluate_detections(truth_of({{{kA, 0}, {kB, 0}}, {{kA, 0}}}),
                                     predictions_of({{{kA, 0.9f, 0}, {kB, 0.8f, 0}}, {{kA, 0.7f, 0}}}));
  CHECK(r.metric("AP") == Approx(1));
  CHECK(r.metric("AP50") == Approx(1));
  CHECK(r.metric("AR100") == Approx(1));
  CHECK(r.metric("AR1") == Approx(2.0 / 3.0).epsilon(1e-9));  // one detection per image: 2 of 3 boxes
  CHECK(r.metric("AP_small") == -1);                        // no small ground truth
  CHECK(r.metric("AP_medium") == Approx(1));
  CHECK(r.by_iou[0].f1 == Approx(1));
  CHECK(r.classes[0].count_mae == 0);
}

TEST_CASE("one of two objects missed: AP = 51/101", "[eval]") {
  const auto r = evaluate_detections(truth_of({{{kA, 0}, {kB, 0}}}), predictions_of({{{kA, 0.9f, 0}}}));
  CHECK(r.metric("AP50") == Approx(51.0 / 101.0).epsilon(1e-12));
  CHECK(r.metric("AR100") == Approx(0.5));
  CHECK(r.by_iou[0].precision == Approx(1));
  CHECK(r.by_iou[0].recall == Approx(0.5));
  CHECK(r.by_iou[0].f1 == Approx(2.0 / 3.0));
  CHECK(r.by_iou[0].confidence == Approx(0.9));
}

TEST_CASE("duplicates: ranked below the match they cost nothing, ranked above they halve AP", "[eval]") {
  const Box near_a{12, 10, 62, 60};  // IoU with A about 0.92
  auto r = evaluate_detections(truth_of({{{kA, 0}}}), predictions_of({{{kA, 0.9f, 0}, {near_a, 0.8f, 0}}}));
  CHECK(r.metric("AP50") == Approx(1));
  CHECK(r.by_iou[0].precision == Approx(1));  // the F1-best confidence leaves the duplicate out
  const Box poor{40, 10, 90, 60};  // IoU with A 0.25: a false positive, ranked first
  r = evaluate_detections(truth_of({{{kA, 0}}}), predictions_of({{{poor, 0.95f, 0}, {kA, 0.9f, 0}}}));
  CHECK(r.metric("AP50") == Approx(0.5));
}

TEST_CASE("empty images, ignored boxes, classes without ground truth", "[eval]") {
  // Image 1 has nothing at all; image 2 has a false positive only; "other" has no ground truth.
  auto r = evaluate_detections(truth_of({{{kA, 0}}, {}, {}}, {"cell", "other"}),
                               predictions_of({{{kA, 0.9f, 0}}, {}, {{kB, 0.95f, 0}, {kB, 0.5f, 1}}}, {"cell", "other"}));
  CHECK(r.classes[1].ap == -1);
  CHECK(r.classes[0].ap50 == Approx(0.5));  // the false positive outranks the hit
  CHECK(r.metric("AP50") == Approx(0.5));   // the class without ground truth is left out of the mean
  // A detection matching an ignored (difficult / crowd) box is neither right nor wrong.
  r = evaluate_detections(truth_of({{{kA, 0}, {kB, 0, true}}}), predictions_of({{{kB, 0.95f, 0}, {kA, 0.9f, 0}}}));
  CHECK(r.metric("AP50") == Approx(1));
  CHECK(r.classes[0].ground_truth == 1);
}

TEST_CASE("max detections and counting error", "[eval]") {
  std::vector<Detection> many;
  std::vector<GroundTruthBox> cells;
  for (int i = 0; i < 150; ++i) {
    const Box b{float(i * 4), 0, float(i * 4 + 3), 3};
    cells.push_back({b, 0});
    many.push_back({b, 1.f - i * 0.001f, 0});
  }
  DetectionEvalOptions options;
  auto r = evaluate_detections(truth_of({cells}), predictions_of({many}), options);
  CHECK(r.metric("AR100") == Approx(100.0 / 150.0));
  CHECK(r.metric("AP") == Approx(67.0 / 101.0));  // precision 1 at the 67 recall points 0, 0.01, ..., 0.66; none above 2/3
  options.max_detections = {1, 10, 1000};
  r = evaluate_detections(truth_of({cells}), predictions_of({many}), options);
  CHECK(r.metric("AR1000") == Approx(1));
  CHECK(r.metric("AP") == Approx(1));
  options.count_score_threshold = 0.9f;  // keeps 101 of 150
  r = evaluate_detections(truth_of({cells}), predictions_of({many}), options);
  CHECK(r.classes[0].count_mae == Approx(49));
}

TEST_CASE("evaluation errors name what is wrong", "[eval][errors]") {
  CHECK_THROWS_WITH(evaluate_detections(truth_of({{}}), predictions_of({{}}, {"ghost"})), Contains("'ghost'"));
  DetectionEvalOptions bad;
  bad.max_detections = {0};
  CHECK_THROWS_WITH(evaluate_detections(truth_of({{}}), predictions_of({{}}), bad), Contains("max_detections"));
  CHECK_THROWS_WITH(read_voc("/nonexistent/annotations"), Contains("no such file"));
  CHECK_THROWS_WITH(evaluate_classification({0, 1}, {0}, {"a", "b"}), Contains("truth has 2"));
  CHECK_THROWS_WITH(evaluate_classification({0, 3}, {0, 1}, {"a", "b"}), Contains("label index 3"));
}

TEST_CASE("VOC objects with a non-numeric coordinate or no name are refused, naming file and object", "[eval][errors]") {
  const auto dir = std::filesystem::temp_directory_path() / ("bloodcv_voc_bad_" + std::to_string(::getpid()));
  const auto write = [&](const std::string& object) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "a.xml") << "<annotation><filename>a.jpg</filename><object>" << object << "</object></annotation>";
    return dir.string();
  };
  const std::string box = "<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>11</xmax><ymax>12</ymax></bndbox>";
  CHECK(read_voc(write("<name>WBC</name>" + box)).images.at(0).boxes.at(0).box == Box{1, 2, 11, 12});
  CHECK_THROWS_WITH(read_voc(write("<name>WBC</name><bndbox><xmin>abc</xmin><ymin>2</ymin><xmax>11</xmax><ymax>12</ymax></bndbox>")),
                    Contains("a.xml") && Contains("object 'WBC': <xmin> must be a number, got 'abc'"));
  CHECK_THROWS_WITH(read_voc(write("<name>WBC</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>11</xmax></bndbox>")),
                    Contains("<ymax> must be a number, got ''"));
  CHECK_THROWS_WITH(read_voc(write("<name>WBC</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>11px</xmax><ymax>12</ymax></bndbox>")),
                    Contains("got '11px'"));
  CHECK_THROWS_WITH(read_voc(write(box)), Contains("a.xml") && Contains("object 1 has no <name>"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("COCO ids beyond int64's range are refused, not cast (the fuzzers' 7.8e28)", "[eval][errors]") {
  const auto file = std::filesystem::temp_directory_path() / ("bloodcv_coco_big_" + std::to_string(::getpid()) + ".json");
  std::ofstream(file) << R"({"images": [{"id": 77777777777777777777777777772, "file_name": "a.png"}], "categories": [], "annotations": []})";
  CHECK_THROWS_WITH(read_coco(file.string()), Contains("\"id\" must be a whole number within the range of its type, got 7.777777777777778e+28"));
  std::ofstream(file) << R"({"images": [{"id": 1, "file_name": "a.png", "width": 1.5}], "categories": [], "annotations": []})";
  CHECK_THROWS_WITH(read_coco(file.string()), Contains("\"width\" must be a whole number"));
  std::filesystem::remove(file);
}

TEST_CASE("macro averages count a class only predicted, as scikit-learn does", "[eval]") {
  // Truth a, a; predicted a, b: a has P 1, R 0.5, F1 2/3; b (never true) P 0, R 0, F1 0 and still counts.
  const ClassificationReport r = evaluate_classification({0, 0}, {0, 1}, {"a", "b", "c"});
  CHECK(r.macro_precision == Approx(0.5));
  CHECK(r.macro_recall == Approx(0.25));
  CHECK(r.macro_f1 == Approx(1.0 / 3));
  CHECK_THROWS_WITH(evaluate_classification({0}, {0}, std::vector<std::string>(5000, "x")), Contains("5000 labels: at most 4096"));
}

TEST_CASE("VOC, YOLO and COCO readers", "[eval]") {
  const auto dir = std::filesystem::temp_directory_path() / ("bloodcv_eval_readers_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "voc");
  std::ofstream(dir / "voc" / "a.xml") << "<annotation><filename>a.jpg</filename><size><width>64</width><height>32</height></size>"
                                          "<object><name>WBC</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>11</xmax><ymax>12</ymax></bndbox></object>"
                                          "<object><name> RBC </name><bndbox><xmin>20</xmin><ymin>2</ymin><xmax>30</xmax><ymax>12</ymax></bndbox></object></annotation>";
  const GroundTruth voc = read_voc((dir / "voc").string());
  REQUIRE(voc.images.size() == 1);
  CHECK(voc.labels == std::vector<std::string>{"WBC", "RBC"});
  CHECK(voc.images[0].image == "a");
  CHECK(voc.images[0].boxes[0].ignore);
  CHECK(voc.images[0].boxes[1].box == Box{20, 2, 30, 12});
  CHECK_THROWS_WITH(read_voc((dir / "voc").string(), {"WBC"}), Contains("'RBC'"));

  std::ofstream(dir / "coco.json") << R"({"images": [{"id": 7, "file_name": "x/b.png", "width": 10, "height": 10}],
    "categories": [{"id": 3, "name": "WBC"}], "annotations": [{"image_id": 7, "category_id": 3, "bbox": [1, 2, 3, 4], "iscrowd": 0}]})";
  const GroundTruth coco = read_coco((dir / "coco.json").string());
  CHECK(coco.images[0].image == "b");
  CHECK(coco.images[0].boxes[0].box == Box{1, 2, 4, 6});

  std::filesystem::create_directories(dir / "yolo" / "labels");
  std::filesystem::create_directories(dir / "yolo" / "images");
  std::ofstream(dir / "yolo" / "classes.txt") << "WBC\nRBC\n";
  std::ofstream(dir / "yolo" / "labels" / "c.txt") << "1 0.5 0.5 0.25 0.5\n";
  cv::imwrite((dir / "yolo" / "images" / "c.png").string(), cv::Mat(40, 80, CV_8UC3, cv::Scalar::all(0)));
  const GroundTruth yolo = read_yolo((dir / "yolo" / "labels").string(), (dir / "yolo" / "images").string());
  CHECK(yolo.labels == std::vector<std::string>{"WBC", "RBC"});
  CHECK(yolo.images[0].boxes[0].box == Box{30, 10, 50, 30});
  CHECK(yolo.images[0].boxes[0].label == 1);
  std::filesystem::remove_all(dir);
}

TEST_CASE("classification metrics by hand", "[eval]") {
  // truth a a a b b c ; predicted a a b b c c
  const auto r = evaluate_classification({0, 0, 0, 1, 1, 2}, {0, 0, 1, 1, 2, 2}, {"a", "b", "c"});
  CHECK(r.accuracy == Approx(4.0 / 6.0));
  CHECK(r.confusion == std::vector<std::vector<int>>{{2, 1, 0}, {0, 1, 1}, {0, 0, 1}});
  CHECK(r.precision == std::vector<double>{1.0, 0.5, 0.5});
  CHECK(r.recall[0] == Approx(2.0 / 3.0));
  CHECK(r.macro_recall == Approx((2.0 / 3.0 + 0.5 + 1.0) / 3));
  CHECK(r.weighted_recall == Approx(r.accuracy));
  CHECK_THAT(to_markdown(r), Contains("| a | 1.0000 | 0.6667 |"));
  const cv::Mat image = draw_confusion(r);
  CHECK(image.cols > 3 * 48);
}

TEST_CASE("detect-then-classify chain", "[eval]") {
  const std::map<std::string, std::vector<TypedBox>> truth{{"i1", {{kA, "neutrophil"}}}, {"i2", {{kB, "lymphocyte"}}}, {"i3", {{kA, "monocyte"}}}};
  const std::map<std::string, std::vector<TypedBox>> predicted{
      {"i1", {{kA, "neutrophil", 0.9f}}}, {"i2", {{kB, "monocyte", 0.8f}}}, {"i3", {{kSmall, "monocyte", 0.9f}}}};
  const ChainReport r = evaluate_chain(truth, predicted);
  CHECK(r.cells == 3);
  CHECK(r.detected == 2);
  CHECK(r.correct == 1);
  CHECK(r.end_to_end_accuracy == Approx(1.0 / 3.0));
  CHECK(r.types.accuracy == Approx(0.5));
}

TEST_CASE("max detections are used in ascending order: AP at the largest whatever the order given", "[eval]") {
  // Three boxes in one image: AP at 1 detection differs from AP at 10.
  const auto gt = truth_of({{{kA, 0}, {kB, 0}, {kSmall, 0}}});
  const auto pred = predictions_of({{{kA, 0.9f, 0}, {kB, 0.8f, 0}, {kSmall, 0.7f, 0}}});
  DetectionEvalOptions ascending, descending;
  ascending.max_detections = {1, 10, 100};
  descending.max_detections = {100, 10, 1, 10};
  const auto a = evaluate_detections(gt, pred, ascending), d = evaluate_detections(gt, pred, descending);
  CHECK(d.options.max_detections == std::vector<int>{1, 10, 100});
  CHECK(d.coco == a.coco);
  CHECK(a.metric("AP") == Approx(1));
}

TEST_CASE("images are matched by name: uncovered ground truth and unknown predictions are reported", "[eval]") {
  auto gt = truth_of({{{kA, 0}}, {{kB, 0}}});  // img0, img1
  auto pred = predictions_of({{{kA, 0.9f, 0}}});  // img0 only
  pred.images.push_back({"elsewhere", {{kB, 0.9f, 0}}});
  const auto all = evaluate_detections(gt, pred);
  CHECK(all.images == 2);
  CHECK(all.images_without_predictions == 1);
  CHECK(all.unmatched_prediction_images == std::vector<std::string>{"elsewhere"});
  CHECK(all.metric("AR100") == Approx(0.5));  // img1's box counts as missed
  CHECK_THAT(to_markdown(all), Contains("1 of the 2 images have no predictions"));
  DetectionEvalOptions only;
  only.predicted_images_only = true;
  const auto covered = evaluate_detections(gt, pred, only);
  CHECK(covered.images == 1);
  CHECK(covered.images_without_predictions == 0);
  CHECK(covered.metric("AR100") == Approx(1));
  CHECK(evaluate_detections(select_images(gt, {"img0"}), pred).coco == covered.coco);

  Predictions strangers;
  strangers.labels = {"cell"};
  strangers.images = {{"x", {}}, {"y", {}}};
  CHECK_THROWS_WITH(evaluate_detections(gt, strangers), Contains("none of the 2 predicted images is in the ground truth"));
}

TEST_CASE("selecting images by name keeps their order and refuses unknown names", "[eval][errors]") {
  const auto gt = truth_of({{{kA, 0}}, {{kB, 0}}, {}});
  const auto kept = select_images(gt, {"img2", "img0", "img2"});
  REQUIRE(kept.images.size() == 2);
  CHECK(kept.images[0].image == "img2");
  CHECK(kept.images[1].image == "img0");
  CHECK_THROWS_WITH(select_images(gt, {"img0", "nope", "gone"}), Contains("2 of the 3 images named are not in the ground truth: nope, gone"));
}

TEST_CASE("predictions read the same from analyze's directory, a report and COCO results", "[eval]") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("bloodcv_test_pred_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) { std::ofstream(dir / name) << text; };
  write("a.json", R"({"schema": "bloodcv.analysis", "image": {"path": "/x/a.jpg"},
                      "cells": [{"box": [10, 10, 60, 60], "score": 0.9, "label": "cell"}]})");
  write("a.coco.json", R"([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}])");
  write("summary.json", R"({"images": []})");
  write("coco_results.json", R"([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}])");
  write("coco_images.json", R"({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "cell"}]})");
  for (const fs::path& form : {dir, dir / "", dir / "a.json", dir / "coco_results.json"}) {
    const Predictions p = read_predictions(form.string());
    INFO(form);
    REQUIRE(p.images.size() == 1);
    CHECK(p.images[0].image == "a");
    REQUIRE(p.images[0].detections.size() == 1);
    CHECK(p.images[0].detections[0].box == kA);
    CHECK(p.labels == std::vector<std::string>{"cell"});
  }
  CHECK_THROWS_WITH(read_predictions((dir / "summary.json").string()), Contains("neither a bloodcv analysis report"));
  CHECK_THROWS_WITH(read_coco(dir.string()), Contains("is a directory, not a JSON file"));
  fs::remove_all(dir);
}
