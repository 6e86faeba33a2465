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


def _matched(found, reference, iou):
    """The share of reference's boxes that found has too, with the same label and IoU >= iou."""
    torchvision = pytest.importorskip("torchvision")
    import torch
    overlap = torchvision.ops.box_iou(torch.from_numpy(reference["boxes"]), torch.from_numpy(found["boxes"])).numpy()
    overlap[reference["labels"][:, None] != found["labels"][None, :]] = 0
    return (overlap.max(1) >= iou).mean()


def test_a_bfloat16_detector_finds_the_cells_of_the_float32_one():
    image = cv2.imread(str(SMEAR))
    (exact,) = bloodcv.TorchScriptDetector(f"{MODELS}/cell_detector.pt").detect([image])
    (bf16,) = bloodcv.TorchScriptDetector(f"{MODELS}/cell_detector.pt", precision="bfloat16").detect([image])
    assert len(exact["boxes"]) > 20
    assert abs(len(bf16["boxes"]) - len(exact["boxes"])) <= 0.05 * len(exact["boxes"])
    # bfloat16 keeps 8 bits of mantissa: box corners move by a pixel or two, not more
    assert _matched(bf16, exact, 0.8) >= 0.95
    wbc = exact["labels"] == 0
    assert wbc.any() and _matched(bf16, {k: v[wbc] for k, v in exact.items()}, 0.9) == 1.0
    assert bf16["boxes"].dtype == np.float32


def test_a_bfloat16_classifier_types_the_cell_as_the_float32_one():
    image = cv2.imread(str(SMEAR))
    box = np.array([[72.4, 303.0, 285.0, 480.0]], np.float32)
    exact = bloodcv.TorchScriptClassifier(f"{MODELS}/wbc_classifier.pt").classify(image, box)
    bf16 = bloodcv.TorchScriptClassifier(f"{MODELS}/wbc_classifier.pt", precision="bfloat16").classify(image, box)
    assert bf16["labels"][0] == exact["labels"][0]
    assert np.allclose(bf16["probabilities"], exact["probabilities"], atol=0.05)


@pytest.mark.parametrize("precision, message", [("float16", "precision float16 needs a CUDA device, got 'cpu'"),
                                                ("int8", "precision must be float32, float16 or bfloat16, got 'int8'"),
                                                ("", "precision must be float32, float16 or bfloat16, got ''")])
def test_a_precision_the_device_cannot_run_is_refused(precision, message):
    with pytest.raises(ValueError, match=message):
        bloodcv.TorchScriptDetector(f"{MODELS}/cell_detector.pt", precision=precision)

