"""Defects a fuzz of the Python API found (issue 15): each case crashed, hung or answered wrongly before
its fix; each runs in its own process where a regression would crash or hang the test run."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision

import bloodcv


def run_isolated(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter: a segfault or a hang fails this test, not the whole suite."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("suppressor", ["WeightedBoxFusion()", "HardNms()", "SoftNms()", "NonMaxMerge()"])
def test_an_infinite_score_is_refused_instead_of_crashing(suppressor):
    result = run_isolated(f"""
        import numpy as np, bloodcv
        boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], np.float32)
        try:
            bloodcv.{suppressor}(boxes, np.array([np.inf, 0.5], np.float32))
        except ValueError as e:
            print(e)
        """)
    assert result.returncode == 0, result.stderr
    assert "scores[0] is inf: scores must be finite" in result.stdout


def test_a_tile_near_the_int_range_plans_two_tiles_instead_of_looping():
    result = run_isolated("""
        import bloodcv
        print([t.region for t in bloodcv.GridTiler(tile_size=(2**30, 64), overlap=0).plan((2**30 + 1, 64))])
        """, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([(0, 0, 2**30, 64), (1, 0, 2**30, 64)])


def test_a_plan_of_millions_of_tiles_is_refused_naming_the_count():
    with pytest.raises(ValueError, match=r"makes 3947581 tiles \(at most 1000000\)"):
        bloodcv.GridTiler().plan((2**31 - 1, 100))


def test_equal_boxes_beyond_floats_squared_range_overlap_fully():
    huge = np.array([[0, 0, 2e19, 2e19]], np.float32)
    for f in (bloodcv.box_iou, bloodcv.box_ios, bloodcv.generalized_box_iou, bloodcv.distance_box_iou):
        assert float(f(huge, huge)[0, 0]) == 1.0, f.__name__


def test_distance_iou_of_sub_pixel_boxes_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(20, 2, generator=g) * 1e-3
    b = torch.rand(20, 2, generator=g) * 1e-3
    boxes_a = torch.cat([a, a + torch.rand(20, 2, generator=g) * 1e-3], 1)
    boxes_b = torch.cat([b, b + torch.rand(20, 2, generator=g) * 1e-3], 1)
    ours = np.asarray(bloodcv.distance_box_iou(boxes_a.numpy(), boxes_b.numpy()))
    theirs = torchvision.ops.distance_box_iou(boxes_a, boxes_b).numpy()
    assert np.allclose(ours, theirs, atol=1e-4)
