"""Every model in models/ loads, describes itself, has its card, and makes a known prediction on a
bundled sample."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import bloodcv
from bloodcv.export import load_model

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
SAMPLES = ROOT / "examples" / "data"
SHIPPED = ["cell_detector", "retinanet_pan_iou", "wbc_classifier", "pbc_classifier", "wbc_binary_classifier",
           "bone_marrow_classifier", "bone_marrow_vit"]


@pytest.mark.parametrize("name", SHIPPED)
def test_model_file_metadata_and_card(name):
    path = MODELS / f"{name}.pt"
    assert path.stat().st_size < 20 * 2 ** 20
    _, meta = load_model(path)
    assert meta["format"] == "bloodcv-model" and meta["task"] in ("detection", "classification")
    assert meta["labels"] and len(meta["input_size"]) == 2
    assert "recipe" in json.dumps(meta.get("training", {}))
    card = (MODELS / f"{name}.md").read_text()
    assert f"{name}.pt" in card and "python -m bloodcv.train" in card


def sample_boxes():
    objects = json.loads((SAMPLES / "bccd_BloodImage_00001.json").read_text())["objects"]
    return {label: np.array([o["box"] for o in objects if o["label"] == label], np.float32) for label in ("WBC", "RBC")}


@pytest.mark.parametrize("name", ["cell_detector", "retinanet_pan_iou"])
def test_detector_finds_the_sample_white_cell_and_red_cells(name):
    detector = bloodcv.TorchScriptDetector(str(MODELS / f"{name}.pt"))
    assert detector.labels() == ["WBC", "RBC", "Platelets"]
    result = bloodcv.Pipeline(detector).analyze(str(SAMPLES / "bccd_BloodImage_00001.jpg"))
    cells = result.arrays()
    truth = sample_boxes()
    wbc = cells["boxes"][cells["labels"] == 0]
    assert len(wbc) == 1 and bloodcv.box_iou(wbc, truth["WBC"]).max() > 0.7
    rbc = cells["boxes"][cells["labels"] == 1]
    matched = (bloodcv.box_iou(truth["RBC"], rbc).max(axis=1) >= 0.5).sum() if len(rbc) else 0
    assert matched >= 0.7 * len(truth["RBC"])


@pytest.mark.parametrize("name, sample, expected", [
    ("wbc_classifier", "pbc_neutrophil_BNE_131871.jpg", "neutrophil"),
    ("wbc_classifier", "bone_marrow_EOS_00003.jpg", "eosinophil"),
    ("pbc_classifier", "pbc_neutrophil_BNE_131871.jpg", "neutrophil"),
    ("wbc_binary_classifier", "pbc_neutrophil_BNE_131871.jpg", "polynuclear"),
    ("bone_marrow_classifier", "bone_marrow_EOS_00003.jpg", "EOS"),
    ("bone_marrow_vit", "bone_marrow_EOS_00003.jpg", "EOS")])
def test_classifier_types_its_sample_cell(name, sample, expected):
    classifier = bloodcv.TorchScriptClassifier(str(MODELS / f"{name}.pt"))
    image = bloodcv.read_image(str(SAMPLES / sample))
    h, w = image.shape[:2]
    out = classifier.classify(image, np.array([[0.2 * w, 0.2 * h, 0.8 * w, 0.8 * h]], np.float32))  # the centred cell
    assert classifier.labels()[out["labels"][0]] == expected


def test_default_pair_types_the_sample_smear_white_cell():
    pipeline = bloodcv.Pipeline(bloodcv.TorchScriptDetector(str(MODELS / "cell_detector.pt")),
                                bloodcv.TorchScriptClassifier(str(MODELS / "wbc_classifier.pt")))
    result = pipeline.analyze(str(SAMPLES / "bccd_BloodImage_00001.jpg"))
    assert result.counts["WBC"] == 1
    assert result.type_counts["neutrophil"] == 1 and result.differential["neutrophil"] == 100.0  # a segmented neutrophil
    assert result.differential_note == ""


def test_default_classifier_carries_its_calibration_and_stain_targets():
    classifier = bloodcv.TorchScriptClassifier(str(MODELS / "wbc_classifier.pt"))
    assert classifier.labels() == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert 0 < classifier.temperature < 1 and classifier.uncertainty_threshold() == 0.5
    stain = json.loads(classifier.metadata_json)["stain"]
    assert stain["default"] == "none" and {"reinhard", "macenko"} <= set(stain)


DATASETS = ROOT.parent / "shared" / "datasets"
BCCD = DATASETS / "bccd" / "BCCD"


@pytest.mark.skipif(not BCCD.exists(), reason=f"the BCCD dataset is not at {BCCD}")
@pytest.mark.parametrize("name", ["cell_detector", "retinanet_pan_iou"])
def test_detectors_score_as_their_cards_say(name, tmp_path):
    """The shipped detectors, evaluated again as their cards were (scripts/evaluate_models.py), give the
    committed numbers: refactoring the runtime must not move them."""
    card = json.loads((ROOT / "models" / f"{name}.eval.json").read_text())
    command = [str(ROOT / "build" / "bloodcv"), "eval", "--gt", str(BCCD / "Annotations"), "--labels", "WBC,RBC,Platelets",
               "--split", str(BCCD / "ImageSets" / "Main" / "test.txt"), "--detector", str(ROOT / "models" / f"{name}.pt"),
               "--images", str(BCCD / "JPEGImages"), "--max-dets", ",".join(map(str, card["options"]["max_detections"])),
               "--out", str(tmp_path)]
    if name == "retinanet_pan_iou":
        command += ["--score-threshold", "0.05"]  # its card's AP is at the COCO protocol's threshold
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    now = json.loads((tmp_path / "eval.json").read_text())
    assert now["predictions"] == card["predictions"]
    for metric in ("AP", "AP50", "AP75"):
        assert now["coco"][metric] == pytest.approx(card["coco"][metric], abs=1e-9), metric


@pytest.mark.skipif(not BCCD.exists(), reason=f"the BCCD dataset is not at {BCCD}")
def test_the_recipes_evaluation_gives_bloodcv_evals_numbers():
    """One AP per model: the detector recipes' evaluation (bloodcv.training.evaluation, with the recipes' reader)
    of the shipped detector on BCCD's test split gives its card's numbers, which `bloodcv eval` gives (test above)."""
    from bloodcv.data import LABELS, list_voc_split, read_ids
    from bloodcv.training.evaluation import evaluate_detector

    card = json.loads((ROOT / "models" / "cell_detector.eval.json").read_text())
    samples = list_voc_split(BCCD, read_ids(BCCD / "ImageSets" / "Main" / "test.txt"))
    report = evaluate_detector(ROOT / "models" / "cell_detector.pt", samples, LABELS)["report"]
    assert report["predictions"] == card["predictions"] and report["images"] == card["images"]
    for metric in ("AP", "AP50", "AP75"):
        assert report["coco"][metric] == pytest.approx(card["coco"][metric], abs=1e-9), metric


@pytest.mark.skipif(not (DATASETS / "txl-pbc").exists(), reason=f"TXL-PBC is not under {DATASETS}")
def test_the_detector_card_per_source_table_is_what_the_script_computes(tmp_path):
    """models/cell_detector.sources.json (the card's table by source, labels as published and as reviewed)
    is what scripts/evaluate_models.py --sources computes now: the corrections still fit the dataset and
    the card's figures are the code's."""
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "evaluate_models.py"), "--sources",
                    "--datasets", str(DATASETS), "--out", str(tmp_path)], check=True, capture_output=True, timeout=900)
    card = json.loads((MODELS / "cell_detector.sources.json").read_text())
    now = json.loads((tmp_path / "cell_detector.sources.json").read_text())
    assert [(r["labels"], r["source"]) for r in now["rows"]] == [(r["labels"], r["source"]) for r in card["rows"]]
    for a, b in zip(now["rows"], card["rows"]):
        assert a["classes"] == b["classes"] and a["AP75"] == pytest.approx(b["AP75"], abs=1e-9), (a["labels"], a["source"])
        assert a["white_cells_reported"] == b["white_cells_reported"], a["source"]
        assert a["white_cells_reported"]["pairs_iou_over_0.2"] == 0, a["source"]  # no white cell counted twice
    reviewed = {r["source"]: r for r in now["rows"] if r["labels"] == "reviewed"}
    published = {r["source"]: r for r in now["rows"] if r["labels"] == "as published"}
    assert reviewed["575×575"]["classes"]["WBC"]["boxes"] == published["575×575"]["classes"]["WBC"]["boxes"] - 2
