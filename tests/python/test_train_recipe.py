"""The detector recipe: decoding and export, loss, de-duplicated splits, its evaluation by the library, exact
resume (fast, CPU)."""
import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from bloodcv import data as D  # noqa: E402
from bloodcv.data.dedup import find_duplicates  # noqa: E402
from bloodcv.data.splits import make_detection_splits  # noqa: E402
from bloodcv.training import detector as T  # noqa: E402
from bloodcv.training.config import load_config  # noqa: E402
from bloodcv.training.evaluation import evaluate_detector  # noqa: E402
from bloodcv.export import export_model, load_model  # noqa: E402
from bloodcv.models import YoloDetector, anchors_for_size  # noqa: E402
from bloodcv.models.loss import YoloLoss, bbox_ciou  # noqa: E402

torch.set_num_threads(1)
SMALL = dict(num_classes=3, width=0.125, depth=0.33)


def tiny_model(size=64, seed=0):
    torch.manual_seed(seed)
    return YoloDetector(input_size=size, **SMALL)


# ------------------------------------------------------------------------------ decoding, export
def test_eval_output_decodes_as_the_yolov5_convention(tmp_path):
    size = 64
    model = tiny_model(size).eval()
    feats = {}

    def keep_input(module, inputs, output):  # returns None: the output stays
        feats["x"] = inputs[0]

    model.detect.register_forward_hook(keep_input)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        out = model(x)
    # 3 anchors on 8x8, 4x4 and 2x2 grids, 5 + 3 values each
    assert out.shape == (2, 3 * (8 * 8 + 4 * 4 + 2 * 2), 8)
    assert torch.all((out[..., 4:] >= 0) & (out[..., 4:] <= 1))
    # decode the raw head by hand: level, anchor, row, column order
    det = model.detect
    expected = []
    for i, (f, conv) in enumerate(zip(feats["x"], det.m)):
        p = conv(f).view(2, 3, 8, f.shape[2], f.shape[3]).permute(0, 1, 3, 4, 2).sigmoid()
        s = det.stride[i]
        gy, gx = torch.meshgrid(torch.arange(f.shape[2]), torch.arange(f.shape[3]), indexing="ij")
        cx = (p[..., 0] * 2 - 0.5 + gx) * s
        cy = (p[..., 1] * 2 - 0.5 + gy) * s
        anchors_px = det.anchors[i] * s
        w = (p[..., 2] * 2) ** 2 * anchors_px[:, 0].view(1, 3, 1, 1)
        h = (p[..., 3] * 2) ** 2 * anchors_px[:, 1].view(1, 3, 1, 1)
        expected.append(torch.cat([torch.stack([cx, cy, w, h], -1), p[..., 4:]], -1).reshape(2, -1, 8))
    assert torch.allclose(out, torch.cat(expected, 1), atol=1e-4)


def test_known_head_bias_gives_known_boxes_and_the_export_reproduces_them(tmp_path):
    size = 64
    model = tiny_model(size).eval()
    with torch.no_grad():
        for conv in model.detect.m:
            conv.weight.zero_()
            b = conv.bias.view(3, 8)
            b[:, :4] = 0.0          # sigmoid 0.5: centre of the cell, w, h = the anchor
            b[:, 4] = 2.0           # objectness sigmoid(2)
            b[:, 5:] = torch.tensor([-3.0, 1.0, -1.0])
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        out = model(x)[0]
    # level 0 (stride 8), anchor 1, row 2, column 5
    row = 1 * 64 + 2 * 8 + 5
    a = model.config["anchors"][0]
    assert out[row, :4].tolist() == pytest.approx([5.5 * 8, 2.5 * 8, a[2], a[3]], abs=1e-4)
    assert out[row, 4].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-6)
    assert out[row, 5:].tolist() == pytest.approx(torch.sigmoid(torch.tensor([-3.0, 1.0, -1.0])).tolist(), abs=1e-6)
    # level 2 (stride 32), anchor 2, row 1, column 0
    row = 3 * 64 + 3 * 16 + 2 * 4 + 1 * 2 + 0
    a = model.config["anchors"][2]
    assert out[row, :4].tolist() == pytest.approx([0.5 * 32, 1.5 * 32, a[4], a[5]], abs=1e-4)

    meta = {"task": "detection", "name": "t", "labels": list(D.LABELS), "input_size": [size, size],
            "decoder": {"kind": "yolov5", "score_threshold": 0.25, "nms_iou_threshold": 0.45, "multi_label": False}}
    path = export_model(copy.deepcopy(model).fuse(), tmp_path / "m.pt", meta, x)
    loaded, desc = load_model(path)
    assert desc["decoder"]["kind"] == "yolov5" and desc["input"]["pad_value"] == 114
    with torch.no_grad():
        assert torch.allclose(loaded(x)[0], out, atol=1e-4)


def test_fuse_keeps_the_outputs():
    model = tiny_model(64)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.rand(4, 3, 64, 64) * 2)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fused = copy.deepcopy(model).fuse()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.deepcopy(model).fuse().modules())
    assert torch.allclose(ref, fused, atol=1e-4)


# ----------------------------------------------------------------------------------------- loss
def test_ciou_is_one_for_identical_boxes_and_lower_when_apart():
    a = torch.tensor([[10.0, 10.0, 4.0, 6.0]])
    assert bbox_ciou(a, a).item() == pytest.approx(1.0, abs=1e-5)
    b = torch.tensor([[12.0, 10.0, 4.0, 6.0]])
    c = torch.tensor([[30.0, 10.0, 4.0, 6.0]])
    assert bbox_ciou(a, c).item() < 0 < bbox_ciou(a, b).item() < 1


def test_loss_decreases_on_a_tiny_batch():
    size = 64
    model = tiny_model(size).train()
    loss_fn = YoloLoss(model, size)
    x = torch.full((2, 3, size, size), 0.45)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.5, 0.5],       # WBC
                            [0, 1, 0.2, 0.2, 0.25, 0.25],     # RBC
                            [1, 2, 0.7, 0.3, 0.12, 0.12],     # platelet
                            [1, 1, 0.3, 0.7, 0.3, 0.25]])
    for b, c, cx, cy, w, h in targets.tolist():  # paint the objects so that they can be found
        x1, y1, x2, y2 = (int(v * size) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        x[int(b), int(c), y1:y2, x1:x2] = 0.9
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    losses = []
    for _ in range(12):
        loss, items = loss_fn(model(x), targets)
        assert items.shape == (3,) and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_build_targets_assigns_each_box_to_matching_anchor_and_neighbour_cells():
    size = 64
    torch.manual_seed(0)
    model = YoloDetector(input_size=size, anchors=anchors_for_size(320), **SMALL)  # the 320 anchors
    loss_fn = YoloLoss(model, size)
    preds = [torch.zeros(1, 3, n, n, 8) for n in (8, 4, 2)]
    # one box of 20 x 20 px centred at (27, 13) px: level 0 (stride 8) has anchors of 16-34 px
    t = torch.tensor([[0, 1, 27 / 64, 13 / 64, 20 / 64, 20 / 64]])
    tcls, tbox, indices, _ = loss_fn.build_targets(preds, t)
    b, a, gj, gi = indices[0]
    assert len(b) > 0 and set(tcls[0].tolist()) == {1}
    cells = set(zip(gj.tolist(), gi.tolist()))
    # centre (3.375, 1.625) in grid units: its cell (row 1, column 3) and the two nearest neighbours
    assert (1, 3) in cells and (1, 2) in cells and (2, 3) in cells and len(cells) == 3
    # the box is 20 px: anchors of level 2 (86-152 px, ratio > 4) take none of it
    assert len(indices[2][0]) == 0


# ---------------------------------------------------------------------------------------- splits
def texture(rng, w=320, h=240):
    img = np.full((h, w, 3), 225, np.uint8)
    for _ in range(70):
        c = tuple(int(v) for v in rng.integers(40, 200, 3))
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(4, 22)), int(rng.integers(4, 22)))
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, c, -1)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def write_yolo(dir_img, dir_lbl, name, img, rows=((1, 0.5, 0.5, 0.2, 0.2),)):
    dir_img.mkdir(parents=True, exist_ok=True)
    dir_lbl.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(dir_img / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    (dir_lbl / f"{name}.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))


def make_fake_datasets(root, rng):
    bccd = root / "bccd" / "BCCD"
    (bccd / "JPEGImages").mkdir(parents=True)
    (bccd / "Annotations").mkdir(parents=True)
    (bccd / "ImageSets" / "Main").mkdir(parents=True)
    images = {}
    for i in range(6):
        name = f"BloodImage_{i:05d}"
        img = texture(rng)
        images[name] = img
        cv2.imwrite(str(bccd / "JPEGImages" / f"{name}.jpg"), img)
        (bccd / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>320</width><height>240</height></size><object><name>WBC</name>"
            f"<bndbox><xmin>11</xmin><ymin>21</ymin><xmax>60</xmax><ymax>80</ymax></bndbox></object>"
            f"<object><name>RBC</name><bndbox><xmin>101</xmin><ymin>101</ymin><xmax>140</xmax><ymax>139</ymax>"
            f"</bndbox></object></annotation>")
    test_ids = ["BloodImage_00001", "BloodImage_00003", "BloodImage_00004"]
    (bccd / "ImageSets" / "Main" / "test.txt").write_text("\n".join(test_ids) + "\n")
    (bccd / "ImageSets" / "Main" / "train.txt").write_text("BloodImage_00000\nBloodImage_00002\nBloodImage_00005\n")
    txl = root / "txl-pbc" / "TXL_PBC"
    ti, tl = txl / "images" / "train", txl / "labels" / "train"
    vi, vl = txl / "images" / "val", txl / "labels" / "val"
    t1, t3, t4 = (images[k] for k in test_ids)
    dups_train = {
        "copy_of_1": t1,                                                   # renamed, re-encoded
        "squeezed_1": cv2.resize(t1, (208, 208), interpolation=cv2.INTER_AREA),   # 416x416-style stretch
        "crop_rot_3": np.clip(np.rot90(t3[20:200, 40:300]).astype(int) + 25, 0, 255).astype(np.uint8),
        "mirror_4": np.ascontiguousarray(t4[:, ::-1]),
    }
    for name, img in dups_train.items():
        write_yolo(ti, tl, name, img)
    keep_train = {f"other_{i}": texture(rng) for i in range(4)}
    keep_train["bccd_train_0"] = images["BloodImage_00000"]               # BCCD train image: allowed
    for name, img in keep_train.items():
        write_yolo(ti, tl, name, img)
    dups_val = {"val_copy_of_4": np.clip(t4.astype(int) - 20, 0, 255).astype(np.uint8)}
    keep_val = {f"val_other_{i}": texture(rng) for i in range(2)}
    for name, img in {**dups_val, **keep_val}.items():
        write_yolo(vi, vl, name, img)
    return set(dups_train), set(keep_train), set(dups_val), set(keep_val), set(test_ids)


def test_split_never_puts_a_duplicate_of_an_evaluation_image_into_training(tmp_path):
    rng = np.random.default_rng(7)
    dups_train, keep_train, dups_val, keep_val, test_ids = make_fake_datasets(tmp_path / "datasets", rng)
    splits = make_detection_splits(tmp_path / "datasets", seed=3, cache_dir=tmp_path / "cache", log=lambda m: None)
    train = {s.name for s in splits["train"]}
    val = {s.name for s in splits["val"]}
    assert {s.name for s in splits["test"]} == test_ids
    assert not (train & dups_train) and not (val & dups_val), (train, val)
    assert train == keep_train and val == keep_val
    dedup = splits["summary"]["dedup"]
    assert dedup["dropped_train_dup_of_test"] == len(dups_train)
    assert dedup["dropped_val_dup_of_test"] == len(dups_val)
    assert dedup["dropped"]["train"]["crop_rot_3"] == "BloodImage_00003"
    # deterministic for a seed (order included), also from the cache
    again = make_detection_splits(tmp_path / "datasets", seed=3, cache_dir=tmp_path / "cache", log=lambda m: None)
    assert [s.name for s in again["train"]] == [s.name for s in splits["train"]]
    # test boxes come from the VOC files through the library's reader: as written, what bloodcv eval scores against
    s = splits["test"][0]
    assert s.boxes[0].tolist() == [11, 21, 60, 80] and s.classes.tolist() == [0, 1]


def test_feature_matcher_separates_copies_from_other_images(tmp_path):
    rng = np.random.default_rng(1)
    ref, other = texture(rng), texture(rng)
    cv2.imwrite(str(tmp_path / "ref.jpg"), ref)
    cv2.imwrite(str(tmp_path / "crop.jpg"), cv2.resize(ref[30:210, 60:300], (300, 225)))
    cv2.imwrite(str(tmp_path / "other.jpg"), other)
    mask = find_duplicates([tmp_path / "crop.jpg", tmp_path / "other.jpg"], [tmp_path / "ref.jpg"])
    assert mask.tolist() == [True, False]


# ---------------------------------------------------------------------------------------- resume
def tiny_splits(tmp_path):
    rng = np.random.default_rng(5)
    d = tmp_path / "imgs"
    d.mkdir()
    samples = []
    for i in range(8):
        img = np.full((60, 80, 3), 200, np.uint8)
        boxes, classes = [], []
        for c in range(3):
            x, y = rng.integers(5, 50), rng.integers(5, 35)
            s = [18, 10, 5][c]
            img[y:y + s, x:x + s] = [(120, 60, 160), (190, 90, 90), (90, 40, 140)][c]
            boxes.append([x, y, x + s, y + s])
            classes.append(c)
        cv2.imwrite(str(d / f"{i}.png"), img)
        samples.append(D.Sample(d / f"{i}.png", np.array(boxes, np.float32), np.array(classes), 80, 60))
    return {"train": samples[:6], "val": samples[6:], "test": samples[6:], "summary": {}}


def tiny_config():
    return load_config(None, T.DEFAULT_CONFIG, {"input_size": 64, "width": 0.125, "depth": 0.33, "batch_size": 2,
                                                 "epochs": 3, "max_steps_per_epoch": 2, "warmup_epochs": 1, "lr": 0.01,
                                                 "val_interval": 100, "close_mosaic_epochs": 1, "anchors": None,
                                                 "augment": {"mosaic": 0.7, "blur": 0.5, "noise": 0.5}})


def test_resume_from_a_checkpoint_reproduces_the_next_steps(tmp_path):
    splits = tiny_splits(tmp_path)
    a = T.DetectorTrainer(tiny_config(), tmp_path / "run", splits=splits, log_file=False)
    a.train_epoch(progress=False)
    a.save_checkpoint()
    a.train_epoch(progress=False)
    expected = a.step_losses[2:]

    torch.manual_seed(123)  # a different process history must not matter
    np.random.seed(9)
    b = T.DetectorTrainer(tiny_config(), tmp_path / "run", splits=splits, log_file=False)
    fresh = T.DetectorTrainer(tiny_config(), tmp_path / "other", splits=splits, log_file=False)
    b.load_checkpoint()
    assert b.epoch == 1 and b.step == 2
    b.train_epoch(progress=False)
    assert b.step_losses == pytest.approx(expected, rel=1e-6, abs=1e-7)
    # and the same weights afterwards, EMA included
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(v.float(), w.float(), atol=1e-6), k
    for v, w in zip(a.ema.ema.state_dict().values(), b.ema.ema.state_dict().values()):
        assert torch.allclose(v.float(), w.float(), atol=1e-6)
    # without the checkpoint the second epoch is different (the test can fail)
    fresh.epoch, fresh.step = 1, 2
    fresh.train_epoch(progress=False)
    assert fresh.step_losses != pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_fit_writes_metrics_and_exports_a_loadable_model(tmp_path):
    splits = tiny_splits(tmp_path)
    cfg = tiny_config()
    cfg["epochs"] = 1
    cfg["max_steps_per_epoch"] = 1
    tr = T.DetectorTrainer(cfg, tmp_path / "run", splits=splits, log_file=False)
    tr.fit(progress=False, export=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["val"]["AP50"]) == set(D.LABELS) and "mAP50" in metrics["test"]
    path = tr.export(tmp_path / "model.pt")
    # the logged test AP is the library's evaluation of the exported file
    again = evaluate_detector(path, splits["test"], D.LABELS, cfg["eval"]["score_threshold"])
    assert {k: again[k] for k in ("mAP50", "AP", "AP50")} == {k: metrics["test"][k] for k in ("mAP50", "AP", "AP50")}
    module, meta = load_model(path)
    assert meta["decoder"] == {"kind": "yolov5", "score_threshold": 0.25, "nms_iou_threshold": 0.45,
                               "multi_label": False}
    assert meta["input_size"] == [64, 64] and meta["labels"] == ["WBC", "RBC", "Platelets"]
    assert "training" in meta
    cfg["export"]["nms_iou_threshold_by_label"] = {"WBC": 0.3}  # as configs/detector_yolo.json exports it
    _, meta = load_model(tr.export(tmp_path / "wbc_apart.pt"))
    assert meta["decoder"]["nms_iou_threshold_by_label"] == {"WBC": 0.3}
    with torch.no_grad():
        assert module(torch.rand(1, 3, 64, 64)).shape == (1, 252, 8)
