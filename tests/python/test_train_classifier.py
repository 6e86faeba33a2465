"""The classifier training recipe: split, IBN, learning, resume, export (all on tiny synthetic data)."""
import json
import zipfile
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from bloodcv.export import load_model  # noqa: E402
from bloodcv.models import IBN, BasicBlockIBN, OverlapViT, RegionSelection, ResNetIBN, SmallCNN, build_classifier  # noqa: E402
from bloodcv.training import classifier as tc  # noqa: E402

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def fake_samples(sizes):
    return [(f"{folder}/{i:04d}.jpg", k, folder) for k, (folder, n) in enumerate(sizes.items()) for i in range(n)]


def test_split_is_stratified_deterministic_and_disjoint():
    sizes = {"a": 100, "b": 37, "c": 20, "d": 600}
    samples = fake_samples(sizes)
    split = tc.stratified_split(samples, FRACTIONS, seed=7)
    all_idx = [i for idx in split.values() for i in idx]
    assert sorted(all_idx) == list(range(len(samples)))  # covers everything exactly once: disjoint
    for name, idx in split.items():
        per_folder = Counter(samples[i][2] for i in idx)
        for folder, n in sizes.items():
            assert abs(per_folder[folder] - n * FRACTIONS[name]) < 1.0, (name, folder, per_folder[folder])
    assert Counter(samples[i][2] for i in split["test"])["d"] == 90
    assert tc.stratified_split(samples, FRACTIONS, seed=7) == split  # deterministic
    other = tc.stratified_split(samples, FRACTIONS, seed=8)
    assert other["test"] != split["test"]  # the seed matters
    # A folder's split does not depend on the other folders in the config (binary ⊂ 8-class test sets).
    only_b = fake_samples({"b": 37})
    split_b = tc.stratified_split(only_b, FRACTIONS, seed=7)
    names_b = {only_b[i][0] for i in split_b["test"]}
    assert names_b == {samples[i][0] for i in split["test"] if samples[i][2] == "b"}


def test_split_of_real_folders(tmp_path):
    for folder, n in {"x": 10, "y": 7}.items():
        (tmp_path / folder).mkdir()
        for i in range(n):
            (tmp_path / folder / f"{i}.jpg").write_bytes(b"")
        (tmp_path / folder / "notes.txt").write_text("not an image")
    samples = tc.list_samples(tmp_path, {"x": 0, "y": 1})
    assert len(samples) == 17 and samples[0][:3] == ("x/0.jpg", 0, "x") and samples[0].box is None
    split = tc.stratified_split(samples, FRACTIONS, seed=0)
    assert [len(split[k]) for k in FRACTIONS] == [7 + 5, 2 + 1, 1 + 1]
    labels, folders = tc.label_groups({"classes": {"mono": ["x"], "poly": ["y", "z"]}})
    assert labels == ["mono", "poly"] and folders == {"x": 0, "y": 1, "z": 1}


def test_ibn_instance_norms_half_the_channels():
    torch.manual_seed(0)
    ibn = IBN(8).eval()  # eval: the BN half uses its running stats (mean 0, var 1): identity
    x = torch.randn(4, 8, 6, 6) * (1 + torch.rand(4, 8, 1, 1) * 5) + torch.randn(4, 8, 1, 1) * 3
    y = ibn(x)
    assert ibn.half == 4
    inst = y[:, :4]
    torch.testing.assert_close(inst.mean((2, 3)), torch.zeros(4, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(inst.var((2, 3), unbiased=False), torch.ones(4, 4), atol=1e-3, rtol=0)
    torch.testing.assert_close(inst, torch.nn.functional.instance_norm(x[:, :4]), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:, 4:], x[:, 4:] / (1 + 1e-5) ** 0.5, atol=1e-5, rtol=1e-5)  # untouched by IN
    # IBN-a sits in the first norm of the blocks of the low stages only.
    net = ResNetIBN(3, widths=(8, 16, 16), depths=(1, 2, 1), stem_width=8, ibn_stages=2)
    blocks = [m for m in net.modules() if isinstance(m, BasicBlockIBN)]
    assert [isinstance(b.bn1, IBN) for b in blocks] == [True, True, True, False]
    assert all(isinstance(b.bn2, torch.nn.BatchNorm2d) for b in blocks)


@pytest.mark.parametrize("spec", [{"name": "small_cnn", "channels": [8, 16, 16], "hidden": 32, "dropout": 0.0},
                                  {"name": "resnet_ibn", "widths": [8, 16], "depths": [1, 1], "stem_width": 8,
                                   "dropout": 0.0},
                                  {"name": "overlap_vit", "dim": 16, "depth": 2, "heads": 2, "dropout": 0.0}])
def test_loss_decreases_on_a_tiny_batch(spec):
    torch.manual_seed(0)
    model = build_classifier(spec, 3, 32)
    x = torch.randn(12, 3, 32, 32)
    y = torch.arange(12) % 3
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.eval()(x).shape == (12, 3)


def test_region_selection_follows_the_layer_weights():
    """Per head, the patch of largest attention in the layer mix the SE block weighs in."""
    select = RegionSelection(2)
    attention = torch.full((1, 2, 2, 5), 0.1)           # [B, layers, heads, patches]
    attention[0, 0, 0, 1] = attention[0, 0, 1, 4] = 0.5  # layer 0 looks at patches 1 (head 0) and 4 (head 1)
    attention[0, 1, 0, 2] = attention[0, 1, 1, 0] = 0.6  # layer 1 at patches 2 and 0
    last = select.excite[2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([10.0, -10.0]))     # weights ≈ (1, 0): layer 0 decides
        index, score = select(attention)
        assert index.tolist() == [[1, 4]] and score[0].tolist() == pytest.approx([0.5, 0.5], abs=1e-3)
        last.bias.copy_(torch.tensor([-10.0, 10.0]))     # layer 1 decides
        assert select(attention)[0].tolist() == [[2, 0]]


def test_overlap_vit_patches_overlap_and_selection_is_trained():
    torch.manual_seed(0)  # weights and inputs: the same run every time
    vit = OverlapViT(4, input_size=96, dim=32, depth=3, heads=4, dropout=0.0)
    conv = vit.patch_embed
    assert conv.kernel_size[0] > conv.stride[0] and vit.tokens == 12 * 12
    with pytest.raises(ValueError, match="patch_kernel > patch_stride"):
        OverlapViT(4, patch_kernel=4, patch_stride=4)
    x = torch.randn(3, 3, 96, 96)
    logits, embedding = vit.logits_and_embedding(x)
    assert logits.shape == (3, 4) and embedding.shape == (3, 32)
    logits.sum().backward()
    assert vit.select.excite[0].weight.grad.abs().sum() > 0  # the SE weights learn through the token gates
    # The traced model (the exported form) selects per image as the eager one does, at any batch size.
    vit.eval()
    traced = torch.jit.trace(vit, torch.randn(2, 3, 96, 96))
    y = torch.randn(5, 3, 96, 96)
    torch.testing.assert_close(traced(y), vit(y))
    torch.testing.assert_close(traced(y[2:3]), vit(y)[2:3], atol=1e-5, rtol=1e-5)
    plain = OverlapViT(4, input_size=96, dim=32, depth=3, heads=4, select_regions=False)
    assert plain.select is None and plain(x).shape == (3, 4)


def tiny_cfg(**over):
    cfg = tc.load_config(None, {"classes": ["a", "b", "c"], "input_size": 32, "batch_size": 8,
                                "epochs": 2, "seed": 3,
                                "model": {"name": "resnet_ibn", "widths": [8, 16], "depths": [1, 1], "stem_width": 8},
                                **over})
    cfg["num_classes"] = 3
    return cfg


def tiny_data(n=24, size=48):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(n) % 3
    images = (torch.rand(n, 3, size, size, generator=g) * 60).to(torch.uint8) + 100
    for k in range(3):  # a learnable colour per class
        images[labels == k, k] += 80
    centre, half = torch.zeros(n, 2), torch.full((n, 2), 0.3)
    return {"images": images, "centre": centre, "half": half, "labels": labels, "train": list(range(16)), "val": list(range(16, 24))}


def test_augmented_batches_are_seeded_and_normalised():
    cfg = tiny_cfg()
    d = tiny_data()
    a = tc.make_batch(d["images"][:8], d["centre"][:8], d["half"][:8], cfg, torch.Generator().manual_seed(5), augment=True)
    b = tc.make_batch(d["images"][:8], d["centre"][:8], d["half"][:8], cfg, torch.Generator().manual_seed(5), augment=True)
    c = tc.make_batch(d["images"][:8], d["centre"][:8], d["half"][:8], cfg, torch.Generator().manual_seed(6), augment=True)
    plain = tc.make_batch(d["images"][:8], d["centre"][:8], d["half"][:8], cfg)
    assert a.shape == (8, 3, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
    # Without augmentation a flat patch stays flat: value v → (v/255 − mean) / std.
    flat = torch.full((1, 3, 48, 48), 200, dtype=torch.uint8)
    out = tc.make_batch(flat, torch.zeros(1, 2), torch.tensor([[0.3, 0.3]]), cfg)
    expected = (200 / 255 - torch.tensor(cfg["input"]["mean"])) / torch.tensor(cfg["input"]["std"])
    torch.testing.assert_close(out[0, :, 16, 16], expected, atol=1e-4, rtol=0)


def test_resume_reproduces_the_next_steps(tmp_path):
    cfg, data = tiny_cfg(), tiny_data()
    quiet = dict(progress=False, log=lambda *_: None)
    full = tc.train(cfg, tmp_path / "full", data, **quiet)
    tc.train(cfg, tmp_path / "cut", data, max_epochs=1, **quiet)  # "dies" after epoch 1
    # Plain types and tensors only (no pickled numpy arrays): it loads with another numpy or torch version.
    with zipfile.ZipFile(tmp_path / "cut" / "last.pt") as z:
        assert b"multiarray" not in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    ck = torch.load(tmp_path / "cut" / "last.pt")
    assert ck["epoch"] == 0 and {"model", "optimizer", "scheduler", "rng"} <= set(ck)
    resumed = tc.train(cfg, tmp_path / "cut", data, resume=True, **quiet)
    a, b = full["history"][1]["step_losses"], resumed["history"][1]["step_losses"]
    assert len(a) == 2 and a == b, (a, b)
    assert full["history"][0]["step_losses"] == resumed["history"][0]["step_losses"]
    for k, v in full["model"].state_dict().items():
        assert torch.equal(v, resumed["model"].state_dict()[k]), k


def test_training_starts_from_another_classifier_file(tmp_path):
    """init_weights: the body of a classifier with other labels is copied, its head is not; another network is refused."""
    body = {"name": "resnet_ibn", "widths": [8, 16], "depths": [1, 1], "stem_width": 8}
    donor_cfg = tiny_cfg(model=body)
    donor = build_classifier(body, 5, 32)  # five labels: the head's shape differs
    with torch.no_grad():
        for t in donor.parameters():
            t.uniform_(-1, 1)
    tc.export(donor, donor_cfg, list("vwxyz"), tmp_path / "donor.pt", {"data": {}})
    cfg, data = tiny_cfg(init_weights=str(tmp_path / "donor.pt"), epochs=1), tiny_data()
    lines = []
    torch.manual_seed(123)
    model = build_classifier(body, 3, 32)
    fresh = tc.load_initial_weights(model, tmp_path / "donor.pt")
    assert fresh == ["fc.weight", "fc.bias"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, donor.state_dict()[k]) != (k in fresh), k
    # The recipe does the same before its first step (and logs it); with resume the checkpoint decides.
    trained = tc.train(dict(cfg, lr=0.0, weight_decay=0.0), tmp_path / "run", data, progress=False, log=lines.append)
    assert lines[0] == f"initialised from {tmp_path / 'donor.pt'}; as built: fc.weight, fc.bias"
    donor_state = donor.state_dict()
    assert torch.equal(trained["model"].stem[0].weight, donor_state["stem.0.weight"])
    other = {"name": "resnet_ibn", "widths": [8, 16, 32], "depths": [1, 1, 1], "stem_width": 8}
    with pytest.raises(ValueError, match="another architecture .*stages.2"):
        tc.load_initial_weights(build_classifier(other, 3, 32), tmp_path / "donor.pt")
    torch.save({"model": donor.state_dict()}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="checkpoint.pt: not a TorchScript archive"):  # a recipe checkpoint is not a model file
        tc.load_initial_weights(build_classifier(body, 3, 32), tmp_path / "checkpoint.pt")


def test_cell_box_and_runtime_crop():
    img = np.full((120, 120, 3), (200, 215, 235), np.uint8)  # pale background (BGR)
    cv2.circle(img, (64, 58), 18, (150, 60, 110), -1)  # purple "nucleus"
    box, found = tc.estimate_cell_box(img)
    assert found
    np.testing.assert_allclose(box, [46, 40, 83, 77], atol=2)
    # Clipped to (0, 0, 10, 10) first, as the runtime does, then 5 px of context: (-5, -5) to (15, 15).
    crop = tc.crop_like_runtime(img, [-10, -10, 10, 10], 0.5, pad_value=114)
    assert crop.shape == (20, 20, 3) and (crop[:5, :] == 114).all() and (crop[:, :5] == 114).all()
    assert (crop[5:, 5:] == img[:15, :15]).all()
    blank = np.full((100, 100, 3), 220, np.uint8)
    box, found = tc.estimate_cell_box(blank, fallback_side=0.4)
    assert not found and np.allclose(box, [30, 30, 70, 70])


@pytest.mark.parametrize("model", [
    {"model": {"name": "small_cnn", "channels": [8, 8, 8], "hidden": 16}},
    {"model": {"name": "resnet_ibn", "widths": [8, 16], "depths": [1, 1], "stem_width": 8},
     "metric_loss": {"kind": "center_triplet", "weight": 1.0, "margin": 0.3}},
    {"model": {"name": "overlap_vit", "dim": 16, "depth": 2, "heads": 2},
     "metric_loss": {"kind": "contrastive", "weight": 1.0, "margin": 0.4}}], ids=["cnn", "ibn_triplet", "vit_contrastive"])
def test_end_to_end_run_exports_a_loadable_model(tmp_path, model):
    """The whole command on a tiny dataset: split.csv, metrics.json and a bloodcv model file."""
    from bloodcv import train as dispatcher
    rng = np.random.default_rng(0)
    colours = {"basophil": (140, 40, 90), "neutrophil": (170, 90, 160), "platelet": (120, 60, 100)}
    for k, (folder, colour) in enumerate(colours.items()):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for i in range(10):
            img = np.full((72, 72, 3), (200, 215, 235), np.uint8)
            r = 10 + 4 * k
            cv2.circle(img, (36 + int(rng.integers(-3, 4)), 36), r, colour, -1)
            cv2.imwrite(str(tmp_path / "data" / folder / f"{i}.png"), img)
    cfg = {"name": "tiny", "classes": list(colours), "dataset_root": str(tmp_path / "data"), "input_size": 32,
           "cache_dir": str(tmp_path / "cache"), "batch_size": 8, "epochs": 1, "crop_padding": 0.15,
           "split": {"train": 0.6, "val": 0.2, "test": 0.2}, **model}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out, model_path = tmp_path / "run", tmp_path / "m.pt"
    args = ["classifier", "--config", str(tmp_path / "cfg.json"), "--out", str(out), "--export-path", str(model_path),
            "--no-progress"]
    assert dispatcher.main(args) == 0
    module, meta = load_model(model_path)
    assert meta["task"] == "classification" and meta["labels"] == list(colours)
    assert meta["input_size"] == [32, 32] and meta["input"]["resize"] == "stretch" and meta["crop_padding"] == 0.15
    assert "Acevedo" in meta["training"]["data"]["citation"] and meta["training"]["split"]["counts"]["test"] == 6
    assert module(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert ("train_metric_loss" in metrics["history"][0]) == ("metric_loss" in model)
    assert metrics["test"]["n"] == 6 and len(metrics["test"]["confusion_matrix"]["matrix"]) == 3
    rows = (out / "split.csv").read_text().splitlines()
    assert rows[0] == "split,label,file" and len(rows) == 31
    for image in (out / "curves.png", tmp_path / "m.curves.png", out / "confusion.png", tmp_path / "m.confusion.png"):
        assert cv2.imread(str(image)) is not None, image
    # --export-only reloads last.pt and writes the same model again.
    model_path.unlink()
    assert dispatcher.main(args + ["--export-only"]) == 0
    module2, _ = load_model(model_path)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(module2(x), module(x))


@pytest.mark.parametrize("box", [[20, 30, 70, 60], [-10, 40, 40, 90]])  # inside; across the left edge
def test_training_inputs_match_the_runtime_crop(box):
    """make_batch without augmentation samples the pixels the C++ runtime's crop-and-stretch samples."""
    cfg = tiny_cfg(crop_padding=0.2)
    rng = np.random.default_rng(0)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8), (0, 0), 2.0)
    expected = tc.runtime_input(tc.crop_like_runtime(bgr, box, 0.2, 114), 32, cfg["input"])
    images = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)[None]
    centre, half = tc.normalised_boxes(torch.tensor([box], dtype=torch.float32), 120, 100)
    got = tc.make_batch(images, centre, half, cfg)[0]
    tol = 1.5 / 255 / cfg["input"]["std"][0]  # OpenCV's fixed-point 8-bit resize rounds
    assert (got - expected).abs().max() < tol
    shifted = tc.make_batch(images, centre + 0.05, half, cfg)[0]
    assert (shifted - expected).abs().max() > 10 * tol  # the comparison can tell a misplaced crop


def test_plain_patch_embedding_has_the_same_token_grid_without_overlap():
    """The ablation's plain ViT: 8-pixel patches of the input (no stem), as many tokens as the overlapping embedding."""
    plain = OverlapViT(3, input_size=64, dim=16, depth=2, heads=2, patch_embedding="plain", select_regions=False)
    overlap = OverlapViT(3, input_size=64, dim=16, depth=2, heads=2)
    assert plain.tokens == overlap.tokens == 64
    assert isinstance(plain.stem, torch.nn.Identity)
    assert plain.patch_embed.kernel_size == plain.patch_embed.stride == (8, 8)
    x = torch.zeros(1, 3, 64, 64)
    x[..., 8:16, 8:16] = 1  # one patch changes: only that token's embedding moves
    tokens = plain.patch_embed(x).flatten(2)[0].T - plain.patch_embed(torch.zeros_like(x)).flatten(2)[0].T
    assert torch.nonzero(tokens.abs().sum(1) > 1e-6).flatten().tolist() == [9]
    assert plain(x).shape == (1, 3)
    with pytest.raises(ValueError, match="overlap or plain"):
        OverlapViT(3, input_size=64, dim=16, depth=2, heads=2, patch_embedding="shifted")


def test_gpu_train_round_trip(tmp_path):
    """scripts/gpu_train.py as its docstring runs it (here on the CPU): pack the split and the train/val images,
    train from the pack, then --export-only evaluates on the original test images and exports."""
    import subprocess
    import sys
    from pathlib import Path
    from bloodcv import train as dispatcher
    repo = Path(__file__).resolve().parents[2]
    for k, (folder, colour) in enumerate({"a": (140, 40, 90), "b": (170, 90, 160)}.items()):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for i in range(10):
            img = np.full((64, 64, 3), (200, 215, 235), np.uint8)
            cv2.circle(img, (32, 32), 10 + 6 * k, colour, -1)
            cv2.imwrite(str(tmp_path / "data" / folder / f"{i}.png"), img)
    cfg = {"name": "tiny", "classes": ["a", "b"], "dataset_root": str(tmp_path / "data"), "input_size": 32,
           "cache_dir": str(tmp_path / "cache"), "batch_size": 4, "epochs": 2,
           "model": {"name": "overlap_vit", "dim": 16, "depth": 2, "heads": 2, "select_regions": True},
           "split": {"train": 0.6, "val": 0.2, "test": 0.2}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    script = [sys.executable, str(repo / "scripts" / "gpu_train.py")]
    config = ["--config", str(tmp_path / "cfg.json")]
    subprocess.run(script + ["pack", *config, "--out", str(tmp_path / "pack")], check=True, capture_output=True)
    packed = sorted(p.relative_to(tmp_path / "pack" / "images").as_posix() for p in (tmp_path / "pack" / "images").rglob("*.jpg"))
    rows = [r.split(",") for r in (tmp_path / "pack" / "split.csv").read_text().splitlines()[1:]]
    assert len(rows) == 20 and packed == sorted(f[:-len(".png")] + ".jpg" for split, _, f in rows if split != "test")
    subprocess.run(script + ["train", *config, "--pack", str(tmp_path / "pack"), "--out", str(tmp_path / "gpu"),
                             "--device", "cpu", "--set", "model.select_regions=false"], check=True, capture_output=True)
    weights = torch.load(tmp_path / "gpu" / "last.pt")
    assert set(weights) == {"model", "history", "epoch", "elapsed_s"} and len(weights["history"]) == 2
    (tmp_path / "run").mkdir()
    (tmp_path / "gpu" / "last.pt").rename(tmp_path / "run" / "last.pt")
    assert dispatcher.main(["classifier", *config, "--out", str(tmp_path / "run"), "--export-path", str(tmp_path / "m.pt"),
                            "--export-only", "--no-progress", "--set", "model.select_regions=false"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["test"]["n"] == 4
    module, meta = load_model(tmp_path / "m.pt")
    assert meta["labels"] == ["a", "b"] and module(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
