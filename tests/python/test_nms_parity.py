"""bloodcv.nms / batched_nms return what torchvision.ops returns: the same indices in the same order."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import bloodcv
from conftest import random_boxes


def untied_scores(rng, n):
    # A permutation of distinct values: torchvision's order for equal scores is unspecified.
    return torch.from_numpy((rng.permutation(n) + 1).astype(np.float32) / n)


@pytest.mark.parametrize("layout", ["spread", "clustered", "dense"])
def test_nms_matches_torchvision_on_random_cases(rng, layout):
    extent = {"spread": 2000.0, "clustered": 150.0, "dense": 30.0}[layout]
    for case in range(1000):
        n = int(rng.integers(0, 300))
        boxes = torch.from_numpy(random_boxes(rng, n, extent))
        scores = untied_scores(rng, n)
        threshold = float(rng.choice([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0, rng.uniform()]))
        expected = torchvision.ops.nms(boxes, scores, threshold)
        got = bloodcv.nms(boxes, scores, threshold)
        assert got.dtype == torch.int64
        assert torch.equal(got, expected), (case, n, threshold)


@pytest.mark.parametrize("n_max", [300, 3000])  # torchvision switches algorithm above 1000 boxes on CPU
def test_batched_nms_matches_torchvision_on_random_cases(rng, n_max):
    for case in range(1000 if n_max == 300 else 40):
        n = int(rng.integers(0, n_max))
        boxes = torch.from_numpy(random_boxes(rng, n, float(rng.choice([100.0, 1000.0]))))
        scores = untied_scores(rng, n)
        labels = torch.from_numpy(rng.integers(0, 4, size=n))
        threshold = float(rng.uniform())
        expected = torchvision.ops.batched_nms(boxes, scores, labels, threshold)
        got = bloodcv.batched_nms(boxes, scores, labels, threshold)
        assert torch.equal(got, expected), (case, n, threshold)


def test_nms_parity_at_the_threshold_itself():
    # IoU exactly equal to the threshold is not suppressed (strictly greater suppresses), in both.
    boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=torch.float32)  # IoU 1/3 in float
    scores = torch.tensor([0.9, 0.8])
    for threshold in [1 / 3, float(np.float32(1 / 3)), np.nextafter(1 / 3, 0), np.nextafter(1 / 3, 1)]:
        assert torch.equal(bloodcv.nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


def test_equal_scores_rank_by_index():
    boxes = torch.tensor([[0, 0, 10, 10]] * 4 + [[50, 50, 60, 60]] * 2, dtype=torch.float32)
    scores = torch.full((6,), 0.5)
    assert bloodcv.nms(boxes, scores, 0.5).tolist() == [0, 4]


def test_numpy_in_numpy_out(rng):
    boxes = random_boxes(rng, 200)
    scores = rng.uniform(size=200).astype(np.float32)
    keep = bloodcv.nms(boxes, scores, 0.5)
    assert isinstance(keep, np.ndarray) and keep.dtype == np.int64
    assert keep.tolist() == torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).tolist()
    # float64 and lists are accepted too (converted once)
    assert bloodcv.nms(boxes.astype(np.float64), scores.tolist(), 0.5).tolist() == keep.tolist()
