"""Bad input raises ValueError naming the argument and the value; empty input gives empty output."""
import numpy as np
import pytest

import bloodcv

BOX = np.array([[0, 0, 1, 1]], np.float32)
ONE = np.array([0.5], np.float32)


def test_empty_inputs_give_empty_outputs():
    empty = np.zeros((0, 4), np.float32)
    assert bloodcv.nms(empty, np.zeros(0, np.float32), 0.5).shape == (0,)
    assert bloodcv.box_iou(empty, BOX).shape == (0, 1)
    for strategy in [bloodcv.HardNms(), bloodcv.SoftNms(), bloodcv.WeightedBoxFusion(), bloodcv.NonMaxMerge(),
                     bloodcv.IouAwareNms()]:
        res = strategy(empty, np.zeros(0, np.float32))
        assert res.keep.shape == (0,) and res.boxes.shape == (0, 4)


@pytest.mark.parametrize("call, message", [
    (lambda: bloodcv.nms(np.array([[0, 0, np.nan, 1]], np.float32), ONE, 0.5), r"boxes\[0\].*finite"),
    (lambda: bloodcv.nms(np.array([[0, 0, np.inf, 1]], np.float32), ONE, 0.5), r"boxes\[0\]"),
    (lambda: bloodcv.nms(np.array([[2, 0, 1, 1]], np.float32), ONE, 0.5), "x2 >= x1"),
    (lambda: bloodcv.nms(BOX, np.array([0.5, 0.4], np.float32), 0.5), "scores has 2 entries but boxes has 1"),
    (lambda: bloodcv.nms(BOX, np.array([np.nan], np.float32), 0.5), r"scores\[0\] is nan: scores must be finite"),
    (lambda: bloodcv.nms(BOX, ONE, 1.5), "iou_threshold must be in \\[0, 1\\], got 1.5"),
    (lambda: bloodcv.nms(BOX, ONE, -0.1), "iou_threshold"),
    (lambda: bloodcv.nms(np.zeros((3, 5), np.float32), ONE, 0.5), r"boxes must have shape \(N, 4\), got \(3, 5\)"),
    (lambda: bloodcv.batched_nms(BOX, ONE, np.array([0, 1]), 0.5), "labels has 2"),
    (lambda: bloodcv.HardNms(max_detections=-3), "max_detections.*-3"),
    (lambda: bloodcv.HardNms(metric="dice"), "metric"),
    (lambda: bloodcv.SoftNms(method="cubic"), "method"),
    (lambda: bloodcv.SoftNms(sigma=0), "sigma"),
    (lambda: bloodcv.WeightedBoxFusion(num_models=0), "num_models"),
    (lambda: bloodcv.NonMaxMerge(match_threshold=2), "match_threshold"),
    (lambda: bloodcv.IouAwareNms()(BOX, ONE), "predicted_ious"),
    (lambda: bloodcv.IouAwareNms()(BOX, ONE, predicted_ious=np.array([1.5], np.float32)), r"predicted_ious\[0\]"),
    (lambda: bloodcv.box_convert(BOX, "xyxy", "yxyx"), "format"),
])
def test_errors_name_argument_and_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()
