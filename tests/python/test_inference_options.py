"""Inference options: the model frozen and optimised at load gives the detections of the model as it is;
threads are checked."""
import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

import bloodcv  # noqa: E402
from web_helpers import SMEAR  # noqa: E402

MODELS = bloodcv.default_model_dir()


@pytest.mark.parametrize("name", ["cell_detector", "retinanet_pan_iou"])
def test_an_optimised_detector_finds_what_the_plain_one_finds(name):
    image = cv2.imread(str(SMEAR))
    fast = bloodcv.TorchScriptDetector(f"{MODELS}/{name}.pt")
    plain = bloodcv.TorchScriptDetector(f"{MODELS}/{name}.pt", optimize=False)
    assert fast.optimized() and not plain.optimized()
    (a,), (b,) = fast.detect([image]), plain.detect([image])
    assert len(a["boxes"]) == len(b["boxes"]) > 0
    assert np.allclose(a["boxes"], b["boxes"], atol=0.05) and np.allclose(a["scores"], b["scores"], atol=1e-4)
    assert (a["labels"] == b["labels"]).all()


def test_an_optimised_classifier_types_as_the_plain_one():
    image = cv2.imread(str(SMEAR))
    box = np.array([[72.4, 303.0, 285.0, 480.0]], np.float32)
    fast = bloodcv.TorchScriptClassifier(f"{MODELS}/wbc_classifier.pt")
    plain = bloodcv.TorchScriptClassifier(f"{MODELS}/wbc_classifier.pt", optimize=False)
    assert fast.optimized()
    assert np.allclose(fast.classify(image, box)["probabilities"], plain.classify(image, box)["probabilities"], atol=1e-4)


def test_threads_must_not_be_negative():
    with pytest.raises(ValueError, match="threads must be >= 0"):
        bloodcv.TorchScriptDetector(f"{MODELS}/cell_detector.pt", threads=-1)
