"""The bad-input suite (docs/reliability.md, "Bad input"): damaged files, odd pixel formats, broken model files
and configs, outputs that cannot be written, awkward paths, arrays and tensors of the wrong kind, Python
components that misbehave. Each gives one clear message naming the input and what is wrong; the CLI exits
non-zero and leaves no partial output. C++ cases are in tests/cpp (test_image.cpp, test_models.cpp,
test_assign.cpp); the table in docs/reliability.md lists all of them."""
import json
import resource
import signal
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import bloodcv
from bloodcv.assign import MaxIoUAssigner, OtaAssigner

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "build" / "bloodcv"
SAMPLE = ROOT / "examples" / "data" / "bccd_BloodImage_00001.jpg"
DETECTOR = ROOT / "models" / "cell_detector.pt"


def analyze(*args, limit_file_bytes=None):
    """bloodcv analyze with the bundled detector and no classifier (faster; the classifier is not the point)."""
    def limit():  # a file-size limit stands in for a full disk: writes beyond it fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run([str(CLI), "analyze", "--classifier", "none", *map(str, args)], capture_output=True, text=True,
                          timeout=300, preexec_fn=limit if limit_file_bytes else None)


def outputs(out: Path):
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def png_header_only(width, height):
    """A PNG whose header declares width x height RGB pixels, with 10 bytes of data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


# --- image files through the CLI ---------------------------------------------------------------------

def damaged_head(data):
    return data[:200] + b"\0" * 60 + data[260:]  # a marker segment overwritten


BAD_FILES = {
    "truncated.jpg": (lambda data: data[: len(data) // 3], "damaged JPEG, truncated"),
    "damaged.jpg": (damaged_head, "damaged JPEG, byte 210 is not a marker"),
    "empty.jpg": (lambda data: b"", "the file is empty"),
    "text.jpg": (lambda data: b"this is not an image", "not an image OpenCV can decode"),
    "huge.png": (lambda data: png_header_only(60000, 60000), "its header declares more than 2^30 pixels"),
    "cut.png": (lambda data: png_header_only(64, 64)[:40], "not an image OpenCV can decode"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_cli_refuses_a_bad_image_file_naming_it_and_writes_no_report_for_it(tmp_path, name):
    make, message = BAD_FILES[name]
    bad = tmp_path / name
    bad.write_bytes(make(SAMPLE.read_bytes()))
    out = tmp_path / "out"
    result = analyze(bad, SAMPLE, "--out", out)
    assert result.returncode == 1
    assert f"error: cannot read image '{bad}': {message}" in result.stderr
    assert "1 of 2 image(s) failed" in result.stderr
    # The good image's reports and the summary; nothing of the bad one, no hidden partial files.
    stem = SAMPLE.stem
    assert outputs(out) == sorted([f"{stem}.json", f"{stem}.csv", f"{stem}.coco.json", f"{stem}.overlay.jpg",
                                   "summary.json", "coco_results.json", "coco_images.json"])
    failed = json.loads((out / "summary.json").read_text())["failed_images"]
    assert [f["path"] for f in failed] == [str(bad)] and message in failed[0]["error"]


def test_cli_reads_odd_but_valid_pixel_formats_as_the_8_bit_image(tmp_path):
    """1x1, grey, grey+alpha, BGRA and 16-bit files are analysed; the 16-bit and BGRA copies of the sample
    give its cells exactly."""
    from PIL import Image
    rgb = np.asarray(Image.open(SAMPLE).convert("RGB"))
    Image.fromarray(rgb[:1, :1]).save(tmp_path / "one.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("LA").save(tmp_path / "grey_alpha.png")
    bgr = rgb[:, :, ::-1]
    import cv2
    cv2.imwrite(str(tmp_path / "wide.png"), bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "bgra.png"), np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]))
    cv2.imwrite(str(tmp_path / "plain.png"), bgr)
    out = tmp_path / "out"
    result = analyze(*sorted(tmp_path.glob("*.png")), "--out", out)
    assert result.returncode == 0, result.stderr

    def cells(stem):
        return [(c["label"], c["box"]) for c in json.loads((out / f"{stem}.json").read_text())["cells"]]

    assert cells("one") == []
    assert cells("wide") == cells("bgra") == cells("plain") and len(cells("plain")) > 20
    assert len(cells("grey")) > 0 and len(cells("grey_alpha")) > 0


# --- model files and configs through the CLI ---------------------------------------------------------

@pytest.mark.parametrize("option, model, message", [
    ("--detector", "corrupt", "not a readable TorchScript archive"),
    ("--detector", "no_metadata", "no bloodcv.json inside"),
    ("--detector", "metadata_input_size_1e30", "bloodcv.json: input_size must be whole numbers within the range of int"),
    ("--detector", "metadata_labels_string", "bloodcv.json: [json.exception.type_error.302] type must be array, but is string"),
    ("--detector", "metadata_deep_decoder_entry", "bloodcv.json: nested more than 16 levels deep"),
    ("--detector", "color_classifier", "task is 'classification', but a detection model is needed"),
    ("--classifier", "marker_yolo", "task is 'detection', but a classification model is needed"),
    ("--classifier", "bad_stain_classifier", "bloodcv.json: stain.reinhard"),
])
def test_cli_refuses_a_broken_model_file_before_any_output(models, tmp_path, option, model, message):
    out = tmp_path / "out"
    args = [SAMPLE, "--out", out, option, models[model]]
    result = subprocess.run([str(CLI), "analyze", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.startswith(f"bloodcv: error: model file '{models[model]}': ") and message in result.stderr
    assert result.stderr.count("\n") == 1  # one line
    assert not out.exists()


@pytest.mark.parametrize("config, message", [
    ('{"detector": "DETECTOR", "tilesize": 5}', "unknown key 'tilesize' (known: detector, classifier, tile,"),
    ('{"detector": ', "parse error at line 1, column 14"),
    ('{"tile": [1e30, 64]}', "tile must be whole numbers within the range of int"),
    ('{"overlap": "0.15"}', "type must be number, but is string"),
    ('{"merge": "average"}', "merge"),
    ('{"stain_target": ' + "[" * 40 + "]" * 40 + "}", "nested more than 32 levels deep"),
])
def test_cli_refuses_a_bad_config_naming_the_file(tmp_path, config, message):
    path = tmp_path / "config.json"
    path.write_text(config.replace("DETECTOR", str(DETECTOR)))
    out = tmp_path / "out"
    result = analyze(SAMPLE, "--config", path, "--out", out)
    assert result.returncode == 1
    assert result.stderr.startswith(f"bloodcv: error: config file '{path}': ") and message in result.stderr
    assert not out.exists()


def test_config_paths_are_relative_to_the_config_file(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "missing.json").write_text('{"detector": "../models/cell_detector.pt"}')
    result = analyze(SAMPLE, "--config", configs / "missing.json", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert f"model file '{configs / '../models/cell_detector.pt'}': no such file" in result.stderr
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "cell_detector.pt").symlink_to(DETECTOR)
    result = analyze(SAMPLE, "--config", configs / "missing.json", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, message", [
    (["--tile", "0x5"], "tile_size must be positive, got 0x5"),
    (["--tile", "abc"], "--tile must be W or WxH, got 'abc'"),
    (["--score-threshold", "2"], "--score-threshold: Value 2 not in range"),
    (["--overlap", "1.5"], "--overlap: Value 1.5 not in range"),
    (["--batch-size", "0"], "--batch-size"),
    (["--device", "tpu"], "device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--bogus"], "The following argument was not expected: --bogus"),
])
def test_cli_refuses_bad_options_before_any_output(tmp_path, args, message):
    out = tmp_path / "out"
    result = analyze(SAMPLE, "--out", out, *args)
    assert result.returncode != 0 and message in result.stderr
    assert not out.exists()


def test_eval_names_a_ground_truth_path_that_does_not_exist(tmp_path):
    result = subprocess.run([str(CLI), "eval", "--gt", str(tmp_path / "nope"), "--pred", str(tmp_path), "--out", str(tmp_path / "e")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and f"--gt '{tmp_path / 'nope'}': no such file or directory" in result.stderr
    assert not (tmp_path / "e").exists()


# --- outputs -------------------------------------------------------------------------------------------

def test_an_output_directory_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "plain").write_text("a file, not a directory")
    result = analyze(SAMPLE, "--out", tmp_path / "plain" / "out")
    assert result.returncode == 1
    assert result.stderr.strip() == f"bloodcv: error: --out '{tmp_path / 'plain' / 'out'}': cannot create the directory: Not a directory"


def test_a_full_disk_fails_the_image_with_the_reason_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "out"
    result = analyze(SAMPLE, "--out", out, limit_file_bytes=20_000)  # the overlay JPEG is larger
    assert result.returncode == 1
    assert f"cannot write '{out / (SAMPLE.stem + '.overlay.jpg')}': File too large" in result.stderr
    assert outputs(out) == ["coco_images.json", "coco_results.json", "summary.json"]


def test_a_symlink_where_a_report_goes_is_replaced_never_written_through(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text("keep me")
    (out / f"{SAMPLE.stem}.json").symlink_to(victim)
    result = analyze(SAMPLE, "--out", out)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "keep me"
    report = out / f"{SAMPLE.stem}.json"
    assert not report.is_symlink() and json.loads(report.read_text())["image"]["path"] == str(SAMPLE)


def test_an_output_directory_given_as_a_symlink_is_written_into(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert analyze(SAMPLE, "--out", tmp_path / "link").returncode == 0
    assert (tmp_path / "real" / f"{SAMPLE.stem}.json").is_file()


def test_paths_with_spaces_and_non_ascii_characters(tmp_path):
    folder = tmp_path / "smears of 22 Nov" / "célula 血液"
    folder.mkdir(parents=True)
    image = folder / "frotis ñ 1.jpg"
    image.write_bytes(SAMPLE.read_bytes())
    broken = folder / "dañado 2.jpg"
    broken.write_bytes(b"")
    out = tmp_path / "salida ü"
    result = analyze(folder, "--out", out)
    assert result.returncode == 1
    assert f"cannot read image '{broken}': the file is empty" in result.stderr
    report = json.loads((out / "frotis ñ 1.json").read_text())
    assert report["image"]["path"] == str(image) and len(report["cells"]) > 20
    assert (out / "frotis ñ 1.overlay.jpg").stat().st_size > 0


# --- Python: images, boxes, tensors ---------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline():
    return bloodcv.Pipeline(bloodcv.TorchScriptDetector(str(DETECTOR)))


@pytest.fixture(scope="module")
def sample():
    return bloodcv.read_image(str(SAMPLE))


def cells(result):
    a = result.arrays()
    return a["boxes"].round(3).tolist(), a["labels"].tolist()


@pytest.mark.parametrize("make, error, message", [
    (lambda img: np.dstack([img[:, :, 0], img[:, :, 1]]), ValueError, "image has 2 channels"),
    (lambda img: np.dstack([img, img]), ValueError, "image must have 1 to 4 channels, got 6"),
    (lambda img: img.astype(np.float64), ValueError, "image dtype must be uint8, uint16 or float32, got float64"),
    (lambda img: img.astype(bool), ValueError, "got bool"),
    (lambda img: img.astype(np.float32), ValueError, "float32 with values in [98, 255]"),
    (lambda img: np.full((8, 8, 3), np.nan, np.float32), ValueError, "float32 with NaN or infinite values"),
    (lambda img: img[None], ValueError, r"shape (H, W) or (H, W, C), got (1, 480, 640, 3)"),
    (lambda img: img[:0], ValueError, "image is empty, shape (0, 640, 3)"),
    (lambda img: None, TypeError, "image must be a path, a numpy array or an ImageSource, got NoneType"),
    (lambda img: "no/such/smear.jpg", RuntimeError, "cannot read image 'no/such/smear.jpg': no such file"),
])
def test_python_analyze_refuses_bad_images(pipeline, sample, make, error, message):
    with pytest.raises(error) as raised:
        pipeline.analyze(make(sample))
    assert message in str(raised.value)


def test_python_images_of_every_accepted_form_give_the_same_cells(pipeline, sample):
    want = cells(pipeline.analyze(sample))
    assert len(want[0]) > 20
    flipped = sample[:, ::-1]
    assert not flipped.flags.c_contiguous
    assert cells(pipeline.analyze(flipped)) == cells(pipeline.analyze(np.ascontiguousarray(flipped)))
    assert cells(pipeline.analyze(sample.astype(np.uint16) * 257)) == want
    assert cells(pipeline.analyze(sample.astype(np.float32) / 255)) == want
    assert cells(pipeline.analyze(np.dstack([sample, np.full(sample.shape[:2], 255, np.uint8)]))) == want
    assert cells(pipeline.analyze(np.zeros((1, 1, 3), np.uint8))) == ([], [])


@pytest.mark.parametrize("boxes, scores, message", [
    ([[0, 0, np.nan, 1]], [0.5], r"boxes[0]"),
    ([[0, 0, np.inf, 1]], [0.5], r"boxes[0]"),
    ([[2, 0, 1, 1]], [0.5], "x2 >= x1"),
    ([[0, 0, 1, 1]], [np.inf], "scores[0] is inf: scores must be finite"),
    ([[0, 0, 1, 1, 1]], [0.5], "boxes must have shape (N, 4), got (1, 5)"),
    ([[0, 0, 1, 1]], [0.5, 0.4], "scores has 2 entries but boxes has 1"),
    ([["a", 0, 1, 1]], [0.5], "boxes must be numbers convertible to float32: could not convert string to float: 'a'"),
])
def test_python_suppressors_refuse_bad_boxes_and_scores(boxes, scores, message):
    for suppressor in [bloodcv.HardNms(), bloodcv.SoftNms(), bloodcv.WeightedBoxFusion(), bloodcv.NonMaxMerge()]:
        with pytest.raises((ValueError, TypeError)) as raised:
            suppressor(np.array(boxes, dtype=object if isinstance(boxes[0][0], str) else np.float32),
                       np.array(scores, np.float32))
        assert message in str(raised.value), type(suppressor).__name__


def test_negative_coordinates_are_boxes_like_any_other():
    boxes = np.array([[-10, -10, 5, 5], [-9, -9, 5, 5], [20, 20, 30, 30]], np.float32)
    np.testing.assert_array_equal(bloodcv.nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5), [0, 2])


def test_python_classifier_refuses_boxes_outside_the_image(models):
    classifier = bloodcv.TorchScriptClassifier(models["color_classifier"])
    image = np.zeros((50, 60, 3), np.uint8)
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        classifier.classify(image, np.array([[0, 0, 10, 10], [-30, -30, -10, -10]], np.float32))
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        classifier.classify(image, np.array([[0, 0, np.nan, 10]], np.float32))


def test_assigners_refuse_tensors_of_the_wrong_kind():
    anchors = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 12, 12]], dtype=torch.float32)
    gt = torch.tensor([[0, 0, 10, 10]], dtype=torch.float32)
    assigner = MaxIoUAssigner()
    # No CUDA tensor exists on a CPU build of torch; the meta device stands for "not where the anchors are".
    with pytest.raises(ValueError, match="anchors are on device 'meta': assigners run on cpu or cuda"):
        assigner.assign(anchors.to("meta"), gt, [1])
    with pytest.raises(ValueError, match="gt_boxes is on 'meta' but anchors are on 'cpu'"):
        assigner.assign(anchors, gt.to("meta"), [1])
    with pytest.raises(ValueError, match="gt_labels must be integers, got Float"):
        assigner.assign(anchors, gt, [1.5])
    with pytest.raises(ValueError, match="anchors must be floating point, got Long"):
        assigner.assign(anchors.long(), gt, [1])
    with pytest.raises(ValueError, match=r"anchors must have shape \[N, 4\], got \[3\]"):
        assigner.assign(anchors[0, :3], gt, [1])
    with pytest.raises(ValueError, match=r"pred_scores must be probabilities in \[0, 1\]"):
        OtaAssigner().assign(anchors, gt, [0], pred_boxes=anchors, pred_scores=torch.full((3, 1), float("nan")))
    strided = torch.stack([anchors, anchors + 1], 2)[:, :, 0]
    assert not strided.is_contiguous()
    got, want = assigner.assign(strided, gt, np.array([1], np.int32)), assigner.assign(anchors, gt, [1])
    assert got.gt_index.tolist() == want.gt_index.tolist() == [0, -1, 0]
    assert got.labels.tolist() == [1, -1, 1]


# --- Python components that misbehave ---------------------------------------------------------------

class OneCellDetector(bloodcv.Detector):
    def __init__(self, returned):
        super().__init__()
        self.returned = returned

    def labels(self):
        return ["WBC"]

    def input_size(self):
        return (64, 64)

    def detect(self, images):
        return [self.returned() for _ in images]


def raise_inside():
    raise RuntimeError("the detector's GPU went away")


@pytest.mark.parametrize("returned, error, message", [
    (raise_inside, RuntimeError, "the detector's GPU went away"),
    (lambda: {"boxes": np.array([[0, 0, np.nan, 5]], np.float32), "scores": np.ones(1, np.float32)}, ValueError, "boxes[0]"),
    (lambda: {"boxes": np.array([[9, 0, 1, 5]], np.float32), "scores": np.ones(1, np.float32)}, ValueError, "x2 >= x1"),
    (lambda: {"boxes": np.array([[0, 0, 5, 5]], np.float32), "scores": np.array([np.inf], np.float32)}, ValueError,
     "scores must be finite"),
    (lambda: {"boxes": np.zeros((2, 3), np.float32), "scores": np.ones(2, np.float32)}, ValueError, "(N, 4), got (2, 3)"),
    (lambda: {"boxes": np.zeros((1, 4), np.float32), "scores": np.ones(2, np.float32)}, ValueError, "scores has 2 entries"),
    (lambda: "three cells", (TypeError, ValueError), "detect()"),
])
def test_a_python_detector_that_raises_or_returns_malformed_arrays(returned, error, message):
    with pytest.raises(error) as raised:
        bloodcv.Pipeline(OneCellDetector(returned)).analyze(np.zeros((64, 64, 3), np.uint8))
    assert message in str(raised.value)
