"""Calibrated classifiers and honest uncertainty: temperature scaling from the model file, cells below the
threshold typed 'uncertain' and counted apart, the differential without them (and saying so), and each
cell's top-3 types and entropy in the reports."""
import csv
import io
import json
import math

import numpy as np
import pytest

import bloodcv
from conftest import xyxy

RED, MAGENTA = (20, 20, 40, 40), (100, 20, 40, 40)  # (x, y, w, h)


class FixedBoxes(bloodcv.Detector):
    def __init__(self, *cells):
        super().__init__()
        self.boxes = np.array([xyxy(*c) for c in cells], np.float32).reshape(-1, 4)

    def detect(self, images):
        return [{"boxes": self.boxes, "scores": np.linspace(0.9, 0.8, len(self.boxes)).astype(np.float32)} for _ in images]

    def labels(self):
        return ["WBC"]

    def input_size(self):
        return (200, 100)


def field():
    image = np.full((100, 200, 3), (0, 0, 0), np.uint8)
    x, y, w, h = RED
    image[y - 4:y + h + 4, x - 4:x + w + 4] = (0, 0, 255)   # red, context included
    x, y, w, h = MAGENTA
    image[y - 4:y + h + 4, x - 4:x + w + 4] = (255, 0, 255)  # as red as it is blue
    return image


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_the_model_files_temperature_scales_the_logits(models):
    plain = bloodcv.TorchScriptClassifier(models["color_classifier"])
    calibrated = bloodcv.TorchScriptClassifier(models["color_classifier_calibrated"])
    assert plain.temperature == 1 and calibrated.temperature == 2
    assert plain.uncertainty_threshold() == 0 and calibrated.uncertainty_threshold() == pytest.approx(0.9)
    boxes = np.array([xyxy(*RED), xyxy(*MAGENTA)], np.float32)
    p = plain.classify(field(), boxes)["probabilities"]
    q = calibrated.classify(field(), boxes)["probabilities"]
    np.testing.assert_allclose(q, softmax(np.log(p) / 2), rtol=1e-5)  # softmax(logits / T)


def test_malformed_calibration_is_refused_at_load(models):
    with pytest.raises(RuntimeError, match=r"bad_calibration_classifier.pt.*calibration.temperature must be positive, got -1"):
        bloodcv.TorchScriptClassifier(models["bad_calibration_classifier"])


def test_uncertain_cells_are_counted_apart_and_left_out_of_the_differential(models):
    classifier = bloodcv.TorchScriptClassifier(models["color_classifier_calibrated"])
    result = bloodcv.Pipeline(FixedBoxes(RED, MAGENTA), classifier).analyze(field())
    assert result.type_counts == {"red": 1, "green": 0, "blue": 0, "uncertain": 1}
    assert result.differential == {"red": 100.0, "green": 0.0, "blue": 0.0}
    assert result.differential_cells == 1
    assert result.differential_note == "1 uncertain cell(s) left out of the differential of 1"
    arrays = result.arrays()
    assert arrays["uncertain"].tolist() == [False, True]
    assert classifier.labels()[arrays["types"][1]] in ("red", "blue")  # its best guess is kept

    report = json.loads(result.to_json())
    certain, unsure = report["cells"]
    assert certain["type"] == "red" and not certain["uncertain"]
    assert unsure["type"] == "uncertain" and unsure["uncertain"]
    assert [t["type"] for t in unsure["type_top3"]][:2] in (["red", "blue"], ["blue", "red"])
    probabilities = [t["probability"] for t in unsure["type_top3"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert unsure["type_entropy"] == pytest.approx(-sum(p * math.log(p) for p in unsure["type_probabilities"].values()), rel=1e-5)
    assert report["differential_cells"] == 1 and "uncertain" in report["differential_note"]

    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert rows[1]["type"] == "uncertain" and rows[1]["top1"] in ("red", "blue")
    assert float(rows[1]["top1_p"]) < 0.9 and float(rows[1]["type_entropy"]) > 0.5

    overlay = result.overlay(field())
    x, y, w, h = MAGENTA
    assert tuple(overlay[y + h // 2, x]) == (128, 128, 128)  # the uncertain cell's box is grey


def test_the_threshold_can_be_set_per_pipeline(models):
    classifier = bloodcv.TorchScriptClassifier(models["color_classifier_calibrated"])
    trusting = bloodcv.Pipeline(FixedBoxes(RED, MAGENTA), classifier, uncertain_below=0).analyze(field())
    assert "uncertain" not in trusting.type_counts and trusting.differential_cells == 2
    with pytest.raises(ValueError, match=r"uncertain_below must be in \[0, 1\]"):
        bloodcv.Pipeline(FixedBoxes(RED), classifier, uncertain_below=1.5)


def test_a_python_classifier_may_give_its_own_threshold():
    class Unsure(bloodcv.Classifier):
        def classify(self, image, boxes):
            return np.tile([[0.6, 0.4]], (len(boxes), 1)).astype(np.float32)

        def labels(self):
            return ["lymphocyte", "neutrophil"]

        def uncertainty_threshold(self):
            return 0.7

    result = bloodcv.Pipeline(FixedBoxes(RED), Unsure()).analyze(field())
    assert result.type_counts["uncertain"] == 1 and result.differential == {}
    assert result.differential_note == "all 1 classified cells are uncertain: the differential is empty"


def test_no_white_cell_gives_an_empty_differential_with_the_reason(models):
    classifier = bloodcv.TorchScriptClassifier(models["color_classifier"])
    result = bloodcv.Pipeline(FixedBoxes(), classifier).analyze(field())
    assert result.differential == {} and result.differential_cells == 0
    assert result.differential_note == "no cells were classified: the differential is empty"
    assert json.loads(result.to_json())["differential_percent"] == {}
