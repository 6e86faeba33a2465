"""The RetinaNet recipe: each label assigner trains (the loss falls on a tiny synthetic set), and the
export runs in the C++ runtime."""
import cv2
import numpy as np
import pytest
import torch

import bloodcv
from bloodcv import data as D
from bloodcv.data.detection import collate
from bloodcv.export import load_model
from bloodcv.training.config import load_config
from bloodcv.training.retinanet import RETINANET_DEFAULTS, RetinaTrainer


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("smears")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(4):
        image = np.full((160, 160, 3), (200, 180, 210), np.uint8)
        boxes = []
        for _ in range(3):
            x, y = rng.integers(10, 110, 2)
            s = int(rng.integers(20, 40))
            cv2.circle(image, (int(x + s / 2), int(y + s / 2)), s // 2, (120, 60, 150), -1)
            boxes.append([x, y, x + s, y + s])
        path = root / f"s{i}.png"
        cv2.imwrite(str(path), image)
        samples.append(D.Sample(path, np.array(boxes, np.float32), np.zeros(3, np.int64), 160, 160))
    return {"train": samples, "val": samples[:2], "test": samples[:2], "summary": {}}


@pytest.mark.parametrize("assigner", ["max_iou", "atss", "paa", "ota"])
def test_loss_falls_with_each_assigner(tiny_splits, tmp_path, assigner):
    cfg = load_config(None, RETINANET_DEFAULTS, {"input_size": 128, "width": 16, "channels": 32, "batch_size": 4,
                             "epochs": 1, "lr": 0.002, "warmup_epochs": 0.0, "assigner": assigner, "augment": {"mosaic": 0.0},
                             "anchors": {**RETINANET_DEFAULTS["anchors"], "sizes": [16, 32, 64]}})
    trainer = RetinaTrainer(cfg, tmp_path, splits=tiny_splits, log_file=False)
    images, targets, _ = collate([trainer.train_ds[i] for i in range(4)])
    losses = []
    for _ in range(8):
        trainer.train_step(images, targets)
        losses.append(trainer.step_losses[-1])
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses


def test_export_runs_in_the_cpp_runtime(tiny_splits, tmp_path):
    cfg = load_config(None, RETINANET_DEFAULTS, {"input_size": 128, "width": 16, "channels": 32, "batch_size": 4,
                             "epochs": 1})
    trainer = RetinaTrainer(cfg, tmp_path, splits=tiny_splits, log_file=False)
    path = trainer.export(tmp_path / "retina.pt")
    detector = bloodcv.TorchScriptDetector(str(path), score_threshold=0.0)
    assert detector.labels() == list(D.LABELS) and detector.input_size() == (128, 128)
    (out,) = detector.detect([cv2.imread(str(tiny_splits["train"][0].image))])
    assert "predicted_ious" in out and len(out["boxes"]) > 0
    assert load_model(path)[1]["tile_size"] == [640, 640]  # the field it was trained on: the pipeline's tile
