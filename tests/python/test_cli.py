"""The bloodcv program: version, the tiling demo, and the same answer as the Python API."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import bloodcv

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "build" / "bloodcv"
SAMPLE = ROOT / "examples" / "data" / "bccd_BloodImage_00001.jpg"
BOXES = SAMPLE.with_suffix(".json")


def run(*args):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_version_matches_the_python_package():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"bloodcv {bloodcv.__version__}"


def test_help_lists_the_tile_command():
    result = run("tile", "--help")
    assert result.returncode == 0 and "--overlap" in result.stdout and "--merge" in result.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = run("tile", SAMPLE, "--boxes", BOXES, "--tile", "320x240", "--overlap", "0.15", "--out", out)
    assert result.returncode == 0, result.stderr
    return out, json.loads((out / (SAMPLE.stem + ".tiles.json")).read_text())


def test_demo_recovers_every_known_box_exactly_once(demo):
    out, report = demo
    assert report["known_boxes"] == 19
    assert report["tile_detections"] > report["known_boxes"]  # seams cut cells into several pieces
    assert report["merged_detections"] == 19
    assert report["recovered_at_iou_0.95"] == 19
    assert (out / (SAMPLE.stem + ".tiles.png")).stat().st_size > 0
    assert not list(out.glob("*.partial*"))


def known_cells():
    objects = json.loads(BOXES.read_text())["objects"]
    return np.array([o["box"] for o in objects], np.float32), [o["label"] for o in objects]


def inside(box, cell, tol=1e-3):
    return box[0] >= cell[0] - tol and box[1] >= cell[1] - tol and box[2] <= cell[2] + tol and box[3] <= cell[3] + tol


def test_seam_merging_gives_back_the_known_boxes_exactly(demo):
    """The CLI's detector sees the visible part of each known box in each tile; merging across seams must give
    every box back whole, once, with its label."""
    _, report = demo
    cells, labels = known_cells()
    got = sorted((d["label"], tuple(d["box"])) for d in report["detections"])
    want = sorted((label, tuple(float(v) for v in cell)) for cell, label in zip(cells, labels))
    assert got == want


def pooled_parts():
    """What the CLI's perfect detector reports, pooled in image coordinates: per tile (in plan order), the
    visible part of each known box with the visible fraction (float32) as its score."""
    cells, labels = known_cells()
    names = sorted(set(labels), key=labels.index)
    boxes, scores, label_ids = [], [], []
    for t in bloodcv.GridTiler(tile_size=(320, 240), overlap=0.15).plan((640, 480)):
        for cell, label in zip(cells, labels):
            part = np.array([max(cell[0], t.x), max(cell[1], t.y), min(cell[2], t.x + t.width), min(cell[3], t.y + t.height)],
                            np.float32)
            if part[2] > part[0] and part[3] > part[1]:
                boxes.append(part)
                area = lambda b: np.float32(b[2] - b[0]) * np.float32(b[3] - b[1])  # noqa: E731
                scores.append(area(part) / area(cell))
                label_ids.append(names.index(label))
    return np.array(boxes), np.array(scores, np.float32), np.array(label_ids), names


def reference_merge(merge, boxes, scores, labels):
    """The pooled strategies' answers from the references in test_merge_reference and test_soft_nms_reference."""
    from test_merge_reference import nmm_reference, wbf_reference
    from test_soft_nms_reference import soft_nms_reference
    if merge == "nmm":
        keep, out_boxes, out_scores = nmm_reference(boxes, scores, labels, 0.5, "ios", greedy=True)
    elif merge == "nms":  # hard NMS keeps exactly greedy NMM's leaders, with their own boxes
        keep, _, out_scores = nmm_reference(boxes, scores, labels, 0.5, "ios", greedy=True)
        out_boxes = boxes[keep]
    elif merge == "wbf":
        keep, out_boxes, out_scores = wbf_reference(boxes, scores, labels)
    else:  # class-aware Soft-NMS: each label on its own
        keep, out_scores = [], []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            k, s = soft_nms_reference(boxes[members], scores[members], "gaussian")
            keep += list(members[k])
            out_scores += list(s)
        keep = np.array(keep)
        out_boxes = boxes[keep]
    return keep, np.asarray(out_boxes), np.asarray(out_scores)


@pytest.mark.parametrize("merge", ["nmm", "nms", "wbf", "soft-nms"])
def test_pooled_mergers_give_what_their_reference_gives_on_the_tile_parts(tmp_path, merge):
    result = run("tile", SAMPLE, "--boxes", BOXES, "--tile", "320x240", "--overlap", "0.15", "--merge", merge, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    detections = json.loads((tmp_path / (SAMPLE.stem + ".tiles.json")).read_text())["detections"]
    boxes, scores, labels, names = pooled_parts()
    assert len(boxes) == 68
    keep, out_boxes, out_scores = reference_merge(merge, boxes, scores, labels)
    got = sorted((d["label"], *np.round(d["box"], 2), round(d["score"], 4)) for d in detections)
    want = sorted((names[labels[k]], *np.round(b, 2), round(float(s), 4)) for k, b, s in zip(keep, out_boxes, out_scores))
    assert got == want
    # Seam merging gives 19 whole cells back; the pooled strategies do not (why seam is the default).
    assert len(detections) != 19 or merge in ("nmm", "nms")


def test_unreadable_image_fails_cleanly(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    result = run("tile", bad, "--out", tmp_path / "out")
    assert result.returncode == 1
    assert f"cannot read image '{bad}'" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--tile", "0x10"], "tile_size must be positive"),
    (["--overlap", "1.2"], "overlap_ratio"),
    (["--merge", "average"], "--merge: average not in {seam,nmm,nms,wbf,soft-nms}"),
    (["--tile", "big"], "--tile must be W or WxH"),
])
def test_bad_parameters_fail_with_a_message(tmp_path, args, message):
    result = run("tile", SAMPLE, "--out", tmp_path / "out", *args)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "out").exists()
