"""The recipes' one config schema: merging, unknown and renamed keys, renamed options, the shipped configs."""
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from bloodcv import train as dispatcher  # noqa: E402
from bloodcv.training import classifier, detector, retinanet  # noqa: E402
from bloodcv.training.config import load_config, resolve_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, content) -> str:
    path = tmp_path / "configs" / "c.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(content))
    return str(path)


def test_a_file_merges_one_level_into_the_defaults(tmp_path):
    cfg = load_config(write(tmp_path, {"epochs": 3, "augment": {"mosaic": 0.0}, "_comment": "ignored"}), detector.DEFAULT_CONFIG)
    assert cfg["epochs"] == 3 and cfg["augment"] == {"mosaic": 0.0}  # the default augment is {}: merged into it
    assert cfg["export"]["path"] == "models/cell_detector.pt" and cfg["lr"] == detector.DEFAULT_CONFIG["lr"]
    # relative paths are taken from the parent of the config's folder
    assert resolve_path("runs/x", cfg) == (tmp_path / "runs" / "x").resolve()
    # a classifier's "model" is replaced whole, not merged
    c = classifier.load_config(write(tmp_path, {"classes": ["a"], "model": {"name": "small_cnn"}}))
    assert c["model"] == {"name": "small_cnn"}


@pytest.mark.parametrize("content, message", [
    ({"num_threads": 2}, 'the key \'num_threads\' was renamed: write "threads" instead'),
    ({"data_root": "x"}, 'write "dataset_root" instead'),
    ({"export": "m.pt"}, '"export" is an object now: write "export": {"path": "m.pt"}'),
    ({"eval": {"conf_threshold": 0.01}}, 'write "eval.score_threshold" instead'),
    ({"eval": {"iou_threshold": 0.6}}, "export.nms_iou_threshold"),
    ({"epoch": 3}, "unknown key 'epoch'"),
])
def test_old_and_unknown_keys_are_refused_with_what_to_write(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(ValueError) as e:
        load_config(path, detector.DEFAULT_CONFIG)
    assert message in str(e.value) and path in str(e.value)


def test_old_options_are_refused_with_their_new_names(capsys):
    with pytest.raises(SystemExit) as e:
        dispatcher.main(["classifier", "--config", "configs/classifier_pbc.json", "--quiet"])
    assert e.value.code == 2 and "--quiet was renamed --no-progress" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    if path.name.startswith("classifier"):
        cfg = classifier.load_config(str(path))
    elif path.name.startswith("retinanet"):
        cfg = load_config(str(path), retinanet.RETINANET_DEFAULTS)
    else:
        cfg = load_config(str(path), detector.DEFAULT_CONFIG)
    assert cfg["export"]["path"].endswith(".pt") and cfg["threads"] == 1
