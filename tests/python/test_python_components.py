"""Detectors and classifiers written in Python: every documented output form works, and malformed outputs
are refused with a message saying what is wrong, instead of being counted."""
import numpy as np
import pytest
import torch

import bloodcv

from conftest import smear, xyxy

CELL = (150, 120, 70, 40)  # one red cell (x, y, w, h) of a 500 x 300 smear


def red_boxes(image):
    ys, xs = np.nonzero((image[..., 2] > 230) & (image[..., 0] < 20))
    if not len(xs):
        return np.zeros((0, 4), np.float32)
    return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)


class FormDetector(bloodcv.Detector):
    """Finds the red cell and returns it in one of the documented forms."""

    def __init__(self, form, labels=("WBC", "RBC"), with_labels=True, with_ious=False, tile=None):
        super().__init__()
        self.form, self.names, self.with_labels, self.with_ious, self.tile = form, list(labels), with_labels, with_ious, tile

    def detect(self, images):
        out = []
        for im in images:
            boxes = red_boxes(im)
            scores = np.full(len(boxes), 0.9, np.float32)
            labels = np.zeros(len(boxes), np.int64)
            if self.form == "dict":
                item = {"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores)}
                if self.with_labels:
                    item["labels"] = labels
                if self.with_ious:
                    item["predicted_ious"] = np.full(len(boxes), 0.8, np.float32)
            else:
                item = (boxes, scores, labels) if self.with_labels else (boxes, scores)
            out.append(item)
        return out

    def labels(self):
        return self.names

    def input_size(self):
        return (200, 200)

    def tile_size(self):
        return self.tile or self.input_size()


class FixedClassifier(bloodcv.Classifier):
    def __init__(self, probabilities, names=("lymphocyte", "neutrophil")):
        super().__init__()
        self.probabilities, self.names = probabilities, list(names)

    def classify(self, image, boxes):
        return self.probabilities(len(boxes))

    def labels(self):
        return self.names


def analyze(detector, classifier=None):
    return bloodcv.Pipeline(detector, classifier, tiler=bloodcv.GridTiler(tile_size=(200, 200), overlap=0.3)).analyze(
        smear(500, 300, red=[CELL]))


@pytest.mark.parametrize("form, with_ious", [("dict", False), ("dict", True), ("tuple", False)])  # IoUs: dict only
def test_every_documented_detector_form_gives_the_cell(form, with_ious):
    result = analyze(FormDetector(form, with_ious=with_ious))
    np.testing.assert_array_equal(result.arrays()["boxes"], [xyxy(*CELL)])
    assert result.counts == {"WBC": 1, "RBC": 0}


@pytest.mark.parametrize("form", ["dict", "tuple"])
def test_labels_may_be_left_out_only_by_a_one_label_detector(form):
    result = analyze(FormDetector(form, labels=["WBC"], with_labels=False))
    assert result.counts == {"WBC": 1}
    with pytest.raises(ValueError, match="no labels, but the detector has 2 labels"):
        analyze(FormDetector(form, with_labels=False))


def test_predicted_ious_of_a_python_detector_reach_the_report():
    (out,) = FormDetector("dict", with_ious=True).detect([smear(300, 200, red=[(10, 10, 30, 30)])])
    assert "predicted_ious" in out
    report = analyze(FormDetector("dict", with_ious=True)).to_json()
    assert '"predicted_iou": 0.8' in report


def test_a_python_detectors_tile_size_sets_the_default_tiles():
    image = smear(500, 300, red=[CELL])
    assert bloodcv.Pipeline(FormDetector("dict")).analyze(image).tiles == 6          # 200-pixel tiles, its input size
    assert bloodcv.Pipeline(FormDetector("dict", tile=(400, 300))).analyze(image).tiles == 2


@pytest.mark.parametrize("returned, message", [
    (lambda n: np.full((n, 3), 1 / 3, np.float32), r"shape \(1, 2\).*got \(1, 3\)"),
    (lambda n: np.full((n, 2), 5.0, np.float32), r"not in \[0, 1\]"),
    (lambda n: np.full((n, 2), 0.2, np.float32), "sum to 0.4"),
    (lambda n: {"probs": np.full((n, 2), 0.5, np.float32)}, 'without "probabilities"'),
    (lambda n: np.zeros((n, 0), np.float32), r"got \(1, 0\)"),
    (lambda n: np.full((n, 2), np.nan, np.float32), r"not in \[0, 1\]"),
])
def test_malformed_classifier_outputs_are_refused(returned, message):
    with pytest.raises(ValueError, match=message):
        analyze(FormDetector("dict"), FixedClassifier(returned))


def test_classifier_dict_and_array_forms_agree():
    array = analyze(FormDetector("dict"), FixedClassifier(lambda n: np.tile([[0.25, 0.75]], (n, 1)).astype(np.float32)))
    mapping = analyze(FormDetector("dict"), FixedClassifier(lambda n: {"probabilities": torch.tensor([[0.25, 0.75]] * n)}))
    assert array.type_counts == mapping.type_counts == {"lymphocyte": 0, "neutrophil": 1}
    np.testing.assert_allclose(array.arrays()["type_probabilities"], [[0.25, 0.75]])


@pytest.mark.parametrize("returned, message", [
    (lambda images: [], "returned 0 results for 1 images"),
    (lambda images: {"boxes": []}, "one result per image"),
    (lambda images: [{"scores": np.zeros(0, np.float32)}], 'without "boxes"'),
    (lambda images: [(np.zeros((1, 4), np.float32) + [0, 0, 5, 5], np.ones(1, np.float32), np.array([7]))], "label 7 is outside"),
    (lambda images: [(np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros(1), np.zeros(1))], "got 4 items"),
])
def test_malformed_detector_outputs_are_refused(returned, message):
    class Broken(FormDetector):
        def detect(self, images):
            return returned(images)

    with pytest.raises((ValueError, TypeError), match=message):
        bloodcv.Pipeline(Broken("dict")).analyze(smear(100, 100))


def test_detect_takes_a_list_of_images_not_one_array(models):
    detector = bloodcv.TorchScriptDetector(models["marker_yolo"])
    image = smear(256, 256, red=[(30, 40, 50, 60)])
    with pytest.raises(ValueError, match=r"list of images, got one array of shape \(256, 256, 3\)"):
        detector.detect(image)
    assert len(detector.detect([image])) == 1


def test_classify_answers_in_the_kind_of_boxes_given(models):
    classifier = bloodcv.TorchScriptClassifier(models["color_classifier"])
    image = np.zeros((100, 100, 3), np.uint8)
    image[10:30, 10:30] = (0, 0, 255)
    boxes = [[10, 10, 30, 30]]
    as_numpy = classifier.classify(image, np.array(boxes, np.float32))
    as_torch = classifier.classify(image, torch.tensor(boxes))
    assert isinstance(as_numpy["probabilities"], np.ndarray)
    assert all(isinstance(v, torch.Tensor) for v in as_torch.values())
    np.testing.assert_allclose(as_torch["probabilities"].numpy(), as_numpy["probabilities"])
    assert classifier.labels()[int(as_torch["labels"][0])] == "red"


@pytest.mark.parametrize("box, index", [([[10, 10, 30, 30], [200, 200, 220, 220]], 1), ([[5, 5, 5, 20]], 0),
                                        ([[-30, 10, -5, 30]], 0)])
def test_classifier_refuses_boxes_with_no_area_in_the_image(models, box, index):
    classifier = bloodcv.TorchScriptClassifier(models["color_classifier"])
    with pytest.raises(ValueError, match=rf"boxes\[{index}\].*no area inside the 100x100 image"):
        classifier.classify(np.zeros((100, 100, 3), np.uint8), np.array(box, np.float32))


def test_classifier_crop_of_a_huge_box_is_clipped_to_the_image(models):
    classifier = bloodcv.TorchScriptClassifier(models["color_classifier"])
    image = np.zeros((300, 400, 3), np.uint8)
    image[:] = (0, 0, 255)
    whole = classifier.classify(image, np.array([[0, 0, 400, 300]], np.float32))
    huge = classifier.classify(image, np.array([[0, 0, 1e5, 1e5]], np.float32))  # was a 58.8 GB crop
    np.testing.assert_allclose(huge["probabilities"], whole["probabilities"], rtol=1e-6)


def test_overlay_needs_the_analysed_image(models):
    pipeline = bloodcv.Pipeline(bloodcv.TorchScriptDetector(models["marker_yolo"]))
    image = smear(300, 200, red=[(10, 10, 40, 40)])
    result = pipeline.analyze(image)
    assert result.overlay(image).shape == image.shape
    with pytest.raises(ValueError, match="the image is 200x300, but the result is of a 300x200 image"):
        result.overlay(np.zeros((300, 200, 3), np.uint8))


def test_float_images_must_be_in_unit_range(models):
    pipeline = bloodcv.Pipeline(bloodcv.TorchScriptDetector(models["marker_yolo"]))
    image = smear(256, 256, red=[(30, 40, 50, 60)])
    as_unit = pipeline.analyze(image.astype(np.float32) / 255)
    assert as_unit.counts["WBC"] == 1
    with pytest.raises(ValueError, match=r"values in \[0, 255\].*divide 0-255 data by 255"):
        pipeline.analyze(image.astype(np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        pipeline.analyze(np.full((20, 20, 3), np.nan, np.float32))


def test_thresholds_are_checked_as_arguments(models, tmp_path):
    with pytest.raises(ValueError, match=r"score_threshold must be in \[0, 1\], got 2"):
        bloodcv.TorchScriptDetector(models["marker_yolo"], score_threshold=2)
    with pytest.raises(ValueError, match="nms_iou_threshold"):
        bloodcv.TorchScriptDetector(models["marker_yolo"], nms_iou_threshold=-0.1)


def test_classify_labels_must_be_detector_labels(models):
    detector = bloodcv.TorchScriptDetector(models["marker_yolo"])
    classifier = bloodcv.TorchScriptClassifier(models["color_classifier"])
    with pytest.raises(ValueError, match=r"'Foo' is not one of the detector's labels \(WBC, RBC\)"):
        bloodcv.Pipeline(detector, classifier, classify_labels=["Foo"])
    assert bloodcv.Pipeline(detector, classifier, classify_labels=["RBC"]) is not None


def test_analyze_none_is_a_type_error(models):
    with pytest.raises(TypeError, match="got None"):
        bloodcv.Pipeline(bloodcv.TorchScriptDetector(models["marker_yolo"])).analyze(None)


class FixedBoxes(bloodcv.Detector):
    def __init__(self, boxes):
        super().__init__()
        self.boxes = np.array(boxes, np.float32)

    def detect(self, images):
        return [{"boxes": self.boxes, "scores": np.full(len(self.boxes), 0.9, np.float32)} for _ in images]

    def labels(self):
        return ["WBC"]

    def input_size(self):
        return (640, 480)


def label_rows(overlay, top, bottom, left=0):
    """How many pixels of rows [top, bottom) from column `left` on are drawn (not black)."""
    return int((overlay[top:bottom, left:].max(axis=2) > 0).sum())


def test_overlay_labels_stay_inside_the_image_and_apart():
    import cv2
    (tw, th), baseline = cv2.getTextSize("WBC 0.90", cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    width, height = tw + 2, th + baseline + 2  # a label's filled rectangle
    image = np.zeros((480, 640, 3), np.uint8)
    # At the right edge: the label is moved left to fit whole, above the box.
    edge = bloodcv.Pipeline(FixedBoxes([[620, 100, 639, 160]])).analyze(image)
    overlay = edge.overlay(image)
    assert label_rows(overlay, 100 - height, 100) == width * height
    # Two almost equal boxes: the second label goes below its box instead of over the first.
    pair = bloodcv.Pipeline(FixedBoxes([[100, 200, 160, 260], [102, 202, 162, 262]])).analyze(image)
    overlay = pair.overlay(image)
    assert label_rows(overlay, 200 - height, 200) == width * height
    assert label_rows(overlay, 263, 262 + height) >= (width - 4) * (height - 1)


class EveryPiece(bloodcv.TileMerger):
    """Merges nothing: every tile's piece of a cell, shifted into the image."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def merge(self, tiles, boxes, scores, labels, image_size):
        self.calls += 1
        shifted = [b + np.array([t.x, t.y, t.x, t.y], np.float32) for t, b in zip(tiles, boxes)]
        return {"boxes": np.concatenate(shifted), "scores": np.concatenate(scores), "labels": np.concatenate(labels)}


def test_a_python_tile_merger_replaces_seam_merging():
    image = smear(500, 300, red=[CELL])  # cut by the seams of 200-pixel tiles at 30 % overlap
    tiler = bloodcv.GridTiler(tile_size=(200, 200), overlap=0.3)
    seam = bloodcv.Pipeline(FormDetector("dict"), tiler=tiler).analyze(image)
    merger = EveryPiece()
    pieces = bloodcv.Pipeline(FormDetector("dict"), tiler=tiler, merger=merger).analyze(image)
    assert merger.calls == 1
    assert len(seam) == 1 and len(pieces) > 1  # the pieces the seam merger joins
    boxes = pieces.arrays()["boxes"]
    np.testing.assert_array_equal(boxes.min(0)[:2], xyxy(*CELL)[:2])
    np.testing.assert_array_equal(boxes.max(0)[2:], xyxy(*CELL)[2:])


def test_mergers_by_name_and_as_suppressors_agree():
    image = smear(500, 300, red=[CELL])
    tiler = bloodcv.GridTiler(tile_size=(200, 200), overlap=0.3)

    def run(merger):
        return bloodcv.Pipeline(FormDetector("dict"), tiler=tiler, merger=merger).analyze(image).arrays()["boxes"]

    np.testing.assert_array_equal(run(bloodcv.make_merger("nmm")), run(bloodcv.NonMaxMerge()))
    np.testing.assert_array_equal(run(bloodcv.make_merger("seam")), run(None))
    np.testing.assert_array_equal(run(bloodcv.SeamMerger(match_threshold=0.5)), [xyxy(*CELL)])
    with pytest.raises(ValueError, match="seam, nmm, nms, wbf or soft-nms"):
        bloodcv.make_merger("average")
    with pytest.raises(TypeError, match="merger must be None, a TileMerger or a Suppressor"):
        run("nmm")


class Halves(bloodcv.Tiler):
    """Two tiles: the left and the right half, overlapping by 40 pixels."""

    def plan(self, image_size):
        w, h = image_size
        return [bloodcv.Tile(0, 0, w // 2 + 20, h), bloodcv.Tile(w // 2 - 20, 0, w - (w // 2 - 20), h)]


class KeepAll(bloodcv.Suppressor):
    """Keeps every box, best first: merging by it leaves every piece."""

    def suppress(self, boxes, scores, labels, predicted_ious):
        order = np.argsort(-scores, kind="stable")
        return order, boxes[order], scores[order]


def test_a_python_tiler_plans_and_bloodcv_cuts():
    image = smear(500, 300, red=[(230, 120, 40, 40)])  # across the middle: in both halves
    result = bloodcv.Pipeline(FormDetector("dict"), tiler=Halves()).analyze(image)
    assert result.tiles == 2
    np.testing.assert_array_equal(result.arrays()["boxes"], [xyxy(230, 120, 40, 40)])  # seam-merged once

    class Outside(bloodcv.Tiler):
        def plan(self, image_size):
            return [bloodcv.Tile(0, 0, image_size[0] + 10, 10)]

    with pytest.raises(ValueError, match=r"not inside the 500x300 image"):
        bloodcv.Pipeline(FormDetector("dict"), tiler=Outside()).analyze(image)


def test_a_python_suppressor_is_a_strategy_like_the_others():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    keep, out_boxes, out_scores = KeepAll()(boxes, scores)
    assert keep.tolist() == [1, 2, 0] and out_scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    image = smear(500, 300, red=[(230, 120, 40, 40)])
    pieces = bloodcv.Pipeline(FormDetector("dict"), tiler=Halves(), merger=KeepAll()).analyze(image)
    assert len(pieces) == 2  # pooled and all kept: both halves' pieces

    class Broken(bloodcv.Suppressor):
        def suppress(self, boxes, scores, labels, predicted_ious):
            return np.array([7]), boxes[:1], scores[:1]

    with pytest.raises(ValueError, match="kept index 7 of 3 boxes"):
        Broken()(boxes, scores)


class CornerDecoder(bloodcv.OutputDecoder):
    """The model outputs one row per image, (x1, y1, x2, y2, score): a single candidate."""

    def decode(self, outputs):
        (row,) = outputs
        return {"boxes": row[None, :4], "scores": row[4:5], "labels": np.zeros(1, np.int64)}


def test_a_decoder_written_in_python_decodes_a_model_files_outputs(tmp_path):
    import json as jsonlib

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[16.0, 32.0, 48.0, 64.0, 0.9]]).expand(x.shape[0], 5)

    seen = {}

    def factory(entry, num_classes, input_size):
        seen.update(entry=entry, num_classes=num_classes, input_size=input_size)
        return CornerDecoder(), bloodcv.HardNms(iou_threshold=entry["nms"])

    bloodcv.register_decoder("corner_row", factory)
    assert "corner_row" in bloodcv.decoder_kinds()
    meta = {"format": "bloodcv-model", "version": 1, "task": "detection", "name": "corner", "labels": ["cell"],
            "input_size": [128, 128], "input": {"resize": "stretch"}, "decoder": {"kind": "corner_row", "nms": 0.5}}
    path = tmp_path / "corner.pt"
    torch.jit.save(torch.jit.trace(Fixed(), torch.zeros(1, 3, 128, 128)), str(path),
                   _extra_files={"bloodcv.json": jsonlib.dumps(meta)})
    detector = bloodcv.TorchScriptDetector(str(path))
    assert seen == {"entry": {"kind": "corner_row", "nms": 0.5}, "num_classes": 1, "input_size": (128, 128)}
    (out,) = detector.detect([np.zeros((256, 256, 3), np.uint8)])  # stretched by 2: boxes map back × 2
    np.testing.assert_allclose(out["boxes"], [[32, 64, 96, 128]])
    np.testing.assert_allclose(out["scores"], [0.9])
