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


@pytest.mark.parametrize("call, message", [
    ("bloodcv.assign.sinkhorn(torch.ones(2, 3), torch.ones(2), torch.ones(3), iterations=2**32)", "iterations must be at most 2147483647"),
    ("bloodcv.assign.fit_gmm_1d(torch.tensor([0.1, 0.2, 0.9]), (0.1, 0.9), max_iterations=-5)", "max_iterations must be >= 1"),
    ("bloodcv.assign.fit_gmm_1d(torch.tensor([0.1, float('nan'), 0.9]), (0.1, 0.9))", r"x\[1\] is nan"),
    ("bloodcv.assign.sinkhorn(torch.tensor([[float('nan'), 1.0]]), torch.ones(1), torch.ones(2))", "cost holds NaN"),
    ("bloodcv.assign.OtaAssigner(center_prior_cost=float('inf')).assign(*OTA)", "center_prior_cost must be finite"),
    ("bloodcv.assign.OtaAssigner(center_prior_cost=float('nan')).assign(*OTA)", "center_prior_cost must be finite"),
    ("bloodcv.assign.PaaAssigner(em_iterations=2**31).assign(*OTA, anchors_per_level=[2])", "em_iterations must be at most"),
    ("bloodcv.assign.PaaAssigner().assign(*OTA, anchors_per_level=[2**63 - 1, 2**63 - 1])", "sums to more than the 2 anchors"),
    ("bloodcv.assign.AtssAssigner().assign(torch.tensor([[0., 0, 10, 10], [20., 0, 10, 10]]), torch.tensor([[0., 0, 8, 8]]), "
     "torch.tensor([0]))", r"anchors\[1\] is inverted"),
])
def test_assigner_arguments_that_once_truncated_or_gave_nan_are_refused(call, message):
    import bloodcv.assign  # noqa: F401
    ota = (torch.tensor([[0., 0, 10, 10], [5., 5, 15, 15]]), torch.tensor([[0., 0, 10, 10]]), torch.tensor([0]),
           torch.tensor([[0., 0, 10, 10], [5., 5, 15, 15]]), torch.tensor([[0.9], [0.2]]))
    with pytest.raises(ValueError, match=message):
        eval(call, {"bloodcv": bloodcv, "torch": torch, "OTA": ota})


def test_macro_averages_count_classes_only_predicted_as_scikit_learn_does():
    metrics = pytest.importorskip("sklearn.metrics")
    import bloodcv.eval
    rng = np.random.default_rng(0)
    for _ in range(600):
        k = int(rng.integers(2, 6))
        n = int(rng.integers(1, 12))
        truth, predicted = rng.integers(0, k, n).tolist(), rng.integers(0, k, n).tolist()
        macro = bloodcv.eval.evaluate_classification(truth, predicted, [f"c{i}" for i in range(k)]).to_dict()["macro"]
        p, rc, f1, _ = metrics.precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
        assert (macro["precision"], macro["recall"], macro["f1"]) == pytest.approx((p, rc, f1), abs=1e-12), (truth, predicted)
    # by hand: class 1 only predicted -> precision 0, recall 0, counted; class 0: P 1, R 0.5
    macro = bloodcv.eval.evaluate_classification([0, 0], [0, 1], ["a", "b"]).to_dict()["macro"]
    assert macro["recall"] == pytest.approx(0.25) and macro["precision"] == pytest.approx(0.5)


def test_label_counts_that_blew_up_memory_are_refused():
    import bloodcv.eval
    with pytest.raises(ValueError, match="30000 labels: at most 4096"):
        bloodcv.eval.evaluate_classification([0], [0], [str(i) for i in range(30000)])
    report = bloodcv.eval.evaluate_classification(list(range(600)), list(range(600)), [str(i) for i in range(600)])
    with pytest.raises(ValueError, match="at most 150 labels are drawn"):
        report.confusion_image()


@pytest.mark.parametrize("size", [(0, 0), (-5, 100)])
def test_merging_into_an_empty_image_size_is_refused(size):
    tiles = bloodcv.GridTiler(tile_size=(64, 64), overlap=0).plan((128, 64))
    boxes = [np.array([[1, 1, 10, 10]], np.float32), np.zeros((0, 4), np.float32)]
    scores = [np.array([0.9], np.float32), np.zeros(0, np.float32)]
    with pytest.raises(ValueError, match="image_size must be positive"):
        bloodcv.merge_tile_detections(tiles, boxes, scores, image_size=size)


def test_nms_survives_another_thread_writing_nan_into_its_input():
    # The arrays are copied before the GIL is released; before, a NaN written after validation crashed.
    result = run_isolated("""
        import threading, numpy as np, bloodcv
        rng = np.random.default_rng(0)
        xy = rng.random((20000, 2), dtype=np.float32) * 1000
        boxes = np.concatenate([xy, xy + 20], 1).astype(np.float32)
        scores = rng.random(20000, dtype=np.float32)
        stop = threading.Event()
        def vandal():
            while not stop.is_set():
                boxes[:, 2] = np.nan; boxes[:, 2] = boxes[:, 0] + 20
                scores[:] = np.nan; scores[:] = 0.5
        t = threading.Thread(target=vandal); t.start()
        done = 0
        for _ in range(100):
            try:
                bloodcv.nms(boxes, scores, 0.5); bloodcv.WeightedBoxFusion()(boxes, scores); done += 1
            except ValueError:
                pass  # validated a copy holding the NaN: refused, as it should be
        stop.set(); t.join(); print("ok", done)
        """, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


@pytest.mark.parametrize("call, error, message", [
    ("bloodcv.eval.evaluate_chain({'a': [1]}, {})", TypeError,
     r"images\['a'\] must be a list of \(box \[x1, y1, x2, y2\], type name\[, score\]\), got \[1\]"),
    ("bloodcv.eval.evaluate_chain({'a': 5}, {})", TypeError, r"images\['a'\] must be a list of \(box"),
    ("bloodcv.eval.ground_truth(['WBC'], {'a': (np.zeros((1, 4)), 'WBC')})", TypeError,
     r"images\['a'\] must be \(boxes \(N, 4\), labels \(N,\)\[, ignore \(N,\)\]\)"),
    ("bloodcv.eval.predictions(['WBC'], {'a': 7})", TypeError, r"images\['a'\] must be \(boxes \(N, 4\), scores \(N,\), labels \(N,\)\)"),
    ("bloodcv.assign.AtssAssigner().assign(torch.tensor(1.0), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))", ValueError,
     r"anchors must have shape \[N, 4\], got \[\]"),
    ("bloodcv.assign.MaxIoUAssigner().assign([[0, 0, 1, 1]], [[0, 0, 1, 2, 3]], [0])", ValueError, r"gt_boxes must have shape \[N, 4\], got \[1, 5\]"),
    ("PIPELINE.analyze(None)", TypeError, "image must be a path, a numpy array or an ImageSource, got NoneType"),
    ("PIPELINE.analyze(5)", TypeError, "image must be a path, a numpy array or an ImageSource, got int"),
])
def test_wrong_types_get_errors_that_name_the_input(call, error, message):
    import bloodcv.assign  # noqa: F401
    import bloodcv.eval  # noqa: F401
    pipeline = bloodcv.Pipeline(bloodcv.TorchScriptDetector(f"{bloodcv.default_model_dir()}/cell_detector.pt"))
    with pytest.raises(error, match=message):
        eval(call, {"bloodcv": bloodcv, "torch": torch, "np": np, "PIPELINE": pipeline})


def test_assigners_take_lists_as_tensors():
    import bloodcv.assign
    from_lists = bloodcv.assign.MaxIoUAssigner().assign([[0, 0, 10, 10], [20, 20, 30, 30]], [[0, 0, 10, 10]], [2])
    assert from_lists.gt_index.tolist() == [0, bloodcv.assign.BACKGROUND] and from_lists.labels.tolist() == [2, -1]


@pytest.mark.parametrize("merger", ["seam", "nms", "wbf"])
def test_a_tile_region_outside_the_image_is_refused(merger):
    """fuzz_tiler_merge found the seam merger adding the corners of a region past the int range (undefined
    behaviour); a region that is not inside the image is now refused by every merger, as in C++."""
    boxes = [np.array([[1, 1, 10, 10]], np.float32)] * 2
    scores = [np.array([0.9], np.float32)] * 2
    strategy = bloodcv.make_merger(merger)
    for far in (bloodcv.Tile(1120060098, 0, 1120060098, 64), bloodcv.Tile(40, 0, 32, 32), bloodcv.Tile(-1, 0, 32, 32)):
        with pytest.raises(ValueError, match=r"tile region \d+x\d+ at \(-?\d+, 0\) is not inside the 64x64 image"):
            bloodcv.merge_tile_detections([bloodcv.Tile(0, 0, 32, 32), far], boxes, scores, image_size=(64, 64), merger=strategy)
    merged = bloodcv.merge_tile_detections([bloodcv.Tile(0, 0, 32, 32), bloodcv.Tile(32, 32, 32, 32)], boxes, scores,
                                           image_size=(64, 64), merger=strategy)
    assert sorted(merged["boxes"].tolist()) == [[1, 1, 10, 10], [33, 33, 42, 42]]
