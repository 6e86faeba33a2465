"""Label assigners: hand-computed cases, plain-PyTorch references on random inputs, degenerate inputs."""
import math

import numpy as np
import pytest
import torch

from bloodcv import assign as A
from bloodcv.assign import BACKGROUND, IGNORE


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def ref_iou(a, b):
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def random_scene(rng, n_anchors=300, n_gt=6, extent=200.0):
    xy = torch.from_numpy(rng.uniform(0, extent, (n_anchors, 2))).float()
    wh = torch.from_numpy(rng.uniform(8, 40, (n_anchors, 2))).float()
    anchors = torch.cat([xy, xy + wh], 1)
    gxy = torch.from_numpy(rng.uniform(0, extent - 40, (n_gt, 2))).float()
    gwh = torch.from_numpy(rng.uniform(10, 40, (n_gt, 2))).float()
    gt = torch.cat([gxy, gxy + gwh], 1)
    labels = torch.from_numpy(rng.integers(0, 3, n_gt))
    return anchors, gt, labels


# --- max IoU ----------------------------------------------------------------------------------------
def test_max_iou_hand_computed():
    anchors = boxes([0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [100, 100, 110, 110], [0, 0, 10, 22], [200, 200, 210, 210])
    gt = boxes([0, 0, 10, 10], [21, 21, 31, 31], [200, 200, 204, 204])
    r = A.MaxIoUAssigner().assign(anchors, gt, torch.tensor([3, 1, 2]))
    # IoUs: 1 | 1/3 (background) | 81/119 | 0 | 100/220 (ignored) | 16/100 (kept by the tiny box as its best)
    assert r.gt_index.tolist() == [0, BACKGROUND, 1, BACKGROUND, IGNORE, 2]
    assert r.labels.tolist() == [3, -1, 1, -1, -1, 2]
    np.testing.assert_allclose(r.overlaps, [1, 1 / 3, 81 / 119, 0, 100 / 220, 0.16], rtol=1e-5)
    r = A.MaxIoUAssigner(match_low_quality=False).assign(anchors, gt, torch.tensor([3, 1, 2]))
    assert r.gt_index[5] == BACKGROUND


def reference_max_iou(anchors, gt, pos=0.5, neg=0.4):
    iou = ref_iou(gt, anchors)
    best, arg = iou.max(0)
    out = torch.full((anchors.shape[0],), IGNORE)
    out[best < neg] = BACKGROUND
    out[best >= pos] = arg[best >= pos]
    gt_best = iou.max(1).values
    for g in range(gt.shape[0]):
        if gt_best[g] > 0:
            out[iou[g] == gt_best[g]] = g
    return out


@pytest.mark.parametrize("seed", range(5))
def test_max_iou_matches_reference(seed):
    anchors, gt, labels = random_scene(np.random.default_rng(seed))
    assert torch.equal(A.MaxIoUAssigner().assign(anchors, gt, labels).gt_index, reference_max_iou(anchors, gt))


# --- ATSS -------------------------------------------------------------------------------------------
def test_atss_hand_computed():
    # One level of four 10x10 anchors in a row (centres x 5, 15, 25, 35); the box covers the first two.
    anchors = boxes([0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10])
    gt = boxes([0, 0, 20, 10])
    r = A.AtssAssigner(top_k=2).assign(anchors, gt, torch.tensor([0]))
    assert r.gt_index.tolist() == [0, 0, BACKGROUND, BACKGROUND]  # IoUs 0.5, 0.5: threshold 0.5 + 0
    # k = 3 adds an anchor of IoU 0: threshold 1/3 + std(0.5, 0.5, 0) = 0.622 > 0.5, nobody qualifies
    assert A.AtssAssigner(top_k=3).assign(anchors, gt, torch.tensor([0])).gt_index.tolist() == [BACKGROUND] * 4
    # two levels: top_k applies per level, so the second level's anchor is a candidate too
    anchors2 = torch.cat([anchors, boxes([0, 0, 20, 10])])
    r = A.AtssAssigner(top_k=2).assign(anchors2, gt, torch.tensor([0]), anchors_per_level=[4, 1])
    # candidates IoU 0.5, 0.5, 1 → threshold 2/3 + 0.289 = 0.955: only the exact anchor
    assert r.gt_index.tolist() == [BACKGROUND] * 4 + [0]


def reference_atss(anchors, gt, levels, k=9):
    iou = ref_iou(gt, anchors)
    ac = (anchors[:, :2] + anchors[:, 2:]) / 2
    gc = (gt[:, :2] + gt[:, 2:]) / 2
    dist = torch.cdist(gc, ac)
    out = torch.full((anchors.shape[0],), BACKGROUND)
    best = torch.full((anchors.shape[0],), -1.0)
    for g in range(gt.shape[0]):
        cand, start = [], 0
        for n in levels:
            cand += (dist[g, start:start + n].topk(min(k, n), largest=False).indices + start).tolist()
            start += n
        ious = iou[g, cand]
        thr = ious.mean() + ious.std()
        for a, v in zip(cand, ious.tolist()):
            cx, cy = ac[a].tolist()
            inside = min(cx - gt[g, 0], cy - gt[g, 1], gt[g, 2] - cx, gt[g, 3] - cy) > 0.01
            if v >= thr and inside and v > best[a]:
                best[a], out[a] = v, g
    return out


@pytest.mark.parametrize("seed", range(5))
def test_atss_matches_reference(seed):
    anchors, gt, labels = random_scene(np.random.default_rng(seed), n_anchors=400)
    levels = [250, 100, 50]
    got = A.AtssAssigner().assign(anchors, gt, labels, anchors_per_level=levels).gt_index
    assert torch.equal(got, reference_atss(anchors, gt, levels))
    assert (got >= 0).any()


# --- PAA --------------------------------------------------------------------------------------------
def test_gmm_matches_scikit_learn():
    from sklearn.mixture import GaussianMixture
    rng = np.random.default_rng(0)
    for _ in range(10):
        x = np.concatenate([rng.normal(0.2, 0.05, 12), rng.normal(0.7, 0.1, 8)])
        ours = A.fit_gmm_1d(x, means=(x.min(), x.max()))
        sk = GaussianMixture(2, weights_init=[0.5, 0.5], means_init=[[x.min()], [x.max()]],
                             precisions_init=[[[1.0]], [[1.0]]], tol=1e-3, max_iter=100).fit(x[:, None])
        np.testing.assert_allclose(ours["means"], sk.means_.ravel(), rtol=1e-6)
        np.testing.assert_allclose(ours["weights"], sk.weights_, rtol=1e-6)
        np.testing.assert_allclose(ours["variances"], sk.covariances_.ravel(), rtol=1e-6)
        assert ours["iterations"] == sk.n_iter_


def test_paa_splits_high_from_low_scores():
    # Eight anchors on the box, all candidates (IoU >= 0.1); their class probabilities form two clusters.
    gt = boxes([0, 0, 40, 40])
    anchors = torch.stack([torch.tensor([i * 2.0, 0, 40 + i * 2.0, 40]) for i in range(8)])
    probs = torch.tensor([0.92, 0.88, 0.9, 0.12, 0.1, 0.15, 0.11, 0.86])
    scores = torch.stack([probs, 1 - probs], 1)  # class 0 is the box's class
    r = A.PaaAssigner(top_k=9).assign(anchors, gt, torch.tensor([0]), pred_boxes=gt.repeat(8, 1), pred_scores=scores)
    assert r.gt_index.tolist() == [0, 0, 0, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND, 0]
    assert (r.weights[r.gt_index == 0] > 0.5).all() and (r.weights[r.gt_index < 0] == 0).all()
    with pytest.raises(ValueError, match="pred_boxes"):
        A.PaaAssigner().assign(anchors, gt, torch.tensor([0]))


# --- optimal transport ------------------------------------------------------------------------------
def reference_sinkhorn(cost, supply, demand, eps, iterations):
    f = torch.zeros_like(supply)
    g = torch.zeros_like(demand)
    for _ in range(iterations):
        f = supply.log() - torch.logsumexp(-cost / eps + g[None, :], 1)
        g = demand.log() - torch.logsumexp(-cost / eps + f[:, None], 0)
    return torch.exp(-cost / eps + f[:, None] + g[None, :])


def test_sinkhorn_matches_reference_and_marginals():
    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(31, 400, generator=gen, dtype=torch.float64) * 5
    supply = torch.cat([torch.full((30,), 5.0), torch.tensor([250.0])]).double()
    demand = torch.ones(400, dtype=torch.float64)
    plan = A.sinkhorn(cost, supply, demand, epsilon=0.1, iterations=300)
    torch.testing.assert_close(plan, reference_sinkhorn(cost, supply, demand, 0.1, 300))
    torch.testing.assert_close(plan.sum(0), demand, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(plan.sum(1), supply, rtol=1e-3, atol=1e-3)


def test_sinkhorn_survives_extreme_costs():
    cost = torch.tensor([[0.0, 1e6, 1e6], [1e6, 0.0, 1e6], [5.0, 5.0, 0.0]], dtype=torch.float64)
    plan = A.sinkhorn(cost, torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), epsilon=0.1, iterations=50)
    assert torch.isfinite(plan).all()
    torch.testing.assert_close(plan, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)


def test_ota_hand_computed():
    # Two boxes far apart; anchors on each and one in between; the predictions are the anchors themselves
    # and confident of the right class near each box.
    gt = boxes([0, 0, 40, 40], [100, 0, 140, 40])
    anchors = boxes([2, 2, 38, 38], [4, 0, 40, 36], [102, 2, 138, 38], [100, 4, 136, 40], [60, 0, 80, 20])
    scores = torch.tensor([[0.9, 0.05], [0.8, 0.1], [0.05, 0.9], [0.1, 0.85], [0.05, 0.05]])
    r = A.OtaAssigner().assign(anchors, gt, torch.tensor([0, 1]), pred_boxes=anchors, pred_scores=scores)
    # Each box's predicted IoUs sum to 0.81 + 0.81: k = 1, so each box takes its cheapest anchor (the more
    # confident one) and the rest go to the background.
    assert r.gt_index.tolist() == [0, BACKGROUND, 1, BACKGROUND, BACKGROUND]
    assert r.labels.tolist() == [0, -1, 1, -1, -1]
    assert ((r.weights > 0.5) == (r.gt_index >= 0)).all()
    # Predictions that fit better (IoUs 0.9 + 0.9 + 0.9 → k = 2) give each box two anchors.
    anchors3 = torch.cat([anchors[:2], boxes([0, 0, 38, 38]), anchors[2:4], boxes([100, 0, 138, 38]), anchors[4:]])
    pred3 = torch.cat([gt[:1].repeat(3, 1) * torch.tensor([1.0, 1, 0.975, 0.975])[None] + torch.tensor([[1.0, 0, 0, 0]]),
                       gt[1:].repeat(3, 1) + torch.tensor([[1.0, 0, 0, 0]]), anchors[4:]])
    scores3 = torch.tensor([[0.9, 0.05], [0.8, 0.1], [0.7, 0.1], [0.05, 0.9], [0.1, 0.85], [0.1, 0.7], [0.05, 0.05]])
    r = A.OtaAssigner().assign(anchors3, gt, torch.tensor([0, 1]), pred_boxes=pred3, pred_scores=scores3)
    assert r.gt_index.tolist() == [0, 0, BACKGROUND, 1, 1, BACKGROUND, BACKGROUND]


@pytest.mark.parametrize("seed", range(3))
def test_ota_on_many_anchors_is_finite_and_consistent(seed):
    rng = np.random.default_rng(seed)
    anchors, gt, labels = random_scene(rng, n_anchors=3000, n_gt=40, extent=400)
    pred = anchors + torch.from_numpy(rng.normal(0, 2, anchors.shape)).float()
    pred = torch.cat([torch.min(pred[:, :2], pred[:, 2:]), torch.max(pred[:, :2], pred[:, 2:])], 1)
    scores = torch.from_numpy(rng.uniform(0, 1, (3000, 3))).float()
    r = A.OtaAssigner().assign(anchors, gt, labels, pred_boxes=pred, pred_scores=scores)
    assert torch.isfinite(r.overlaps).all() and torch.isfinite(r.weights).all()
    positive = r.gt_index >= 0
    assert positive.any()
    # positives lie inside their box (the centre prior) and carry its label
    centres = (anchors[positive, :2] + anchors[positive, 2:]) / 2
    own = gt[r.gt_index[positive]]
    assert ((centres >= own[:, :2]) & (centres <= own[:, 2:])).all()
    assert torch.equal(r.labels[positive], labels[r.gt_index[positive]])


# --- degenerate inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("assigner", [A.MaxIoUAssigner(), A.AtssAssigner(), A.PaaAssigner(), A.OtaAssigner()])
def test_degenerate_inputs_give_defined_results(assigner):
    anchors = boxes([0, 0, 10, 10], [-50, -50, -20, -20], [5, 5, 25, 25])  # one outside the image
    scores = torch.full((3, 2), 0.5)  # all costs equal
    kw = dict(pred_boxes=anchors.clone(), pred_scores=scores)
    empty = assigner.assign(anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), **kw)
    assert empty.gt_index.tolist() == [BACKGROUND] * 3 and torch.isfinite(empty.overlaps).all()
    one = assigner.assign(anchors[:1], boxes([0, 0, 10, 10]), torch.tensor([1]), pred_boxes=anchors[:1].clone(),
                          pred_scores=scores[:1])
    # one anchor on its box: every strategy takes it (OTA: the box supplies at least one unit and the background
    # none; PAA: a lone candidate is positive), with full weight
    assert one.gt_index.tolist() == [0] and one.labels.tolist() == [1] and one.weights.tolist() == [1.0]
    res = assigner.assign(anchors, boxes([0, 0, 10, 10], [-50, -50, -20, -20]), torch.tensor([0, 1]), **kw)
    assert res.num_gts == 2
    for t in (res.gt_index, res.overlaps, res.labels, res.weights):
        assert torch.isfinite(t.float()).all()


def test_bad_inputs_raise_value_errors():
    a = boxes([0, 0, 10, 10])
    with pytest.raises(ValueError, match="gt_boxes must have shape"):
        A.MaxIoUAssigner().assign(a, torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        A.MaxIoUAssigner().assign(boxes([0, 0, float("nan"), 1]), a, torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"anchors_per_level sums to more than the 1 anchors \(a count of 5\)"):
        A.AtssAssigner().assign(a, a, torch.zeros(1, dtype=torch.long), anchors_per_level=[5])
    with pytest.raises(ValueError, match="neg_iou_threshold"):
        A.MaxIoUAssigner(pos_iou_threshold=0.3, neg_iou_threshold=0.4).assign(a, a, torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="probabilities"):
        A.OtaAssigner().assign(a, a, torch.zeros(1, dtype=torch.long), pred_boxes=a, pred_scores=torch.full((1, 2), 2.0))
    with pytest.raises(ValueError, match="unknown assigner"):
        A.make_assigner("hungarian")


def test_batch_and_by_name():
    anchors, gt, labels = random_scene(np.random.default_rng(1))
    results = A.make_assigner("max_iou").assign_batch(anchors, [gt, gt[:2]], [labels, labels[:2]])
    assert len(results) == 2 and results[1].gt_index.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here")
def test_cuda_tensors_stay_on_cuda():
    anchors, gt, labels = random_scene(np.random.default_rng(0))
    r = A.AtssAssigner().assign(anchors.cuda(), gt.cuda(), labels.cuda())
    assert r.gt_index.is_cuda
    assert torch.equal(r.gt_index.cpu(), A.AtssAssigner().assign(anchors, gt, labels).gt_index)


@pytest.mark.parametrize("strategy", ["max_iou", "atss", "paa", "ota"])
def test_training_step_example_runs(strategy):
    import subprocess
    import sys
    from pathlib import Path
    example = Path(__file__).resolve().parents[2] / "examples" / "training_step.py"
    result = subprocess.run([sys.executable, str(example), strategy], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{strategy}: ") and "positives" in result.stdout


def test_every_strategy_takes_the_same_keywords_and_refuses_misspelt_ones():
    anchors = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    gt, labels = torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([2])
    scores = torch.full((2, 3), 0.5)
    for assigner in (A.MaxIoUAssigner(), A.AtssAssigner(top_k=1), A.PaaAssigner(top_k=1), A.OtaAssigner()):
        r = assigner.assign(anchors, gt, labels, pred_boxes=anchors.clone(), pred_scores=scores, anchors_per_level=[2])
        assert r.num_gts == 1 and r.gt_index[0] == 0, type(assigner).__name__
        with pytest.raises(TypeError, match="pred_box"):
            assigner.assign(anchors, gt, labels, pred_box=anchors)


def test_paa_ignore_band_ignores_scores_between_the_component_means():
    """The thesis' three-way split, hand-computed: high cluster 0.92 0.88 0.95 0.85 (mean 0.9), low 0.13 0.10 0.16
    0.11 (mean 0.125); predicted boxes on the box, so the scores are the class probabilities."""
    gt = torch.tensor([[0.0, 0, 40, 40]])
    anchors = torch.tensor([[i * 2.0, 0, 40 + i * 2.0, 40] for i in range(8)])
    p = torch.tensor([0.92, 0.88, 0.95, 0.13, 0.10, 0.16, 0.11, 0.85])
    scores = torch.stack([p, 1 - p], 1)
    band = A.PaaAssigner(ignore_band=True).assign(anchors, gt, torch.tensor([0]), pred_boxes=gt.repeat(8, 1), pred_scores=scores)
    assert band.gt_index.tolist() == [0, A.IGNORE, 0, A.IGNORE, A.BACKGROUND, A.IGNORE, A.BACKGROUND, A.IGNORE]
    assert band.labels.tolist() == [0, -1, 0, -1, -1, -1, -1, -1]
    plain = A.PaaAssigner().assign(anchors, gt, torch.tensor([0]), pred_boxes=gt.repeat(8, 1), pred_scores=scores)
    assert plain.gt_index.tolist() == [0, 0, 0, A.BACKGROUND, A.BACKGROUND, A.BACKGROUND, A.BACKGROUND, 0]
    assert A.make_assigner("paa", ignore_band=True).args[-1] is True
