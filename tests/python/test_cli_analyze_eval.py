"""bloodcv analyze, then bloodcv eval, as a new user runs them: every documented form of --pred reads the
same predictions, mismatches are said, and bad input gets one clear message."""
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

import bloodcv
from bloodcv import eval as bev

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "build" / "bloodcv"
SAMPLE = ROOT / "examples" / "data" / "bccd_BloodImage_00001.jpg"
BCCD = ROOT.parent / "shared" / "datasets" / "bccd" / "BCCD"
ANNOTATIONS = BCCD / "Annotations"
LABELS = ["WBC", "RBC", "Platelets"]
IDS = ["BloodImage_00007", "BloodImage_00011", "BloodImage_00015"]  # from BCCD's test split

pytestmark = pytest.mark.skipif(not BCCD.exists(), reason=f"the BCCD dataset is not at {BCCD}")


def run(*args):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=300)


def evaluate(tmp_path, *args):
    out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
    result = run("eval", "--gt", ANNOTATIONS, "--labels", ",".join(LABELS), "--out", out, *args)
    report = json.loads((out / "eval.json").read_text()) if result.returncode == 0 else None
    return result, report


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyzed")
    images = root / "images"
    images.mkdir()
    for name in IDS:
        shutil.copy(BCCD / "JPEGImages" / f"{name}.jpg", images)
    (root / "split.txt").write_text("\n".join(IDS) + "\n")
    result = run("analyze", images, "--classifier", "none", "--out", root / "out")
    assert result.returncode == 0, result.stderr
    return root


def test_every_form_of_pred_scores_the_same_predictions(analyzed, tmp_path):
    out = analyzed / "out"
    cells = sum(len(json.loads((out / f"{name}.json").read_text())["cells"]) for name in IDS)
    reports = {}
    for pred in [str(out), str(out) + "/", out / "coco_results.json"]:
        result, reports[str(pred)] = evaluate(tmp_path, "--pred", pred, "--split", analyzed / "split.txt")
        assert result.returncode == 0, (pred, result.stderr)
        assert reports[str(pred)]["images"] == 3 and reports[str(pred)]["predictions"] == cells, pred
    first, *others = reports.values()
    for other in others:
        assert other["coco"] == first["coco"]
    python = bev.evaluate_detections(bev.select_images(bev.read_voc(str(ANNOTATIONS), LABELS), IDS), bev.read_predictions(str(out)))
    for name, value in python.coco.items():
        assert first["coco"][name] == pytest.approx(value, abs=1e-12), name
    assert first["coco"]["AP50"] > 0.5  # the default detector on BCCD test images


def test_one_report_file_is_predictions_of_one_image(analyzed, tmp_path):
    (tmp_path / "one.txt").write_text(IDS[0] + "\n")
    result, report = evaluate(tmp_path, "--pred", analyzed / "out" / f"{IDS[0]}.json", "--split", tmp_path / "one.txt")
    assert result.returncode == 0, result.stderr
    assert report["images"] == 1 and report["predictions"] == len(json.loads((analyzed / "out" / f"{IDS[0]}.json").read_text())["cells"])


def test_ground_truth_images_without_predictions_are_said_or_left_out(analyzed, tmp_path):
    result, everything = evaluate(tmp_path, "--pred", analyzed / "out")
    assert result.returncode == 0, result.stderr
    missing = everything["images"] - 3
    assert missing > 300 and everything["images_without_predictions"] == missing
    assert f"warning: {missing} of the {everything['images']} ground-truth images have no predictions" in result.stderr
    result, only = evaluate(tmp_path, "--pred", analyzed / "out", "--only-predicted")
    assert result.returncode == 0 and "warning" not in result.stderr
    _, split = evaluate(tmp_path, "--pred", analyzed / "out", "--split", analyzed / "split.txt")
    assert only["coco"] == split["coco"] and only["images"] == 3
    assert only["coco"]["AP"] > everything["coco"]["AP"]


def test_predictions_of_other_images_are_an_error(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLE, images / "not_in_bccd.jpg")
    assert run("analyze", images, "--classifier", "none", "--out", tmp_path / "out").returncode == 0
    result, _ = evaluate(tmp_path, "--pred", tmp_path / "out")
    assert result.returncode == 1
    assert "none of the 1 predicted images is in the ground truth (e.g. 'not_in_bccd'" in result.stderr


def test_unknown_split_ids_are_an_error(analyzed, tmp_path):
    (tmp_path / "split.txt").write_text(f"{IDS[0]}\nBloodImage_99999\n")
    result, _ = evaluate(tmp_path, "--pred", analyzed / "out", "--split", tmp_path / "split.txt")
    assert result.returncode == 1 and "1 of the 2 images named are not in the ground truth: BloodImage_99999" in result.stderr


def test_max_dets_order_does_not_change_the_headline(analyzed, tmp_path):
    split = ("--split", analyzed / "split.txt")
    _, ascending = evaluate(tmp_path, "--pred", analyzed / "out", "--max-dets", "1,10,100", *split)
    _, descending = evaluate(tmp_path, "--pred", analyzed / "out", "--max-dets", "100,10,1", *split)
    assert descending["coco"] == ascending["coco"]
    assert descending["options"]["max_detections"] == [1, 10, 100]


@pytest.mark.parametrize("args, message", [
    (["--max-dets", "abc"], "--max-dets must be positive whole numbers separated by commas, got 'abc'"),
    (["--max-dets", "10,0"], "--max-dets must be positive"),
    (["--format", "coco"], "is a directory, not a JSON file"),
])
def test_bad_eval_arguments_get_one_clear_message(analyzed, tmp_path, args, message):
    result, _ = evaluate(tmp_path, "--pred", analyzed / "out", *args)
    assert result.returncode == 1 and message in result.stderr
    assert "stoi" not in result.stderr and "basic_filebuf" not in result.stderr


def test_a_truncated_jpeg_is_an_error_for_that_image_only(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "trunc.jpg").write_bytes(SAMPLE.read_bytes()[:3000])
    shutil.copy(SAMPLE, images / "whole.jpg")
    result = run("analyze", images, "--classifier", "none", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "trunc.jpg: error: cannot read image" in result.stderr and "damaged JPEG" in result.stderr
    assert "Premature end of JPEG file" not in result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (failure,) = summary["failed_images"]
    assert failure["path"].endswith("trunc.jpg") and "damaged JPEG" in failure["error"]
    assert [im["path"] for im in summary["images"]] == [str(images / "whole.jpg")]
    assert not list((tmp_path / "out").glob("trunc*"))
    with pytest.raises(RuntimeError, match="damaged JPEG"):
        bloodcv.read_image(str(images / "trunc.jpg"))


def test_a_tile_far_larger_than_the_image_is_refused_not_allocated(tmp_path):
    result = run("analyze", SAMPLE, "--classifier", "none", "--tile", "100000x100000", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert "tile_size 100000x100000 is larger than the 640x480 image" in result.stderr
    assert "Insufficient memory" not in result.stderr


def test_same_file_name_in_two_folders_gets_two_reports(tmp_path):
    for folder in ["a", "b"]:
        (tmp_path / folder).mkdir()
    shutil.copy(SAMPLE, tmp_path / "a" / "X.jpg")
    image = cv2.imread(str(SAMPLE))
    cv2.imwrite(str(tmp_path / "b" / "X.jpg"), image[:, :320])  # another image of the same name
    result = run("analyze", tmp_path / "a" / "X.jpg", tmp_path / "b" / "X.jpg", tmp_path / "a" / "X.jpg", "--classifier", "none",
                 "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [Path(im["report"]).name for im in summary["images"]] == ["X.json", "X-2.json"]  # the repeated path once
    widths = [json.loads(Path(im["report"]).read_text())["image"]["width"] for im in summary["images"]]
    assert widths == [640, 320]
    coco = json.loads((tmp_path / "out" / "coco_images.json").read_text())
    assert [im["width"] for im in coco["images"]] == [640, 320]


def test_a_directory_includes_webp_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    assert cv2.imwrite(str(images / "smear.webp"), cv2.imread(str(SAMPLE)), [cv2.IMWRITE_WEBP_QUALITY, 101])
    result = run("analyze", images, "--classifier", "none", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "smear.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--score-threshold", "2"], "--score-threshold: Value 2 not in range"),
    (["--classify-labels", "Foo"], "'Foo' is not one of the detector's labels (WBC, RBC, Platelets)"),
])
def test_bad_analyze_options_name_the_option(tmp_path, args, message):
    result = run("analyze", SAMPLE, "--out", tmp_path / "out", *args)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_out_naming_a_file_fails_once_up_front(tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    result = run("analyze", SAMPLE, SAMPLE.with_name("pbc_neutrophil_BNE_131871.jpg"), "--classifier", "none", "--out", tmp_path / "taken")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"bloodcv: error: --out '{tmp_path / 'taken'}' exists and is not a directory"]
    assert (tmp_path / "taken").read_text() == "not a directory"


def test_an_empty_config_means_the_defaults(tmp_path):
    (tmp_path / "empty.json").write_text("{}")
    with_config = run("analyze", SAMPLE, "--config", tmp_path / "empty.json", "--out", tmp_path / "a")
    without = run("analyze", SAMPLE, "--out", tmp_path / "b")
    assert with_config.returncode == 0 and without.returncode == 0, with_config.stderr
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ["a", "b"])
    assert a["classifier"] is not None and a["classifier"] == b["classifier"] and a["detector"] == b["detector"]
    assert a["total_type_counts"] == b["total_type_counts"] and sum(a["total_type_counts"].values()) >= 1
    result = bloodcv.Pipeline.from_config(str(tmp_path / "empty.json")).analyze(str(SAMPLE))
    assert result.counts == a["total_counts"] and result.type_counts == a["total_type_counts"]


@pytest.mark.parametrize("config, key", [({"clasifier": None}, "clasifier"), ({"merge": {"treshold": 0.4}}, "merge.treshold")])
def test_misspelt_config_keys_are_refused(tmp_path, config, key):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = run("analyze", SAMPLE, "--config", path, "--out", tmp_path / "out")
    assert result.returncode == 1 and f"config file '{path}': unknown key '{key}'" in result.stderr
    with pytest.raises(RuntimeError, match=f"unknown key '{key}'"):
        bloodcv.Pipeline.from_config(str(path))


def test_score_threshold_in_a_config_is_checked(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"score_threshold": 2}))
    with pytest.raises(ValueError, match=r"score_threshold must be in \[0, 1\], got 2"):
        bloodcv.Pipeline.from_config(str(path))


def test_python_eval_takes_a_split(analyzed):
    truth = bev.read_voc(str(ANNOTATIONS), LABELS)
    predictions = bev.read_predictions(str(analyzed / "out"))
    by_names = bev.evaluate_detections(truth, predictions, images=IDS)
    by_file = bev.evaluate_detections(truth, predictions, images=str(analyzed / "split.txt"))
    only = bev.evaluate_detections(truth, predictions, predicted_images_only=True)
    assert by_names.coco == by_file.coco == only.coco
    assert by_names.images == 3 and by_names.images_without_predictions == 0
    with pytest.raises(ValueError, match="not in the ground truth: nope"):
        bev.evaluate_detections(truth, predictions, images=["nope"])
    assert np.isfinite(by_names.coco["AP50"])
