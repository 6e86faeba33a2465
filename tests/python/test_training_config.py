"""The recipes' one config schema: merging, unknown and renamed keys, renamed options, the shipped configs."""
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from bloodcv import train as dispatcher  # noqa: E402
from bloodcv.training import classifier, detector, retinanet  # noqa: E402
from bloodcv.training.common import plot_history  # noqa: E402
from bloodcv.training.config import apply_settings, load_config, resolve_path  # noqa: E402

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


def test_set_reaches_into_objects_and_refuses_typos():
    cfg = {"epochs": 30, "model": {"name": "overlap_vit", "select_regions": True}, "metric_loss": {"kind": "contrastive"}}
    apply_settings(cfg, ["model.select_regions=false", "metric_loss=null", "epochs=60", 'model.name="resnet_ibn"'])
    assert cfg == {"epochs": 60, "model": {"name": "resnet_ibn", "select_regions": False}, "metric_loss": None}
    for setting, message in (("model.selct_regions=false", "unknown key 'model.selct_regions'"),
                             ("epoch=3", "unknown key 'epoch'"), ("epochs.x=3", "epochs is not an object"),
                             ("epochs", "write KEY=JSON"), ("model.name=resnet", "not JSON")):
        with pytest.raises(ValueError, match=message):
            apply_settings(cfg, [setting])
    assert cfg["epochs"] == 60  # a refused setting changes nothing


def test_the_recipes_take_set_on_the_command_line(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'model.widht'"):
        dispatcher.main(["classifier", "--config", str(ROOT / "configs/classifier_bone_marrow.json"), "--out", str(tmp_path),
                         "--set", "model.widht=3"])


def test_training_curves_plot_losses_and_nested_scores(tmp_path):
    history = [{"epoch": 1, "box": 0.1, "obj": 0.2, "cls": 0.01},
               {"epoch": 2, "box": 0.08, "obj": 0.15, "cls": 0.01, "val": {"mAP50": 0.9, "AP75": 0.5}}]
    import cv2
    path = plot_history(history, tmp_path / "curves.png", "test")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[1] > image.shape[0] > 100
    assert plot_history([{"epoch": 1, "lr": 0.1}], tmp_path / "none.png", "nothing to draw") is None
    assert not (tmp_path / "none.png").exists()
