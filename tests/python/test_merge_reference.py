"""Weighted boxes fusion and non-max merging against independent references written here in numpy from
their definitions (Solovyev et al. 2021; SAHI's greedy NMM and its connected-components variant), on random
boxes with labels: kept indices, output boxes and scores must agree."""
import numpy as np
import pytest

import bloodcv
from conftest import random_boxes


def overlap(a, b, metric):
    """IoU or IoS (intersection over the smaller area) of box a with each row of b. In float32, as bloodcv
    and torchvision compute overlaps: an overlap of exactly 0.55 is 0.55000001 there, above a threshold of
    0.55 (a pooled merge of the bundled sample has such a pair)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = w * h
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    denominator = np.minimum(area_a, area_b) if metric == "ios" else area_a + area_b - inter
    return np.where(denominator > 0, inter / np.where(denominator > 0, denominator, 1), np.float32(0))


def rank(scores, min_score=-np.inf):
    """Indices by decreasing score, lower index first among equals, dropping scores below min_score."""
    return [i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)) if scores[i] >= min_score]


def wbf_reference(boxes, scores, labels, iou_threshold=0.55, skip_box_threshold=0.0, num_models=1):
    """Each box, best first, joins the cluster of its label whose fused box it overlaps most (IoU above the
    threshold; the earlier cluster on a tie) or founds one. A fused box is the score-weighted mean of its
    members; its score the mean member score times min(members, num_models) / num_models."""
    boxes, scores = boxes.astype(np.float64), scores.astype(np.float64)
    clusters = []  # dicts: founder, members
    for i in rank(scores, skip_box_threshold):
        best, best_iou = None, iou_threshold
        for c, cluster in enumerate(clusters):
            if labels[cluster["founder"]] != labels[i]:
                continue
            v = overlap(cluster["fused"], boxes[i:i + 1], "iou")[0]
            if v > best_iou:
                best, best_iou = c, v
        if best is None:
            clusters.append({"founder": i, "members": []})
            best = len(clusters) - 1
        cluster = clusters[best]
        cluster["members"].append(i)
        weights = scores[cluster["members"]]
        cluster["fused"] = (weights[:, None] * boxes[cluster["members"]]).sum(0) / weights.sum()
    fused_scores = [scores[c["members"]].mean() * min(len(c["members"]), num_models) / num_models for c in clusters]
    # Ranked as the float32 scores they are reported as: sums equal in float32 tie, and the earlier cluster wins.
    order = sorted(range(len(clusters)), key=lambda c: (-np.float32(fused_scores[c]), c))
    return (np.array([clusters[c]["founder"] for c in order], np.int64), np.array([clusters[c]["fused"] for c in order]),
            np.array([fused_scores[c] for c in order]))


def nmm_reference(boxes, scores, labels, match_threshold=0.5, metric="ios", greedy=True):
    """Groups of boxes of one label that match (overlap above the threshold), each merged into the enclosing
    box of its members with its top-ranked member's score. Greedy: hard NMS in rank order, each suppressed
    box joining the first kept box that matches it. Full: connected components of the match relation."""
    boxes = boxes.astype(np.float64)
    order = rank(scores)
    n = len(scores)
    matches = [[j for j in range(n) if j != i and labels[j] == labels[i]
                and overlap(boxes[i], boxes[j:j + 1], metric)[0] > match_threshold] for i in range(n)]
    leader = {}
    if greedy:
        for i in order:
            if i in leader:
                continue
            leader[i] = i
            for j in order:
                if j not in leader and j in matches[i]:
                    leader[j] = i
    else:
        for i in order:  # a breadth-first walk from each top-ranked box not yet reached
            if i in leader:
                continue
            frontier = [i]
            leader[i] = i
            while frontier:
                k = frontier.pop()
                for j in matches[k]:
                    if j not in leader:
                        leader[j] = i
                        frontier.append(j)
    leaders = [i for i in order if leader[i] == i]
    merged = [np.concatenate([boxes[[j for j in range(n) if leader[j] == i], :2].min(0),
                              boxes[[j for j in range(n) if leader[j] == i], 2:].max(0)]) for i in leaders]
    return np.array(leaders, np.int64), np.array(merged), scores[leaders]


def random_case(seed, objects):
    """Detections as a detector makes them: a few jittered boxes per object, mostly of its label, with tied
    scores, among objects that crowd each other (overlaps across objects and chains too)."""
    rng = np.random.default_rng(seed)
    centres = random_boxes(rng, objects, extent=300.0, max_side=60.0)
    boxes, labels = [], []
    for box, label in zip(centres, rng.integers(0, 3, objects)):
        for _ in range(rng.integers(1, 6)):
            jitter = rng.normal(0, 3, 4)
            x1, y1 = box[:2] + jitter[:2]
            boxes.append([x1, y1, max(box[2] + jitter[2], x1 + 1), max(box[3] + jitter[3], y1 + 1)])
            labels.append(label if rng.random() < 0.9 else (label + 1) % 3)
    scores = rng.choice(np.linspace(0.05, 1.0, 20), len(boxes)).astype(np.float32)  # ties on purpose
    return np.array(boxes, np.float32), scores, np.array(labels)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("options", [dict(), dict(iou_threshold=0.3), dict(skip_box_threshold=0.4, num_models=3)])
def test_weighted_box_fusion_matches_the_reference(seed, options):
    boxes, scores, labels = random_case(seed, 40)
    keep, fused, fused_scores = wbf_reference(boxes, scores, labels, **options)
    got = bloodcv.WeightedBoxFusion(**options)(boxes, scores, labels=labels)
    np.testing.assert_array_equal(got.keep, keep)
    np.testing.assert_allclose(got.boxes, fused, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(got.scores, fused_scores, rtol=1e-5)
    assert len(keep) < len(boxes)  # the case merges something


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("metric, threshold", [("ios", 0.5), ("iou", 0.3)])
def test_non_max_merge_matches_the_reference(seed, greedy, metric, threshold):
    boxes, scores, labels = random_case(100 + seed, 40)
    keep, merged, kept_scores = nmm_reference(boxes, scores, labels, threshold, metric, greedy)
    got = bloodcv.NonMaxMerge(match_threshold=threshold, metric=metric, greedy=greedy)(boxes, scores, labels=labels)
    np.testing.assert_array_equal(got.keep, keep)
    np.testing.assert_allclose(got.boxes, merged, atol=1e-4)
    np.testing.assert_array_equal(got.scores, kept_scores)
    assert len(keep) < len(boxes)


def test_greedy_and_full_merging_differ_on_a_chain():
    """a-b and b-c match, a-c do not: greedy merges b into a and leaves c; full merges all three."""
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], np.float32)  # IoU 1/3, 1/3, 0
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    greedy = bloodcv.NonMaxMerge(match_threshold=0.3, metric="iou", greedy=True)(boxes, scores)
    full = bloodcv.NonMaxMerge(match_threshold=0.3, metric="iou", greedy=False)(boxes, scores)
    np.testing.assert_array_equal(greedy.boxes, [[0, 0, 15, 10], [10, 0, 20, 10]])
    np.testing.assert_array_equal(full.boxes, [[0, 0, 20, 10]])
