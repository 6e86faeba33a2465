import math

import numpy as np
import pytest

import bloodcv
from conftest import random_boxes

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def test_overlap_matrices_match_torchvision(rng):
    a = torch.from_numpy(random_boxes(rng, 50, 200))
    b = torch.from_numpy(random_boxes(rng, 40, 200))
    torch.testing.assert_close(bloodcv.box_iou(a, b), torchvision.ops.box_iou(a, b))
    torch.testing.assert_close(bloodcv.generalized_box_iou(a, b), torchvision.ops.generalized_box_iou(a, b))
    torch.testing.assert_close(bloodcv.distance_box_iou(a, b), torchvision.ops.distance_box_iou(a, b),
                               rtol=1e-5, atol=1e-5)


def test_ios_and_aligned_forms():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [2, 2, 4, 4]], np.float32)
    np.testing.assert_allclose(bloodcv.box_ios(a, b, aligned=True), [0.5, 1.0])
    np.testing.assert_allclose(bloodcv.box_iou(a, b, aligned=True), [1 / 3, 0.04], rtol=1e-6)
    assert bloodcv.box_iou(a, b).shape == (2, 2)
    with pytest.raises(ValueError, match="same length"):
        bloodcv.box_iou(a, b[:1], aligned=True)


def test_box_convert_matches_torchvision(rng):
    boxes = torch.from_numpy(random_boxes(rng, 30))
    for fmt in ["xywh", "cxcywh"]:
        converted = bloodcv.box_convert(boxes, "xyxy", fmt)
        torch.testing.assert_close(converted, torchvision.ops.box_convert(boxes, "xyxy", fmt))
        torch.testing.assert_close(bloodcv.box_convert(converted, fmt, "xyxy"), boxes)


def test_clip_boxes_to_image_matches_torchvision():
    boxes = torch.tensor([[-5.0, 10, 700, 500], [10, 10, 20, 20]])
    torch.testing.assert_close(bloodcv.clip_boxes_to_image(boxes, (480, 640)),
                               torchvision.ops.clip_boxes_to_image(boxes, (480, 640)))


def test_tensors_on_input_are_read_in_place():
    # The numpy view of a contiguous float32 CPU tensor shares its memory: no copy on the way in.
    from bloodcv._arrays import to_numpy
    t = torch.rand(10, 4)
    assert to_numpy(t, np.float32, "t").ctypes.data == t.data_ptr()


def test_soft_nms_hand_computed():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    overlap = 90 / 110
    res = bloodcv.SoftNms(method="linear")(boxes, scores)
    assert res.keep.tolist() == [0, 2, 1]
    np.testing.assert_allclose(res.scores, [0.9, 0.7, 0.8 * (1 - overlap)], rtol=1e-6)
    res = bloodcv.SoftNms(method="gaussian", sigma=0.5)(boxes, scores)
    np.testing.assert_allclose(res.scores[2], 0.8 * math.exp(-overlap ** 2 / 0.5), rtol=1e-6)


def test_weighted_box_fusion_hand_computed():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [40, 40, 50, 50]], np.float32)
    scores = np.array([0.9, 0.6, 0.3], np.float32)
    res = bloodcv.WeightedBoxFusion()(boxes, scores)
    assert res.keep.tolist() == [0, 2]
    np.testing.assert_allclose(res.boxes[0], [0.4, 0, 10.4, 10], rtol=1e-6)
    np.testing.assert_allclose(res.scores, [0.75, 0.3], rtol=1e-6)


def test_iou_aware_and_merging():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.float32)
    res = bloodcv.IouAwareNms(alpha=0.5)(boxes, np.array([0.9, 0.8], np.float32),
                                         predicted_ious=np.array([0.25, 1.0], np.float32))
    assert res.keep.tolist() == [1]
    np.testing.assert_allclose(res.scores, [math.sqrt(0.8)], rtol=1e-6)
    res = bloodcv.NonMaxMerge(match_threshold=0.5, metric="ios")(
        np.array([[0, 0, 10, 10], [6, 0, 12, 10]], np.float32), np.array([0.9, 0.5], np.float32))
    assert res.keep.tolist() == [0]
    np.testing.assert_allclose(res.boxes, [[0, 0, 12, 10]])


def test_suppressors_return_tensors_for_tensors():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8])
    for strategy in [bloodcv.HardNms(), bloodcv.SoftNms(), bloodcv.WeightedBoxFusion(), bloodcv.NonMaxMerge()]:
        res = strategy(boxes, scores, labels=torch.tensor([0, 0]))
        assert isinstance(res.keep, torch.Tensor) and res.keep.dtype == torch.int64
        assert isinstance(res.boxes, torch.Tensor) and res.boxes.shape[1] == 4
        assert res.keep[0].item() == 0
