"""Reviewed box fixes (bloodcv.data.corrections): known boxes in, known boxes out; a file that no longer fits
its dataset fails instead of doing nothing; the shipped TXL-PBC file names real boxes."""
import json
from pathlib import Path

import numpy as np
import pytest

from bloodcv.data import Sample
from bloodcv.data.corrections import apply_label_corrections, duplicate_boxes, read_label_corrections

ROOT = Path(__file__).resolve().parents[2]
TXL = ROOT.parent / "shared" / "datasets" / "txl-pbc" / "TXL_PBC"
WBC, RBC, PLT = 0, 1, 2


def sample(name="img"):
    return Sample(Path(f"/x/{name}.jpg"), [[0, 0, 100, 100], [200, 10, 300, 110], [50, 150, 70, 170]],
                  [WBC, RBC, RBC], 400, 300, name=name, ignore=[False, True, False])


def write(tmp_path, entries):
    path = tmp_path / "fixes.json"
    path.write_text(json.dumps({"corrections": entries}))
    return path


def test_relabel_remove_and_add_give_the_known_boxes(tmp_path):
    path = write(tmp_path, [
        {"image": "img", "box": [1, 1, 99, 101], "label": "WBC", "to": "RBC", "why": "a red cell"},     # IoU 0.97
        {"image": "img", "box": [50, 150, 70, 170], "label": "RBC", "to": None, "why": "dust"},
        {"image": "img", "add": [10, 200, 60, 250], "label": "Platelets", "why": "unboxed"},
    ])
    untouched = sample("other")
    fixed, same = apply_label_corrections([sample(), untouched], read_label_corrections(path))
    assert same is untouched
    assert fixed.boxes.tolist() == [[0, 0, 100, 100], [200, 10, 300, 110], [10, 200, 60, 250]]
    assert fixed.classes.tolist() == [RBC, RBC, PLT]
    assert fixed.ignore.tolist() == [False, True, False]
    assert (fixed.width, fixed.height, fixed.name) == (400, 300, "img")
    assert sample().classes.tolist() == [WBC, RBC, RBC]     # the input is not changed in place


@pytest.mark.parametrize("entry, message", [
    ({"image": "img", "box": [0, 0, 100, 100], "label": "RBC", "to": "WBC", "why": "w"}, "0 RBC boxes match"),  # wrong label
    ({"image": "img", "box": [0, 0, 80, 100], "label": "WBC", "to": "RBC", "why": "w"}, "0 WBC boxes match"),   # IoU 0.8
])
def test_an_entry_that_names_no_box_fails_naming_the_image(tmp_path, entry, message):
    with pytest.raises(ValueError, match=message) as e:
        apply_label_corrections([sample()], read_label_corrections(write(tmp_path, [entry])))
    assert "img" in str(e.value)


def test_two_equal_boxes_are_ambiguous(tmp_path):
    s = Sample(Path("/x/img.jpg"), [[0, 0, 10, 10], [0, 0, 10, 10]], [RBC, RBC], 20, 20)
    path = write(tmp_path, [{"image": "img", "box": [0, 0, 10, 10], "label": "RBC", "to": None, "why": "w"}])
    with pytest.raises(ValueError, match="2 RBC boxes match"):
        apply_label_corrections([s], read_label_corrections(path))


@pytest.mark.parametrize("entry, message", [
    ({"box": [0, 0, 1, 1], "label": "RBC", "to": None, "why": "w"}, "needs 'image'"),
    ({"image": "a", "box": [0, 0, 1, 1], "label": "RBC", "to": None}, "needs 'image'"),
    ({"image": "a", "box": [0, 0, 1, 1], "label": "Neutrophil", "to": None, "why": "w"}, "'label' must be one of"),
    ({"image": "a", "label": "RBC", "to": None, "why": "w"}, "exactly one of 'box'"),
    ({"image": "a", "box": [0, 0, 1, 1], "add": [0, 0, 1, 1], "label": "RBC", "why": "w"}, "exactly one of 'box'"),
    ({"image": "a", "box": [5, 0, 1, 1], "label": "RBC", "to": None, "why": "w"}, "x1 < x2"),
    ({"image": "a", "add": [0, 0, "1", 1], "label": "RBC", "why": "w"}, "x1 < x2"),
    ({"image": "a", "box": [0, 0, 1, 1], "label": "RBC", "why": "w"}, "'to' must be"),
    ({"image": "a", "box": [0, 0, 1, 1], "label": "RBC", "to": "rbc", "why": "w"}, "'to' must be"),
])
def test_a_malformed_entry_is_refused_naming_the_file_and_entry(tmp_path, entry, message):
    with pytest.raises(ValueError, match=message) as e:
        read_label_corrections(write(tmp_path, [{"image": "ok", "add": [0, 0, 1, 1], "label": "RBC", "why": "w"}, entry]))
    assert "fixes.json: corrections[1]" in str(e.value)


def test_an_unreadable_file_is_refused(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: cannot read"):
        read_label_corrections(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="a list 'corrections'"):
        read_label_corrections(tmp_path / "list.json")


def test_duplicate_boxes_are_the_pairs_of_one_label_at_the_iou_asked_most_overlapping_first():
    s = Sample(Path("/x/img.jpg"), [[0, 0, 100, 100], [0, 0, 100, 50], [10, 0, 110, 100], [0, 0, 100, 100]],
               [WBC, WBC, WBC, RBC], 200, 200)
    # IoU: boxes 0 and 2 overlap 9000 / 11000; 0 and 1 5000 / 10000; 1 and 2 4500 / 10500; box 3 is a red cell
    assert duplicate_boxes(s, "WBC") == [{"boxes": [[0, 0, 100, 100], [10, 0, 110, 100]], "iou": 0.818},
                                         {"boxes": [[0, 0, 100, 100], [0, 0, 100, 50]], "iou": 0.5}]
    assert [d["iou"] for d in duplicate_boxes(s, "WBC", min_iou=0.6)] == [0.818]
    assert duplicate_boxes(s, "RBC") == [] and duplicate_boxes(s, "Platelets") == []
    with pytest.raises(ValueError, match="min_iou must be in"):
        duplicate_boxes(s, "WBC", min_iou=0)
    with pytest.raises(ValueError, match="label must be one of"):
        duplicate_boxes(s, "wbc")


@pytest.mark.skipif(not TXL.is_dir(), reason="needs ../shared/datasets/txl-pbc")
def test_the_reviewed_txl_pbc_labels_box_no_white_cell_twice():
    from bloodcv.data.readers import list_yolo_split
    entries = read_label_corrections(ROOT / "configs" / "label_corrections" / "txl_pbc.json")
    for split in ("train", "val"):
        samples = apply_label_corrections(list_yolo_split(TXL / "images" / split, TXL / "labels" / split), entries)
        assert [(s.name, d) for s in samples for d in duplicate_boxes(s, "WBC")] == []


@pytest.mark.skipif(not TXL.is_dir(), reason="needs ../shared/datasets/txl-pbc")
def test_the_shipped_txl_pbc_corrections_each_name_one_box_of_the_dataset():
    from bloodcv.data.readers import list_yolo_split
    entries = read_label_corrections(ROOT / "configs" / "label_corrections" / "txl_pbc.json")
    for split in ("train", "val"):
        named = {e["image"] for e in entries if e["split"] == split}
        samples = [s for s in list_yolo_split(TXL / "images" / split, TXL / "labels" / split) if s.name in named]
        assert {s.name for s in samples} == named
        before = np.concatenate([s.classes for s in samples])
        after = np.concatenate([s.classes for s in apply_label_corrections(samples, entries)])
        moved = [e for e in entries if e["split"] == split]
        gained = sum(e.get("to") == "WBC" or ("add" in e and e["label"] == "WBC") for e in moved)
        lost = sum(e["label"] == "WBC" and "box" in e for e in moved)
        assert (after == WBC).sum() - (before == WBC).sum() == gained - lost
