"""Small TorchScript models with known outputs, for testing decoders, tiling and the pipeline exactly.

    python tests/models/make_test_models.py OUT_DIR

- marker_yolo.pt (yolov5 decoder, input 256x256, labels WBC, RBC): finds the bounding box of all pure-red
  pixels (label WBC) and of all pure-blue pixels (label RBC) in its input, objectness 1 where found.
  A square cut by a tile seam is reported as its visible part, so tiling and merging are checked exactly.
  marker_yolo_tile512.pt: the same, saying it was trained on 512-pixel fields (tile_size).
- fixed_anchor.pt (anchor decoder with IoU branch, input 64x64 stretch, labels a, b): constant outputs
  that decode to one known box (see FIXED_ANCHOR_* below).
- color_classifier.pt (classification, input 32x32, labels red, green, blue): logits = 10 x mean of
  each colour channel of the crop.
  color_classifier_stain.pt: the same, carrying a Reinhard stain target it recommends ("stain");
  color_classifier_calibrated.pt: the same, with temperature 2 and uncertain_below 0.9 ("calibration").
- broken models: wrong output width, NaN output, no metadata, not TorchScript at all, a classifier
  file given to a detector, a classifier whose stain target lacks its "std", one whose calibration
  temperature is negative; detectors whose bloodcv.json is malformed (metadata_*.pt): written as raw text,
  past export_model's checks, among them the fuzzers' reproducers (tests/fuzz/regressions/).
"""
import json
import math
import sys
from pathlib import Path

import torch

from bloodcv.export import check_metadata, export_model

MARKER_SIZE = 256
FIXED_ANCHOR_INPUT = 64
# Level 0 (stride 16, size 16, centre offset 0.5): location x=2, y=1 is anchor 1*4 + 2 = 6, centred at
# (40, 24). Deltas (0.5, 0, ln 2, 0) move its centre to (48, 24) and double its width: box (32, 16, 64, 32)
# in input pixels. Class logit 2 for label "b", IoU logit 0: score sqrt(sigmoid(2) * 0.5).
FIXED_ANCHOR_INDEX = 6
FIXED_ANCHOR_BOX = (32.0, 16.0, 64.0, 32.0)
FIXED_ANCHOR_SCORE = math.sqrt(1 / (1 + math.exp(-2.0)) * 0.5)


def _bbox(mask):
    """[B, H, W] bool -> (x1, y1, x2, y2, found) per image, in pixel-edge coordinates."""
    b, h, w = mask.shape
    cols = mask.any(dim=1).float()
    rows = mask.any(dim=2).float()
    x1 = torch.argmax(cols, dim=1).float()
    x2 = w - torch.argmax(torch.flip(cols, dims=[1]), dim=1).float()
    y1 = torch.argmax(rows, dim=1).float()
    y2 = h - torch.argmax(torch.flip(rows, dims=[1]), dim=1).float()
    found = cols.amax(dim=1)
    return x1, y1, x2, y2, found


class MarkerYolo(torch.nn.Module):
    def forward(self, x):
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        rows = []
        for c, mask in enumerate([(r > 0.9) & (g < 0.1) & (b < 0.1), (b > 0.9) & (r < 0.1) & (g < 0.1)]):
            x1, y1, x2, y2, found = _bbox(mask)
            onehot = torch.zeros(x.shape[0], 2)
            onehot[:, c] = 1.0
            rows.append(torch.cat([torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, found], 1), onehot], 1))
        return torch.stack(rows, 1)  # [B, 2, 7]


class Constant(torch.nn.Module):
    """Returns fixed tensors, each repeated over the batch."""

    def __init__(self, *outputs):
        super().__init__()
        for i, t in enumerate(outputs):
            self.register_buffer(f"out{i}", t)
        self.count = len(outputs)

    def forward(self, x):
        outs = [getattr(self, f"out{i}").unsqueeze(0).expand(x.shape[0], *getattr(self, f"out{i}").shape)
                for i in range(self.count)]
        return outs[0] if self.count == 1 else tuple(outs)


class MeanColour(torch.nn.Module):
    def forward(self, x):
        return 10.0 * x.mean(dim=(2, 3))


def fixed_anchor_outputs():
    anchors = 16 + 4  # 4x4 at stride 16, 2x2 at stride 32, one shape each
    logits = torch.full((anchors, 2), -10.0)
    logits[FIXED_ANCHOR_INDEX, 1] = 2.0
    deltas = torch.zeros(anchors, 4)
    deltas[FIXED_ANCHOR_INDEX] = torch.tensor([0.5, 0.0, math.log(2.0), 0.0])
    ious = torch.zeros(anchors)
    return logits, deltas, ious


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    yolo_meta = {"task": "detection", "name": "marker-yolo", "labels": ["WBC", "RBC"],
                 "input_size": [MARKER_SIZE, MARKER_SIZE],
                 "input": {"color": "rgb", "scale": 1 / 255, "resize": "letterbox", "pad_value": 114},
                 "decoder": {"kind": "yolov5", "score_threshold": 0.25, "nms_iou_threshold": 0.45}}
    example = torch.rand(2, 3, MARKER_SIZE, MARKER_SIZE)
    export_model(MarkerYolo(), out / "marker_yolo.pt", yolo_meta, example)
    export_model(MarkerYolo(), out / "marker_yolo_tile512.pt", {**yolo_meta, "tile_size": [512, 512]}, example)

    anchor_meta = {"task": "detection", "name": "fixed-anchor", "labels": ["a", "b"],
                   "input_size": [FIXED_ANCHOR_INPUT, FIXED_ANCHOR_INPUT],
                   "input": {"resize": "stretch", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                   "decoder": {"kind": "anchor", "strides": [16, 32], "sizes": [16, 32], "aspect_ratios": [1.0],
                               "scales": [1.0], "center_offset": 0.5, "score_threshold": 0.05,
                               "nms_iou_threshold": 0.5, "iou_branch": True, "iou_alpha": 0.5}}
    small = torch.rand(1, 3, FIXED_ANCHOR_INPUT, FIXED_ANCHOR_INPUT)
    export_model(Constant(*fixed_anchor_outputs()), out / "fixed_anchor.pt", anchor_meta, small)

    classifier_meta = {"task": "classification", "name": "colour", "labels": ["red", "green", "blue"],
                       "input_size": [32, 32], "crop_padding": 0.1}
    export_model(MeanColour(), out / "color_classifier.pt", classifier_meta, torch.rand(2, 3, 32, 32))
    stain = {"default": "reinhard", "reinhard": {"mean": [60.0, 10.0, -10.0], "std": [20.0, 10.0, 10.0]}}
    export_model(MeanColour(), out / "color_classifier_stain.pt", {**classifier_meta, "stain": stain}, torch.rand(2, 3, 32, 32))
    calibration = {"temperature": 2.0, "uncertain_below": 0.9}
    export_model(MeanColour(), out / "color_classifier_calibrated.pt", {**classifier_meta, "calibration": calibration},
                 torch.rand(2, 3, 32, 32))

    # Broken on purpose.
    export_model(Constant(torch.zeros(3, 6)), out / "wrong_width.pt", yolo_meta, example)  # 6 != 5 + 2
    nan = torch.zeros(2, 7)
    nan[0, 0] = float("nan")
    torch.jit.save(torch.jit.trace(Constant(nan), example), str(out / "nan_output.pt"),
                   _extra_files={"bloodcv.json": json.dumps(check_metadata(yolo_meta))})
    torch.jit.save(torch.jit.trace(MarkerYolo(), example), str(out / "no_metadata.pt"))
    bad_calibration = {**classifier_meta, "calibration": {"temperature": -1.0}}
    torch.jit.save(torch.jit.trace(MeanColour(), torch.rand(2, 3, 32, 32)), str(out / "bad_calibration_classifier.pt"),
                   _extra_files={"bloodcv.json": json.dumps(check_metadata(bad_calibration))})
    bad_stain = {**classifier_meta, "stain": {"reinhard": {"mean": [60.0, 10.0, -10.0]}}}
    torch.jit.save(torch.jit.trace(MeanColour(), torch.rand(2, 3, 32, 32)), str(out / "bad_stain_classifier.pt"),
                   _extra_files={"bloodcv.json": json.dumps(check_metadata(bad_stain))})
    (out / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a TorchScript archive")
    traced = torch.jit.trace(MarkerYolo(), example)
    for name, text in malformed_detector_metadata(yolo_meta).items():
        torch.jit.save(traced, str(out / f"metadata_{name}.pt"), _extra_files={"bloodcv.json": text})
    return out


def malformed_detector_metadata(good):
    """bloodcv.json texts a detector must refuse at load, by the name of their model file."""
    good = check_metadata(good)
    regressions = Path(__file__).resolve().parents[1] / "fuzz" / "regressions" / "fuzz_model_metadata"
    without_labels = {k: v for k, v in good.items() if k != "labels"}
    return {
        "not_json": "{\"format\": \"bloodcv-model\", ",
        "not_object": "[1, 2, 3]",
        "no_labels": json.dumps(without_labels),
        "labels_string": json.dumps({**good, "labels": "WBC"}),
        "input_size_text": json.dumps({**good, "input_size": "256x256"}),
        "input_size_1e30": (regressions / "input_size_1e30.json").read_text(),
        "tile_size_1e30": json.dumps({**good, "tile_size": [1e30, 512]}),
        "deep_decoder_entry": (regressions / "deep_decoder_entry.json").read_text(),
        "unknown_decoder": json.dumps({**good, "decoder": {"kind": "ssd"}}),
        "mpp_negative": json.dumps({**good, "microns_per_pixel": -0.1}),
        # contradictory: an IoU branch on a decoder kind that has none, a colour order that is neither
        "iou_branch_on_yolo": json.dumps({**good, "decoder": {**good["decoder"], "iou_branch": True}}),
        "color_hsv": json.dumps({**good, "input": {**good["input"], "color": "hsv"}}),
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(f"wrote test models to {main(sys.argv[1])}")
