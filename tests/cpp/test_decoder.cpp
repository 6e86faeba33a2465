#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

#include "bloodcv/decoder.hpp"

using namespace bloodcv;
using Catch::Matchers::Contains;

namespace {

TensorView view(const std::vector<float>& data, std::vector<std::int64_t> shape) { return {data.data(), std::move(shape)}; }

}  // namespace

TEST_CASE("letterbox and stretch transforms map input boxes back to the image", "[decoder]") {
  const InputTransform t = letterbox_transform({200, 100}, {256, 256});  // scale 1.28, 256x128 centred: pad y 64
  CHECK(t.scale_x == Approx(1.28));
  CHECK(t.pad_x == 0);
  CHECK(t.pad_y == 64);
  const Box back = t.to_image({12.8f, 64 + 12.8f, 128, 64 + 25.6f});
  CHECK(back.x1 == Approx(10));
  CHECK(back.y1 == Approx(10));
  CHECK(back.x2 == Approx(100));
  CHECK(back.y2 == Approx(20));
  const InputTransform s = stretch_transform({128, 32}, {64, 64});
  CHECK(s.to_image({32, 16, 64, 32}) == Box{64, 8, 128, 16});
}

TEST_CASE("YOLOv5 decoding: confidence, threshold, single and multi label; the entry's NMS", "[decoder]") {
  // cx, cy, w, h, obj, c0, c1
  const std::vector<float> out{
      50, 50, 20, 10, 0.9f, 0.2f, 0.8f,  // label 1, confidence 0.72, box (40, 45, 60, 55)
      51, 50, 20, 10, 0.8f, 0.1f, 0.9f,  // overlaps the first (IoU 0.9): suppressed
      10, 10, 4, 4, 0.9f, 0.5f, 0.4f,    // label 0 at 0.45, and label 1 at 0.36 in multi-label mode
      80, 80, 10, 10, 0.2f, 1.0f, 1.0f,  // objectness under the threshold
  };
  YoloV5DecoderOptions o;
  o.num_classes = 2;
  const auto candidates = YoloV5Decoder(o).decode({view(out, {4, 7})});
  CHECK(candidates.size() == 3);  // the decoder only decodes: the overlapping pair is still there
  const DecoderContext two_classes{2, {96, 96}};
  const DecoderSetup file = make_decoder(R"({"kind": "yolov5"})", two_classes);  // the defaults: NMS at IoU 0.45
  auto dets = suppress(*file.suppressor, file.decoder->decode({view(out, {4, 7})}));
  REQUIRE(dets.size() == 2);
  CHECK(dets[0].box == Box{40, 45, 60, 55});
  CHECK(dets[0].label == 1);
  CHECK(dets[0].score == Approx(0.72));
  CHECK(dets[1].box == Box{8, 8, 12, 12});
  CHECK(dets[1].label == 0);
  CHECK(dets[1].score == Approx(0.45));

  const DecoderSetup multi = make_decoder(R"({"kind": "yolov5", "multi_label": true})", two_classes);
  dets = suppress(*multi.suppressor, multi.decoder->decode({view(out, {4, 7})}));
  REQUIRE(dets.size() == 3);
  CHECK(dets[2].label == 1);
  CHECK(dets[2].score == Approx(0.36));
  CHECK(YoloV5Decoder(o).decode({view({}, {0, 7})}).empty());
  const DecoderSetup loose = make_decoder(R"({"kind": "yolov5", "nms_iou_threshold": 0.95})", two_classes);
  CHECK(suppress(*loose.suppressor, loose.decoder->decode({view(out, {4, 7})})).size() == 3);  // IoU 0.9 < 0.95
}

TEST_CASE("the decoder entry sets a label's own NMS threshold by its name", "[decoder]") {
  // cx, cy, w, h, obj, c0, c1: a pair of WBC boxes and a pair of RBC boxes, each pair at IoU 60/140 = 0.43.
  const std::vector<float> out{5, 5, 10, 10, 0.9f, 1, 0,   9, 5, 10, 10, 0.8f, 1, 0,
                               5, 50, 10, 10, 0.9f, 0, 1,  9, 50, 10, 10, 0.8f, 0, 1};
  const DecoderContext context{2, {96, 96}, {"WBC", "RBC"}};
  const auto kept = [&](const std::string& entry) {
    const DecoderSetup d = make_decoder(entry, context);
    return suppress(*d.suppressor, d.decoder->decode({view(out, {4, 7})}));
  };
  CHECK(kept(R"({"kind": "yolov5"})").size() == 4);  // 0.43 is under the default 0.45
  const auto strict = kept(R"({"kind": "yolov5", "nms_iou_threshold_by_label": {"WBC": 0.3}})");
  REQUIRE(strict.size() == 3);
  CHECK(std::count_if(strict.begin(), strict.end(), [](const Detection& d) { return d.label == 0; }) == 1);
  const DecoderSetup anchor = make_decoder(
      R"({"kind": "anchor", "strides": [32], "sizes": [32], "aspect_ratios": [1], "nms_iou_threshold_by_label": {"RBC": 0.6}})",
      context);
  const auto* hard = dynamic_cast<const HardNms*>(anchor.suppressor.get());
  REQUIRE(hard != nullptr);
  CHECK(hard->options().class_iou_thresholds == std::vector<double>{0.5, 0.6});  // WBC keeps the anchor kind's 0.5
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "yolov5", "nms_iou_threshold_by_label": {"Neutrophil": 0.3}})", context),
                    Contains("'Neutrophil'") && Contains("not one of the model's labels"));
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "yolov5", "nms_iou_threshold_by_label": {"WBC": 1.5}})", context),
                    Contains("nms_iou_threshold_by_label['WBC']"));
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "yolov5", "nms_iou_threshold_by_label": [0.3]})", context),
                    Contains("nms_iou_threshold_by_label"));
}

TEST_CASE("YOLOv5 decoding rejects outputs that do not fit", "[decoder][errors]") {
  YoloV5DecoderOptions o;
  o.num_classes = 2;
  const YoloV5Decoder decoder(o);
  const std::vector<float> six(12, 0.f);
  CHECK_THROWS_WITH(decoder.decode({view(six, {2, 6})}), Contains("[N, 7]") && Contains("[2, 6]"));
  CHECK_THROWS_WITH(decoder.decode({view(six, {12})}), Contains("[12]"));
  CHECK_THROWS_WITH(decoder.decode({}), Contains("one output"));
  std::vector<float> nan(7, 0.f);
  nan[2] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(decoder.decode({view(nan, {1, 7})}), Contains("non-finite") && Contains("row 0, column 2"));
  o.num_classes = 0;
  CHECK_THROWS_AS(YoloV5Decoder(o), std::invalid_argument);
}

TEST_CASE("anchors follow torchvision's order and sizes", "[decoder]") {
  AnchorOptions o;
  o.strides = {16, 32};
  o.sizes = {16, 32};
  o.aspect_ratios = {0.5f, 2.f};
  o.scales = {1.f};
  std::vector<std::size_t> per_level;
  const auto anchors = generate_anchors(o, {64, 32}, &per_level);
  CHECK(per_level == std::vector<std::size_t>{4 * 2 * 2, 2 * 1 * 2});
  REQUIRE(anchors.size() == 20);
  // Location (x=1, y=0) of level 0, centre (16, 0): ratio 0.5 is wider than tall.
  const float w = 16 / std::sqrt(0.5f), h = 16 * std::sqrt(0.5f);
  CHECK(anchors[2].x1 == Approx(16 - w / 2));
  CHECK(anchors[2].y2 == Approx(h / 2));
  CHECK(anchors[3].width() == Approx(h));  // ratio 2
  CHECK(anchors[16].center_x() == Approx(0));
  CHECK(anchors[16].width() == Approx(32 / std::sqrt(0.5f)));
  CHECK_THROWS_WITH(generate_anchors(o, {60, 32}), Contains("multiple of every stride"));
}

TEST_CASE("anchor decoding of hand-made logits and deltas", "[decoder]") {
  AnchorDecoderOptions o;
  o.anchors.strides = {16, 32};
  o.anchors.sizes = {16, 32};
  o.anchors.aspect_ratios = {1.f};
  o.anchors.scales = {1.f};
  o.anchors.center_offset = 0.5f;
  o.num_classes = 2;
  const AnchorDecoder plain(o, {64, 64});
  REQUIRE(plain.anchors().size() == 20);
  CHECK(plain.anchors()[6] == Box{32, 16, 48, 32});  // x=2, y=1 at stride 16

  std::vector<float> logits(40, -10.f), deltas(80, 0.f), ious(20, 0.f);
  logits[6 * 2 + 1] = 2.f;          // anchor 6, class 1
  deltas[6 * 4 + 0] = 0.5f;         // centre + half the anchor width
  deltas[6 * 4 + 2] = std::log(2.f);  // twice as wide
  logits[17 * 2 + 0] = 0.f;         // anchor 17 (level 1), class 0, score 0.5, deltas 0: the anchor itself
  auto dets = plain.decode({view(logits, {20, 2}), view(deltas, {20, 4})});
  REQUIRE(dets.size() == 2);
  CHECK(dets[0].label == 1);
  CHECK(dets[0].score == Approx(1 / (1 + std::exp(-2.0))));
  CHECK(dets[0].box.x1 == Approx(32));
  CHECK(dets[0].box.x2 == Approx(64));
  CHECK(dets[0].box.y1 == Approx(16));
  CHECK(dets[1].box == Box{32, 0, 64, 32});
  CHECK_FALSE(dets[0].predicted_iou.has_value());

  // The file's entry with the IoU branch: IouAwareNms ranks by class^(1 - alpha) · iou^alpha.
  const DecoderSetup file = make_decoder(R"({"kind": "anchor", "strides": [16, 32], "sizes": [16, 32], "aspect_ratios": [1],
                                             "scales": [1], "center_offset": 0.5, "iou_branch": true})",
                                         DecoderContext{2, {64, 64}});
  const OutputDecoder& with_iou = *file.decoder;
  ious[17] = 4.f;  // confident box 17 overtakes box 6 in the ranking
  dets = suppress(*file.suppressor, with_iou.decode({view(logits, {20, 2}), view(deltas, {20, 4}), view(ious, {20})}));
  REQUIRE(dets.size() == 2);
  const double sig4 = 1 / (1 + std::exp(-4.0));
  CHECK(dets[0].score == Approx(std::sqrt(0.5 * sig4)));
  CHECK(*dets[0].predicted_iou == Approx(sig4));
  CHECK(dets[1].score == Approx(std::sqrt(0.5 / (1 + std::exp(-2.0)))));

  CHECK_THROWS_WITH(with_iou.decode({view(logits, {20, 2}), view(deltas, {20, 4})}), Contains("3 outputs"));
  CHECK_THROWS_WITH(plain.decode({view(logits, {10, 4}), view(deltas, {20, 4})}), Contains("[20, 2]") && Contains("[10, 4]"));
  CHECK_THROWS_WITH(plain.decode({view(logits, {20, 2}), view(deltas, {40, 2})}), Contains("box deltas"));
}

TEST_CASE("decoders by kind: each reads its own keys; new kinds can be registered", "[decoder][errors]") {
  const DecoderContext context{3, {64, 64}};
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "ssd"})", context), Contains("decoder.kind must be one of anchor, yolov5") && Contains("'ssd'"));
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "yolov5", "nms_iou_treshold": 0.5})", context),
                    Contains("decoder 'yolov5': unknown key 'nms_iou_treshold'"));
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "yolov5", "score_threshold": "high"})", context), Contains("score_threshold"));
  CHECK_THROWS_WITH(make_decoder(R"({"score_threshold": 0.2})", context), Contains("needs a \"kind\""));
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "yolov5", "nms_iou_threshold": 2})", context), Contains("iou_threshold"));

  register_decoder("center_only", [](const std::string&, const DecoderContext& c) {
    YoloV5DecoderOptions o;
    o.num_classes = c.num_classes;
    return DecoderSetup{std::make_unique<YoloV5Decoder>(o), std::make_shared<HardNms>()};
  });
  const auto kinds = decoder_kinds();
  CHECK(std::find(kinds.begin(), kinds.end(), "center_only") != kinds.end());
  CHECK(make_decoder(R"({"kind": "center_only"})", context).decoder != nullptr);
}

TEST_CASE("integer keys beyond their type's range are refused instead of cast", "[decoder][errors]") {
  // tests/fuzz/regressions/fuzz_model_metadata: 1e30 as max_detections or a stride was cast to an integer
  // (undefined behaviour; INT_MIN in practice).
  const DecoderContext context{3, {64, 64}};
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "yolov5", "max_detections": 1e30})", context),
                    Contains("decoder 'yolov5': max_detections must be whole numbers within the range"));
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "anchor", "strides": [8, 1e30], "sizes": [8, 16]})", context),
                    Contains("decoder 'anchor': strides must be whole numbers"));
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "anchor", "strides": [8, 4294967304], "sizes": [8, 16]})", context),
                    Contains("strides"));  // would wrap to 8
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "anchor", "pre_nms_top_k": -1})", context), Contains("pre_nms_top_k"));
  CHECK_THROWS_WITH(make_decoder(R"({"kind": "anchor", "strides": [8.5], "sizes": [8]})", context), Contains("strides"));
  // Whole floats within range are read as before.
  CHECK(make_decoder(R"({"kind": "yolov5", "max_detections": 100.0})", context).decoder != nullptr);
}
