// Decoding a detector's raw output into candidate boxes. Decoders read plain float arrays, not torch
// tensors, so they are tested without a model and this header stays free of LibTorch. Suppressing the
// duplicates among the candidates is a Suppressor's job (nms.hpp): the model file's decoder entry says
// which one the model was trained with, and a detector's options may replace it.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "bloodcv/box.hpp"
#include "bloodcv/nms.hpp"

namespace bloodcv {

// A dense, row-major float32 array on the CPU: one model output for one image.
struct TensorView {
  const float* data = nullptr;
  std::vector<std::int64_t> shape;

  std::int64_t numel() const;
  std::string shape_string() const;  // "[100, 8]"
};

// Where an image lies in the model's input: input = image · scale + pad, per axis.
struct InputTransform {
  float scale_x = 1, scale_y = 1, pad_x = 0, pad_y = 0;

  Box to_image(const Box& input_box) const {
    return {(input_box.x1 - pad_x) / scale_x, (input_box.y1 - pad_y) / scale_y, (input_box.x2 - pad_x) / scale_x,
            (input_box.y2 - pad_y) / scale_y};
  }
};

// Letterbox (YOLO): keep the aspect ratio, centre in the input, pad the rest.
InputTransform letterbox_transform(cv::Size image, cv::Size input);
// Stretch: resize each axis to the input.
InputTransform stretch_transform(cv::Size image, cv::Size input);

// Raw outputs of one image → the candidate detections in model-input pixels (every box above the score
// threshold; duplicates not yet suppressed).
class OutputDecoder {
 public:
  virtual ~OutputDecoder() = default;
  virtual std::vector<Detection> decode(const std::vector<TensorView>& outputs) const = 0;
};

// What a model file's "decoder" entry makes: the decoder and the suppression its candidates go through.
struct DecoderSetup {
  std::unique_ptr<OutputDecoder> decoder;
  std::shared_ptr<const Suppressor> suppressor;
};

struct DecoderContext {
  std::size_t num_classes = 0;
  cv::Size input_size;
  std::vector<std::string> labels;  // the model's, by index; may be empty where a caller has only a class count
};

// Decoders by the "kind" of a model file's decoder entry. A factory reads its own keys from the entry
// (JSON text) and refuses unknown ones; "yolov5" and "anchor" are registered. register_decoder adds or
// replaces a kind (thread-safe); make_decoder throws std::invalid_argument naming the kind or the key.
using DecoderFactory = std::function<DecoderSetup(const std::string& decoder_json, const DecoderContext& context)>;
void register_decoder(const std::string& kind, DecoderFactory factory);
DecoderSetup make_decoder(const std::string& decoder_json, const DecoderContext& context);
std::vector<std::string> decoder_kinds();

// "yolov5" entry keys: score_threshold (0.25), nms_iou_threshold (0.45: class-aware hard NMS),
// multi_label (false), max_detections (3000). Both kinds: nms_iou_threshold_by_label ({"WBC": 0.3}: a
// label's own threshold, HardNmsOptions::class_iou_thresholds; a name not in context.labels is refused).
struct YoloV5DecoderOptions {
  std::size_t num_classes = 0;
  float score_threshold = 0.25f;     // on objectness × class score
  bool multi_label = false;          // every class above the threshold, not only the best
};

// YOLOv5's exported output, one tensor [N, 5 + C] per image: cx, cy, w, h (input pixels), objectness,
// class scores, all probabilities already.
class YoloV5Decoder final : public OutputDecoder {
 public:
  explicit YoloV5Decoder(YoloV5DecoderOptions options);
  std::vector<Detection> decode(const std::vector<TensorView>& outputs) const override;
  const YoloV5DecoderOptions& options() const { return options_; }

 private:
  YoloV5DecoderOptions options_;
};

// Anchors per FPN level, in the order of the model's outputs: level by level, row by row, column by
// column, then aspect ratio by scale (ratio-major, as torchvision's AnchorGenerator). Not rounded.
struct AnchorOptions {
  std::vector<int> strides{8, 16, 32, 64, 128};
  std::vector<float> sizes{32, 64, 128, 256, 512};  // base size per level
  std::vector<float> aspect_ratios{0.5f, 1.f, 2.f};  // height / width
  std::vector<float> scales{1.f, 1.2599210f, 1.5874011f};
  float center_offset = 0.f;  // anchor centre at (x + offset) · stride

  std::size_t anchors_per_location() const { return aspect_ratios.size() * scales.size(); }
};

// All anchors for an input of this size (its sides must be multiples of every stride), and how many
// belong to each level.
std::vector<Box> generate_anchors(const AnchorOptions& options, cv::Size input_size, std::vector<std::size_t>* per_level = nullptr);

// "anchor" entry keys: the AnchorOptions and AnchorDecoderOptions fields by name, and for the suppression
// nms_iou_threshold (0.5), iou_alpha (0.5: with the IoU branch, IouAwareNms ranks by
// class^(1 - alpha) · iou^alpha; otherwise class-aware hard NMS) and max_detections (3000).
struct AnchorDecoderOptions {
  AnchorOptions anchors;
  std::size_t num_classes = 0;
  std::array<float, 4> box_means{0, 0, 0, 0};  // delta = raw · std + mean
  std::array<float, 4> box_stds{1, 1, 1, 1};
  float score_threshold = 0.05f;
  std::size_t pre_nms_top_k = 1000;  // per level
  bool iou_branch = false;           // a third output with IoU logits
};

// RetinaNet-style outputs per image: class logits [A, C], box deltas [A, 4] (dx, dy, dw, dh relative to
// the anchor, dw and dh clamped at log(1000/16)), optionally IoU logits [A] or [A, 1]. Scores are
// sigmoids, every class above the threshold is a candidate (the top pre_nms_top_k per level); with the
// IoU branch each candidate carries its predicted IoU.
class AnchorDecoder final : public OutputDecoder {
 public:
  AnchorDecoder(AnchorDecoderOptions options, cv::Size input_size);
  std::vector<Detection> decode(const std::vector<TensorView>& outputs) const override;
  const std::vector<Box>& anchors() const { return anchors_; }

 private:
  AnchorDecoderOptions options_;
  std::vector<Box> anchors_;
  std::vector<std::size_t> per_level_;
};

}  // namespace bloodcv
