"""The classifier recipe's metric losses against hand-computed values."""
import pytest
import torch

from bloodcv.models.metric_loss import center_triplet_loss, contrastive_loss, metric_loss


def test_center_triplet_loss_by_hand():
    # Class 0 at x = 0 and 4 (centre 2), class 1 at x = 5 and 7 (centre 6).
    f = torch.tensor([[0.0, 0.0], [4.0, 0.0], [5.0, 0.0], [7.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    # class 0: farthest member 2 from its centre, nearest non-member |5 - 2| = 3 -> max(0, 2 + m - 3)
    # class 1: farthest member 1, nearest non-member |4 - 6| = 2                  -> max(0, 1 + m - 2)
    assert center_triplet_loss(f, y, 1.5).item() == pytest.approx((0.5 + 0.5) / 2)
    assert center_triplet_loss(f, y, 0.5).item() == pytest.approx(0.0)
    assert center_triplet_loss(f, y, 1.2).item() == pytest.approx((0.2 + 0.2) / 2)


def test_center_triplet_loss_mines_the_hardest_pairs_and_has_gradients():
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0], [9.0, 0.0], [3.0, 0.0], [10.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1])
    # class 0: centre 10/3, farthest member |9 - 10/3| = 17/3, nearest non-member |3 - 10/3| = 1/3
    # class 1: centre 6.5, farthest member 3.5, nearest non-member |9 - 6.5| = 2.5
    expected = ((17 / 3 + 1 - 1 / 3) + (3.5 + 1 - 2.5)) / 2
    loss = center_triplet_loss(f, y, 1.0)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert f.grad.abs().sum() > 0


def test_center_triplet_loss_of_one_class_is_zero():
    f = torch.randn(4, 3, requires_grad=True)
    loss = center_triplet_loss(f, torch.zeros(4, dtype=torch.long), 0.3)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph


def test_contrastive_loss_by_hand():
    # Unit vectors: a and b same label at 60° (cos 0.5), c different label, cos(a, c) = 0.8, cos(b, c) = cos(60° - 36.87°).
    import math
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([math.cos(math.pi / 3), math.sin(math.pi / 3)])
    c = torch.tensor([0.8, 0.6])
    f = torch.stack([a, b, c]) * torch.tensor([[2.0], [3.0], [0.5]])  # scale does not matter
    y = torch.tensor([0, 0, 1])
    cos_bc = float(b @ c)
    margin = 0.4
    pairs = [0, 1 - 0.5, max(0.8 - margin, 0),
             1 - 0.5, 0, max(cos_bc - margin, 0),
             max(0.8 - margin, 0), max(cos_bc - margin, 0), 0]
    assert contrastive_loss(f, y, margin).item() == pytest.approx(sum(pairs) / 9, abs=1e-6)


def test_metric_loss_weighs_and_normalises():
    f = torch.tensor([[0.0, 1.0], [0.0, 5.0], [1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    spec = {"kind": "center_triplet", "weight": 0.5, "margin": 0.3}
    normalised = torch.nn.functional.normalize(f, dim=1)
    assert metric_loss(spec, f, y).item() == pytest.approx(0.5 * center_triplet_loss(normalised, y, 0.3).item())
    with pytest.raises(ValueError, match="unknown metric loss 'arcface'"):
        metric_loss({"kind": "arcface", "weight": 1.0, "margin": 0.1}, f, y)
