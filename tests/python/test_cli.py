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


def test_cli_and_python_merge_give_the_same_detections(demo):
    _, report = demo
    objects = json.loads(BOXES.read_text())["objects"]
    names = sorted({o["label"] for o in objects}, key=[o["label"] for o in objects].index)
    cells = np.array([o["box"] for o in objects], np.float32)
    labels = np.array([names.index(o["label"]) for o in objects])
    tiler = bloodcv.GridTiler(tile_size=(320, 240), overlap=0.15)
    tiles = tiler.plan((report["width"], report["height"]))
    per_boxes, per_scores, per_labels = [], [], []
    for t in tiles:  # the CLI's perfect detector: visible part of each box, scored by visible fraction
        local = cells - np.array([t.x, t.y, t.x, t.y], np.float32)
        part = np.clip(local, 0, [t.width, t.height, t.width, t.height]).astype(np.float32)
        visible = (part[:, 2] - part[:, 0]) * (part[:, 3] - part[:, 1])
        area = (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])
        seen = visible > 0
        per_boxes.append(part[seen])
        per_scores.append((visible / area)[seen].astype(np.float32))
        per_labels.append(labels[seen])
    merged = bloodcv.merge_tile_detections(tiles, per_boxes, per_scores, per_labels,
                                           image_size=(report["width"], report["height"]))
    cli_boxes = np.array([d["box"] for d in report["detections"]], np.float32)
    cli_labels = [d["label"] for d in report["detections"]]
    np.testing.assert_allclose(merged["boxes"], cli_boxes, atol=1e-4)
    np.testing.assert_allclose(merged["scores"], [d["score"] for d in report["detections"]], rtol=1e-6)
    assert [names[i] for i in merged["labels"]] == cli_labels


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
