"""The classifier recipe across sources: samples and their splits, balanced draws, the stain and optics
augmentations, temperature calibration and its error measure, each against hand-computed answers."""
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from bloodcv.training import classifier as tc
from bloodcv.data.cells import CellSample, bccd_samples, split_samples

ROOT = Path(__file__).resolve().parents[2]
BCCD = ROOT.parent / "shared" / "datasets" / "bccd"
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_fixed_splits_are_kept_and_the_rest_split_in_proportion():
    samples = [CellSample(f"a{i}", 0, "src/a", "src") for i in range(100)]
    samples += [CellSample(f"b{i}", 1, "bccd/b", "bccd", (0, 0, 1, 1), "test" if i < 20 else None) for i in range(105)]
    split = split_samples(samples, FRACTIONS, seed=3)
    assert sorted(i for idx in split.values() for i in idx) == list(range(len(samples)))
    b_of = {n: [i for i in idx if samples[i].group == "bccd/b"] for n, idx in split.items()}
    assert b_of["test"] == list(range(100, 120))  # exactly the fixed ones
    assert (len(b_of["train"]), len(b_of["val"])) == (70, 15)  # 85 free, split 0.7 : 0.15
    a_of = Counter(samples[i].group for i in split["test"])
    assert a_of["src/a"] == 15
    assert split_samples(samples, FRACTIONS, seed=3) == split


@pytest.mark.skipif(not BCCD.exists(), reason=f"the BCCD dataset is not at {BCCD}")
def test_bccd_cells_are_fields_with_one_type_and_one_white_cell():
    labels = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    types = {t.upper(): t for t in labels}
    samples = bccd_samples(BCCD, types, labels)
    test_ids = set((BCCD / "BCCD" / "ImageSets" / "Main" / "test.txt").read_text().split())
    test = [s for s in samples if s.fixed_split == "test"]
    assert len(test) == 57  # the chain evaluation's BCCD test cells (models/pipeline.chain.md)
    assert all(Path(s.file).stem in test_ids for s in test)
    assert not any(Path(s.file).stem in test_ids for s in samples if s.fixed_split is None)
    first = next(s for s in samples if Path(s.file).stem == "BloodImage_00000")
    assert labels[first.label] == "neutrophil" and first.group == "bccd/neutrophil"
    assert first.box == (260.0, 177.0, 491.0, 376.0)  # its VOC WBC box, as bloodcv.eval.read_voc reads it


def test_balanced_draws_favour_small_groups_by_the_power():
    groups = [0] * 90 + [1] * 10
    cfg = {"sampling": "balanced", "balance_power": 0.5}
    order = tc.epoch_order(torch.arange(100), groups, cfg, torch.Generator().manual_seed(0))
    share = (order >= 90).float().mean().item()
    expected = 10 * 10 ** -0.5 / (10 * 10 ** -0.5 + 90 * 90 ** -0.5)  # 0.25, where shuffling gives 0.10
    assert len(order) == 100 and abs(share - expected) < 0.1
    many = tc.epoch_order(torch.arange(100), groups, cfg, torch.Generator().manual_seed(1))
    assert not torch.equal(order, many)
    plain = tc.epoch_order(torch.arange(100), groups, {"sampling": "shuffle"}, torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(100))
    with pytest.raises(ValueError, match="sampling must be"):
        tc.epoch_order(torch.arange(4), [0] * 4, {"sampling": "other"}, torch.Generator())


def test_temperature_recovers_the_overconfidence_it_was_given():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=g) * 2
    targets = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=g).flatten()
    temperature = tc.fit_temperature(3 * true_logits, targets)  # three times too confident
    assert temperature == pytest.approx(3, rel=0.1)
    before = tc.expected_calibration_error(3 * true_logits, targets)
    after = tc.expected_calibration_error(3 * true_logits, targets, temperature)
    assert after < before / 2


def test_expected_calibration_error_by_hand():
    confident = torch.log(torch.tensor([[0.8, 0.2]] * 10))  # top probability 0.8 for every sample
    assert tc.expected_calibration_error(confident, torch.tensor([0] * 8 + [1] * 2)) == pytest.approx(0.0, abs=1e-6)
    assert tc.expected_calibration_error(confident, torch.tensor([0] * 5 + [1] * 5)) == pytest.approx(0.3, abs=1e-6)


def test_a_field_cell_is_cached_with_room_around_it():
    cfg = tc.load_config(None, {"classes": ["a"], "cell_context": 0.5, "cell_max_side": 100})
    field = np.zeros((480, 640, 3), np.uint8)
    pixels, box, found = tc.cell_image(field, (100, 100, 140, 120), cfg)
    assert found and pixels.shape[:2] == (60, 80)  # 20 px (0.5 of the longer side, 40) each way around 40 x 20
    np.testing.assert_allclose(box, [20, 20, 60, 40])
    pixels, box, _ = tc.cell_image(field, (10, 10, 210, 110), cfg)  # 200 wide: clipped at 0, then at most 100 px
    assert max(pixels.shape[:2]) == 100
    np.testing.assert_allclose(box, np.array([10, 10, 210, 110]) * 100 / 310, atol=1e-4)


def test_stain_and_optics_augmentations_are_seeded_and_keep_glass_white():
    cfg = tc.load_config(None, {"classes": ["a", "b"], "input_size": 32,
                                "augment": {"stain_scale": 0.3, "stain_shift": 0.1, "white_balance": 0.0, "gamma": 0.0,
                                            "grayscale_p": 0.0, "downscale_p": 1.0, "jpeg_p": 1.0}})
    images = torch.full((4, 3, 48, 48), 250, dtype=torch.uint8)
    images[:, :, 10:38, 10:38] = torch.tensor([120, 60, 160], dtype=torch.uint8).view(3, 1, 1)  # a purple cell
    centre, half = torch.zeros(4, 2), torch.full((4, 2), 0.45)
    a = tc.make_batch(images, centre, half, cfg, torch.Generator().manual_seed(2), augment=True)
    b = tc.make_batch(images, centre, half, cfg, torch.Generator().manual_seed(2), augment=True)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    x = tc._stain_and_optics(images.float() / 255, cfg["augment"], torch.Generator().manual_seed(3))
    assert (x[:, :, :5, :5] - 250 / 255).abs().max() < 0.02  # unstained glass stays as it was
    assert (x[:, :, 20, 20] - images[:, :, 20, 20].float() / 255).abs().max() > 0.02  # the cell's stain changed
    jpeg = tc._jpeg(x, {"jpeg_p": 1.0, "jpeg_quality": [30, 30]}, torch.Generator().manual_seed(0))
    assert jpeg.shape == x.shape and 0 < (jpeg - x).abs().mean() < 0.05
