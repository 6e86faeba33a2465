"""Stain normalisation from Python: the C++ normalisers against an independent numpy Reinhard, a Python
normaliser inside the pipeline, and stain targets from model files and configs."""
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

import bloodcv
from conftest import smear

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "data" / "bccd_BloodImage_00001.jpg"


def reinhard_numpy(image, mean, std):
    """Reinhard in CIE Lab, written from the paper's formula with OpenCV's float Lab conversion."""
    lab = cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64)
    lab = (lab - lab.mean(0)) / lab.std(0) * np.asarray(std) + np.asarray(mean)
    bgr = cv2.cvtColor(lab.reshape(image.shape).astype(np.float32), cv2.COLOR_LAB2BGR)
    return np.clip(np.rint(bgr * 255), 0, 255).astype(np.uint8)


def test_reinhard_matches_an_independent_implementation():
    image = bloodcv.read_image(str(SAMPLE))
    shifted = np.clip(image.astype(np.float32) * [0.8, 1.1, 1.2] + [20, -10, 0], 0, 255).astype(np.uint8)
    reference = bloodcv.ReinhardNormalizer.fit(image)
    ours = reference.normalize(shifted)
    theirs = reinhard_numpy(shifted, reference.mean, reference.std)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
    lab = cv2.cvtColor(ours.astype(np.float32) / 255, cv2.COLOR_BGR2LAB).reshape(-1, 3)
    np.testing.assert_allclose(lab.mean(0), reference.mean, atol=1.0)
    np.testing.assert_allclose(lab.std(0), reference.std, atol=1.0)


def test_macenko_round_trip_through_json():
    image = bloodcv.read_image(str(SAMPLE))
    target = json.loads(bloodcv.fit_stain_target("macenko", image))
    fitted = bloodcv.MacenkoNormalizer.fit(image)
    np.testing.assert_allclose(target["stains"], fitted.stains)
    again = bloodcv.make_stain_normalizer("macenko", json.dumps(target)).normalize(image)
    assert np.abs(again.astype(int) - image.astype(int)).mean() < 3  # already in its own colours


class SwapRedBlue(bloodcv.StainNormalizer):
    def normalize(self, image):
        return np.ascontiguousarray(image[..., ::-1])


def test_a_python_normaliser_changes_what_the_classifier_sees(models):
    detector = bloodcv.TorchScriptDetector(models["marker_yolo"])
    classifier = bloodcv.TorchScriptClassifier(models["color_classifier"])
    image = smear(256, 256, red=[(30, 40, 50, 60)])
    plain = bloodcv.Pipeline(detector, classifier).analyze(image)
    swapped = bloodcv.Pipeline(detector, classifier, stain_normalizer=SwapRedBlue()).analyze(image)
    assert plain.counts["WBC"] == swapped.counts["WBC"] == 1  # the detector saw the original
    assert plain.type_counts["red"] == 1 and swapped.type_counts["blue"] == 1
    both = bloodcv.Pipeline(detector, classifier, stain_normalizer=SwapRedBlue(), stain_before_detection=True).analyze(image)
    assert both.counts == {"WBC": 0, "RBC": 1}  # now the detector saw a blue square


def test_a_python_normaliser_must_return_an_image_of_the_same_size(models):
    class Shrink(bloodcv.StainNormalizer):
        def normalize(self, image):
            return image[:10]

    pipeline = bloodcv.Pipeline(bloodcv.TorchScriptDetector(models["marker_yolo"]), stain_normalizer=Shrink())
    with pytest.raises(ValueError, match=r"uint8 BGR image of shape \(256, 256, 3\)"):
        pipeline.analyze(smear(256, 256))


def test_model_files_carry_the_stain_target_and_malformed_ones_are_refused(models, tmp_path):
    with pytest.raises(RuntimeError, match=r"bad_stain_classifier.pt.*stain.reinhard: stain target: no 'std'"):
        bloodcv.TorchScriptClassifier(models["bad_stain_classifier"])
    image = smear(256, 256, red=[(30, 40, 50, 60)])
    path = tmp_path / "smear.png"
    cv2.imwrite(str(path), image)

    def config(**keys):
        (tmp_path / "c.json").write_text(json.dumps({"detector": models["marker_yolo"], "tile": [256, 256], **keys}))
        return str(tmp_path / "c.json")

    # The file recommends Reinhard to its target: the same as giving that normaliser by hand.
    from_file = bloodcv.Pipeline.from_config(config(classifier=models["color_classifier_stain"])).analyze(str(path))
    by_hand = bloodcv.Pipeline(bloodcv.TorchScriptDetector(models["marker_yolo"]),
                               bloodcv.TorchScriptClassifier(models["color_classifier"]),
                               stain_normalizer=bloodcv.ReinhardNormalizer([60, 10, -10], [20, 10, 10])).analyze(image)
    np.testing.assert_allclose(from_file.arrays()["type_probabilities"], by_hand.arrays()["type_probabilities"], rtol=1e-6)
    off = bloodcv.Pipeline.from_config(config(classifier=models["color_classifier_stain"], stain_normalize="none")).analyze(str(path))
    assert not np.allclose(off.arrays()["type_probabilities"], from_file.arrays()["type_probabilities"])
    with pytest.raises(ValueError, match="'macenko' needs a target: the classifier model file .*color_classifier.pt' carries none"):
        bloodcv.Pipeline.from_config(config(classifier=models["color_classifier"], stain_normalize="macenko"))
    given = config(classifier=models["color_classifier"], stain_normalize="reinhard",
                   stain_target={"mean": [60, 10, -10], "std": [20, 10, 10]})
    np.testing.assert_allclose(bloodcv.Pipeline.from_config(given).analyze(str(path)).arrays()["type_probabilities"],
                               by_hand.arrays()["type_probabilities"], rtol=1e-6)


def test_cli_stain_normalize_option(models, tmp_path):
    cli = [str(ROOT / "build" / "bloodcv"), "analyze", str(SAMPLE), "--detector", models["marker_yolo"], "--out", str(tmp_path / "out")]
    result = subprocess.run(cli + ["--classifier", models["color_classifier"], "--stain-normalize", "macenko"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "'macenko' needs a target" in result.stderr
    result = subprocess.run(cli + ["--stain-normalize", "vahadane"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--stain-normalize" in result.stderr
    result = subprocess.run(cli + ["--classifier", models["color_classifier_stain"], "--stain-normalize", "reinhard"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "bccd_BloodImage_00001.json").read_text())
    assert report["timings_ms"]["stain"] > 0
