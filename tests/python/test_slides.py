"""Whole slides: pyramidal TIFFs made here from the bundled field (tests/python/slides.py) are read region by
region through OpenSlide, analysed tile by tile with the background skipped, at the detector's physical scale
when both sides know theirs; a corrupt tile is reported and the rest analysed."""
import json
import subprocess

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

import bloodcv  # noqa: E402
from slides import BACKGROUND, VIPS, canvas, fields, save_slide  # noqa: E402
from web_helpers import ROOT  # noqa: E402

pytestmark = pytest.mark.skipif(VIPS is None, reason="libvips-tools (vips) is not installed")
PLACES = [(100, 150), (1500, 120), (300, 1400), (2100, 1500)]  # not on the tile grid
SIZE = (3000, 2200)
FIELD = (640, 480)


@pytest.fixture(scope="module")
def pipeline():
    models = bloodcv.default_model_dir()
    return bloodcv.Pipeline(bloodcv.TorchScriptDetector(f"{models}/cell_detector.pt"),
                            bloodcv.TorchScriptClassifier(f"{models}/wbc_classifier.pt"))


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return save_slide(canvas(SIZE, PLACES), tmp_path_factory.mktemp("slides") / "smears.tif", mpp=0.5)


def expected_cells(pipeline, scale=1.0):
    """Each field analysed alone, its cells moved to where the field lies on the canvas (times scale)."""
    cells = []
    for field, (x, y) in zip(fields(), PLACES):
        r = pipeline.analyze(np.ascontiguousarray(field)).arrays()
        for box, label, t in zip(r["boxes"], r["labels"], r["types"]):
            cells.append(((box + [x, y, x, y]) * scale, int(label), int(t)))
    return cells


def iou(a, b):
    return float(bloodcv.box_iou(np.asarray([a], np.float32), np.asarray([b], np.float32))[0, 0])


def test_a_pyramidal_tiff_is_read_region_by_region(slide, tmp_path):
    source = bloodcv.OpenSlideSource(str(slide))
    assert source.vendor() == "generic-tiff" and source.size() == SIZE
    levels = source.levels()
    assert levels[0] == (SIZE, 1.0) and levels[1] == ((1500, 1100), 2.0) and len(levels) >= 3
    assert source.microns_per_pixel() == pytest.approx(0.5)  # from the TIFF's resolution
    image = canvas(SIZE, PLACES)
    assert np.array_equal(source.read((1490, 100, 700, 520), 0), image[100:620, 1490:2190])  # deflate: lossless
    half = source.read((745, 50, 350, 260), 1)
    expected = cv2.resize(image[100:620, 1490:2190], (350, 260), interpolation=cv2.INTER_AREA)
    assert np.abs(half.astype(int) - expected).mean() < 3
    with pytest.raises(IndexError, match="level 9 does not exist"):
        source.read((0, 0, 10, 10), 9)
    with pytest.raises(IndexError, match="not inside level 0"):
        source.read((2990, 0, 20, 10), 0)
    png = tmp_path / "plain.png"
    cv2.imwrite(str(png), image[:100, :100])
    assert not bloodcv.is_slide(str(png)) and bloodcv.is_slide(str(slide))
    with pytest.raises(RuntimeError, match="cannot open slide .*plain.png"):
        bloodcv.OpenSlideSource(str(png))


def test_a_slide_gives_the_cells_of_its_fields_and_skips_the_background(pipeline, slide):
    source = bloodcv.OpenSlideSource(str(slide))
    plan = pipeline.plan(source)
    result = pipeline.analyze_source(source)
    cells = result.arrays()
    # every tile that meets no field is background and skipped; every tile with a cell in it ran
    fields_at = [(x, y, x + FIELD[0], y + FIELD[1]) for x, y in PLACES]
    for (x, y, w, h), ran in zip(plan.regions, plan.run):
        meets = any(x < fx2 and fx1 < x + w and y < fy2 and fy1 < y + h for fx1, fy1, fx2, fy2 in fields_at)
        if not meets:
            assert not ran, (x, y)
        centres = (cells["boxes"][:, :2] + cells["boxes"][:, 2:]) / 2
        if ((centres[:, 0] >= x) & (centres[:, 0] < x + w) & (centres[:, 1] >= y) & (centres[:, 1] < y + h)).any():
            assert ran, (x, y)
    assert result.slide["tiles_skipped"] == plan.run.count(False) > 0 and result.tiles == len(plan.regions)
    assert result.slide["downsample"] == 1.0 and result.slide["tile_errors"] == []
    # the four white cells, where the fields put them, typed as alone
    expected = expected_cells(pipeline)
    white = [c for c in expected if c[1] == 0]
    assert result.counts["WBC"] == len(white) == 4
    for box, _, t in white:
        (k,) = [i for i in range(len(cells["boxes"])) if cells["labels"][i] == 0 and iou(cells["boxes"][i], box) > 0.7]
        assert cells["types"][k] == t
    red = sum(1 for c in expected if c[1] == 1)
    assert abs(result.counts["RBC"] - red) <= 0.1 * red
    assert (cells["boxes"] >= 0).all() and (cells["boxes"][:, 2] <= SIZE[0]).all() and (cells["boxes"][:, 3] <= SIZE[1]).all()


def test_an_image_in_memory_read_as_a_source_gives_the_images_analysis(pipeline):
    field = np.ascontiguousarray(fields()[1])
    alone = pipeline.analyze(field)
    for source in (bloodcv.MatImageSource(field, "field"), ArraySource(field)):
        streamed = pipeline.analyze_source(source, skip_background=False)
        assert json.loads(streamed.to_json())["cells"] == json.loads(alone.to_json())["cells"]
    assert pipeline.analyze(bloodcv.MatImageSource(field)).counts == alone.counts


class ArraySource(bloodcv.ImageSource):
    """An ImageSource written in Python: an array served region by region."""

    def __init__(self, image):
        super().__init__()
        self.image = image

    def levels(self):
        return [((self.image.shape[1], self.image.shape[0]), 1.0)]

    def read(self, region, level):
        x, y, w, h = region
        return np.ascontiguousarray(self.image[y:y + h, x:x + w])


class HalfResolutionDetector(bloodcv.Detector):
    """The shipped detector, said to be trained at 1 micron per pixel."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def detect(self, images):
        return self.inner.detect(images)

    def labels(self):
        return self.inner.labels()

    def input_size(self):
        return self.inner.input_size()

    def tile_size(self):
        return self.inner.tile_size()

    def microns_per_pixel(self):
        return 1.0


def test_a_slide_is_read_at_the_detectors_physical_scale(pipeline, tmp_path):
    # the same fields scanned twice as finely (0.5 micron per pixel): the detector trained at 1 micron reads level 1
    fine = save_slide(canvas((2 * SIZE[0], 2 * SIZE[1]), [(2 * x, 2 * y) for x, y in PLACES], scale=2.0), tmp_path / "fine.tif", mpp=0.5)
    detector = HalfResolutionDetector(bloodcv.TorchScriptDetector(f"{bloodcv.default_model_dir()}/cell_detector.pt"))
    scaled = bloodcv.Pipeline(detector, None)
    result = scaled.analyze_source(bloodcv.OpenSlideSource(str(fine)))
    assert result.slide["downsample"] == pytest.approx(2.0) and result.slide["level"] == 1
    assert result.image_size == (2 * SIZE[0], 2 * SIZE[1]) and result.counts["WBC"] == 4
    cells = result.arrays()
    for box, label, _ in expected_cells(pipeline, scale=2.0):
        if label == 0:
            assert max(iou(b, box) for b in cells["boxes"][cells["labels"] == 0]) > 0.6
    # --mpp overrides the slide's own: said to be 1 micron per pixel, it is read at level 0
    assert scaled.plan(bloodcv.OpenSlideSource(str(fine)), microns_per_pixel=1.0).info["level"] == 0


def test_a_blank_slide_has_no_cells_and_runs_no_tile(pipeline, tmp_path):
    blank = np.empty((1500, 2000, 3), np.uint8)
    blank[:] = BACKGROUND
    result = pipeline.analyze_source(bloodcv.OpenSlideSource(str(save_slide(blank, tmp_path / "blank.tif"))))
    assert len(result) == 0 and result.slide["tiles_skipped"] == result.tiles > 0
    assert result.differential_note == "no cells were classified: the differential is empty"


def test_a_corrupt_tile_is_reported_and_the_others_analysed(pipeline, tmp_path):
    from PIL import Image as PILImage
    path = save_slide(canvas(SIZE, PLACES), tmp_path / "damaged.tif")
    with PILImage.open(path) as im:  # level 0's tile table
        offsets, counts, across = im.tag_v2[324], im.tag_v2[325], -(-SIZE[0] // 256)
    broken = 2 * across + 7  # tile row 2, column 7: inside the second field (1500..2140, 120..600)
    data = bytearray(path.read_bytes())
    data[offsets[broken]:offsets[broken] + counts[broken]] = b"\xff" * counts[broken]
    path.write_bytes(bytes(data))
    result = pipeline.analyze_source(bloodcv.OpenSlideSource(str(path)))
    errors = result.slide["tile_errors"]
    assert errors and all("cannot read level 0" in e for e in errors)
    assert result.counts["WBC"] >= 3  # the other fields' white cells


def test_the_command_line_analyses_a_slide(slide, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([str(ROOT / "build" / "bloodcv"), "analyze", str(slide), "--out", str(out)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "tiles held no tissue and were skipped" in r.stdout
    report = json.loads((out / "smears.json").read_text())
    assert report["image"]["width"] == SIZE[0] and report["counts"]["WBC"] == 4 and report["slide"]["tiles_skipped"] > 0
    overview, density = cv2.imread(str(out / "smears.overview.jpg")), cv2.imread(str(out / "smears.density.jpg"))
    assert overview.shape[:2] == (round(SIZE[1] * 2048 / SIZE[0]), 2048) and density.shape == overview.shape  # at most 2048 a side
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"][0]["slide"]["tiles_skipped"] == report["slide"]["tiles_skipped"]
    bad = subprocess.run([str(ROOT / "build" / "bloodcv"), "analyze", str(slide), "--mpp", "-1", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--mpp" in bad.stderr
