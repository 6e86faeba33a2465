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


def test_torch_tensors_go_through_the_torchscript_operators(rng):
    boxes = torch.from_numpy(random_boxes(rng, 300, 300.0))
    scores = untied_scores(rng, 300)
    labels = torch.from_numpy(rng.integers(0, 3, size=300))
    expected = torchvision.ops.batched_nms(boxes, scores, labels, 0.4)

    @torch.jit.script
    def scripted(b: torch.Tensor, s: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        return torch.ops.bloodcv.batched_nms(b, s, l, 0.4)

    assert torch.equal(scripted(boxes, scores, labels), expected)
    # any floating dtype: float64 and float16 boxes give float32's answer (float16 rounds to its own grid)
    assert torch.equal(bloodcv.batched_nms(boxes.double(), scores.double(), labels, 0.4), expected)
    half = boxes.half()
    assert torch.equal(bloodcv.nms(half, scores.half(), 0.4), torchvision.ops.nms(half.float(), scores.half().float(), 0.4))


def test_tensors_off_the_cpu_or_not_floating_are_refused_not_copied():
    boxes = torch.zeros(2, 4, device="meta")
    with pytest.raises(ValueError, match="boxes is on meta.*call .cpu"):
        bloodcv.nms(boxes, torch.zeros(2, device="meta"), 0.5)
    with pytest.raises(ValueError, match="boxes must be a floating tensor"):
        bloodcv.nms(torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="idxs must be an integer tensor"):
        bloodcv.batched_nms(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="scores has 3 entries but boxes has 2"):
        bloodcv.nms(torch.tensor([[0.0, 0, 1, 1], [2, 2, 3, 3]]), torch.zeros(3), 0.5)
