"""TorchScript detectors and classifiers, Python-implemented components, the pipeline and its reports."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import bloodcv
from conftest import smear, xyxy

ROOT = Path(__file__).resolve().parents[2]


def test_torchscript_detector_finds_known_boxes(models):
    detector = bloodcv.TorchScriptDetector(models["marker_yolo"], batch_size=2)
    assert detector.labels() == ["WBC", "RBC"] and detector.input_size() == (256, 256)
    assert json.loads(detector.metadata_json)["decoder"]["kind"] == "yolov5"
    out = detector.detect([smear(256, 256, red=[(30, 40, 50, 60)]), smear(512, 256, blue=[(100, 60, 80, 40)]),
                           smear(100, 100)])
    np.testing.assert_array_equal(out[0]["boxes"], [xyxy(30, 40, 50, 60)])
    assert out[0]["labels"].tolist() == [0]
    np.testing.assert_array_equal(out[1]["boxes"], [xyxy(100, 60, 80, 40)])  # letterboxed and mapped back
    assert len(out[2]["boxes"]) == 0


def test_tile_size_from_the_model_file_sets_the_default_tiles(models):
    plain = bloodcv.TorchScriptDetector(models["marker_yolo"])
    wide = bloodcv.TorchScriptDetector(models["marker_yolo_tile512"])
    assert plain.tile_size() == plain.input_size() == (256, 256)
    assert wide.tile_size() == (512, 512) and wide.input_size() == (256, 256)
    image = smear(600, 400, red=[(100, 100, 60, 60)])
    assert bloodcv.Pipeline(plain).analyze(image).tiles == 6  # 256-pixel tiles
    r = bloodcv.Pipeline(wide).analyze(image)                 # 512-pixel tiles, each halved into the input
    assert r.tiles == 2
    np.testing.assert_allclose(r.arrays()["boxes"], [xyxy(100, 100, 60, 60)], atol=1.0)


def test_anchor_model_carries_predicted_iou(models):
    (out,) = bloodcv.TorchScriptDetector(models["fixed_anchor"]).detect([np.zeros((256, 128, 3), np.uint8)])
    np.testing.assert_allclose(out["boxes"], [[64, 64, 128, 128]], rtol=1e-5)
    np.testing.assert_allclose(out["predicted_ious"], [0.5])


def test_torchscript_classifier(models):
    classifier = bloodcv.TorchScriptClassifier(models["color_classifier"])
    image = np.zeros((100, 100, 3), np.uint8)
    image[:] = (0, 255, 0)
    image[10:30, 10:30] = (0, 0, 255)
    out = classifier.classify(image, np.array([[10, 10, 30, 30], [50, 50, 60, 60]], np.float32))
    assert [classifier.labels()[i] for i in out["labels"]] == ["red", "green"]
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1, rtol=1e-5)


def test_pipeline_merges_seams_and_counts(models, tmp_path):
    pipeline = bloodcv.Pipeline(bloodcv.TorchScriptDetector(models["marker_yolo"]),
                                bloodcv.TorchScriptClassifier(models["color_classifier"]),
                                tiler=bloodcv.GridTiler(tile_size=(256, 256), overlap=0.25))
    image = smear(600, 400, red=[(170, 100, 60, 50)], blue=[(400, 300, 40, 40), (40, 330, 30, 30)])
    result = pipeline.analyze(image)
    assert result.tiles == 6 and len(result) == 3
    assert result.counts == {"WBC": 1, "RBC": 2}
    assert result.type_counts == {"red": 1, "green": 0, "blue": 0}
    assert result.differential["red"] == 100.0
    arrays = result.arrays()
    np.testing.assert_array_equal(arrays["boxes"][0], xyxy(170, 100, 60, 50))
    assert arrays["types"].tolist() == [0, -1, -1]
    assert np.isnan(arrays["type_scores"][1])
    paths = result.write(image, str(tmp_path), "smear", image_id=3)
    report = json.loads(Path(paths["json"]).read_text())
    assert report["schema"] == "bloodcv.analysis" and report["cells"][0]["type"] == "red"
    assert json.loads(Path(paths["coco"]).read_text())[0]["image_id"] == 3
    assert bloodcv.read_image(paths["overlay"]).shape == (400, 600, 3)


def test_python_detector_and_classifier_plug_into_the_pipeline():
    class RedFinder(bloodcv.Detector):
        """Reports the bounding box of the red pixels of each tile (the visible part of a cut cell)."""

        def detect(self, images):
            out = []
            for im in images:
                ys, xs = np.nonzero((im[..., 2] > 230) & (im[..., 0] < 20))
                if len(xs):
                    out.append((np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32),
                                np.array([0.9], np.float32), np.array([0])))
                else:
                    out.append((np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)))
            return out

        def labels(self):
            return ["WBC"]

        def input_size(self):
            return (200, 200)

    class Always(bloodcv.Classifier):
        def classify(self, image, boxes):
            return np.tile(np.array([[0.25, 0.75]], np.float32), (len(boxes), 1))

        def labels(self):
            return ["lymphocyte", "neutrophil"]

    pipeline = bloodcv.Pipeline(RedFinder(), Always(), tiler=bloodcv.GridTiler(tile_size=(200, 200), overlap=0.3))
    image = smear(500, 300, red=[(150, 120, 70, 40)])  # cut by the seams at x 140..200
    result = pipeline.analyze(image)
    np.testing.assert_array_equal(result.arrays()["boxes"], [xyxy(150, 120, 70, 40)])
    assert result.type_counts == {"lymphocyte": 0, "neutrophil": 1}
    assert result.differential == {"lymphocyte": 0.0, "neutrophil": 100.0}


def test_pipeline_from_config_and_cli_give_the_same_cells(models, tmp_path):
    image = smear(600, 400, red=[(170, 100, 60, 50)], blue=[(400, 300, 40, 40)])
    path = tmp_path / "smear.png"
    import cv2
    cv2.imwrite(str(path), image)
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps({"detector": models["marker_yolo"], "classifier": models["color_classifier"],
                                  "tile": [256, 256], "overlap": 0.25}))
    result = bloodcv.Pipeline.from_config(str(config)).analyze(path)
    cli = subprocess.run([str(ROOT / "build" / "bloodcv"), "analyze", str(path), "--config", str(config),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    report = json.loads((tmp_path / "out" / "smear.json").read_text())
    np.testing.assert_allclose([c["box"] for c in report["cells"]], result.arrays()["boxes"])
    assert report["counts"] == result.counts and report["type_counts"] == result.type_counts
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["total_counts"] == {"WBC": 1, "RBC": 1}
    for suffix in [".overlay.jpg", ".csv", ".coco.json"]:
        assert (tmp_path / "out" / f"smear{suffix}").exists()


@pytest.mark.parametrize("name, message", [
    ("corrupt", "not a readable TorchScript archive"),
    ("no_metadata", "no bloodcv.json"),
    ("color_classifier", "task is 'classification'"),
])
def test_broken_models_raise_with_path(models, name, message):
    with pytest.raises(RuntimeError, match=message) as info:
        bloodcv.TorchScriptDetector(models[name])
    assert models[name] in str(info.value)


def test_outputs_that_do_not_fit_and_bad_devices(models):
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(RuntimeError, match=r"does not fit its decoder.*\[3, 6\]"):
        bloodcv.TorchScriptDetector(models["wrong_width"]).detect([image])
    with pytest.raises(RuntimeError, match="non-finite"):
        bloodcv.TorchScriptDetector(models["nan_output"]).detect([image])
    import torch
    if torch.cuda.is_available():  # the model loads there; the checks below still run
        assert bloodcv.TorchScriptDetector(models["marker_yolo"], device="cuda").labels() == ["WBC", "RBC"]
    else:
        with pytest.raises(RuntimeError, match="device 'cuda' was asked for, but CUDA is not available here"):
            bloodcv.TorchScriptDetector(models["marker_yolo"], device="cuda")
    with pytest.raises(ValueError, match="batch_size"):
        bloodcv.TorchScriptDetector(models["marker_yolo"], batch_size=0)
    with pytest.raises(RuntimeError, match="no such file"):
        bloodcv.TorchScriptDetector("/nonexistent.pt")


def test_bad_images(models):
    detector = bloodcv.TorchScriptDetector(models["marker_yolo"])
    pipeline = bloodcv.Pipeline(detector)
    with pytest.raises(ValueError, match="dtype"):
        pipeline.analyze(np.zeros((10, 10, 3), np.float64))
    with pytest.raises(ValueError, match="channels"):
        pipeline.analyze(np.zeros((10, 10, 5), np.uint8))
    with pytest.raises(RuntimeError, match="cannot read image"):
        pipeline.analyze("/nonexistent.png")
    gray16 = np.full((50, 60), 40000, np.uint16)
    assert pipeline.analyze(gray16).image_size == (60, 50)  # converted, not refused


def test_export_checks_metadata(tmp_path):
    import torch
    from bloodcv.export import export_model, load_model
    with pytest.raises(ValueError, match="labels"):
        export_model(torch.nn.Identity(), tmp_path / "m.pt", {"task": "classification", "labels": [], "input_size": [8, 8]},
                     torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="decoder.kind"):
        export_model(torch.nn.Identity(), tmp_path / "m.pt", {"task": "detection", "labels": ["a"], "input_size": [8, 8]},
                     torch.rand(1, 3, 8, 8))
    path = export_model(torch.nn.Flatten(), tmp_path / "ok.pt",
                        {"task": "classification", "labels": ["a"], "input_size": [2, 2]}, torch.rand(1, 3, 2, 2))
    module, meta = load_model(path)
    assert meta["input"]["resize"] == "stretch" and meta["version"] == 1
    assert not list(tmp_path.glob("*.partial"))


def test_cli_analyze_directory_with_a_broken_image(models, tmp_path):
    import cv2
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), smear(300, 200, red=[(10, 10, 40, 40)]))
    (images / "b.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    cli = subprocess.run([str(ROOT / "build" / "bloodcv"), "analyze", str(images), "--detector", models["marker_yolo"],
                          "--classifier", "none", "--tile", "256", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1
    assert "b.png: error: cannot read image" in cli.stderr and "1 of 2 image(s) failed" in cli.stderr
    assert "[1/2] a.png: 1 cells" in cli.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.coco.json", "a.csv", "a.json", "a.overlay.jpg", "coco_images.json", "coco_results.json", "summary.json"]
    (failure,) = json.loads((out / "summary.json").read_text())["failed_images"]
    assert failure["path"] == str(images / "b.png") and "cannot read image" in failure["error"]
