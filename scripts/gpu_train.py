#!/usr/bin/env python3
"""Train a classifier recipe on a GPU machine that has PyTorch but no build of bloodcv.

The recipe (`python -m bloodcv.train classifier`) trains, evaluates through the C++ runtime and exports in
one process; a rented GPU machine has PyTorch and OpenCV but not bloodcv's C++ extension, and takes a
limited upload. So the work is split in three, the middle one there:

    scripts/gpu_train.py pack --config C --out PACK [--quality 80]      # here: split.csv + train/val images
    python3 scripts/gpu_train.py train --config C --pack PACK --out RUN [--set KEY=JSON ...] [--epochs N]
    cp RUN/last.pt OUT/ && .venv/bin/python -m bloodcv.train classifier --config C --out OUT --export-only [--set ...]

`pack` writes the recipe's split (the same rule, seed and file list as a run here) and the train and
validation images, re-encoded at --quality to fit the upload; the test images stay here, where
--export-only evaluates the model on the originals through the runtime's crop path. `train` runs the
recipe's own loop (bloodcv.training.classifier.train) on cfg device "cuda" and, when it ends, leaves
RUN/last.pt holding the CPU weights and the per-epoch history only (a fraction of the size, for the trip
back). A run stopped before the end keeps the recipe's whole checkpoint of its last epoch, which
`train --resume` continues and which loads here as well (its RNG states are plain types).
"""
from __future__ import annotations

import argparse
import csv
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def import_training():
    """This checkout's bloodcv.training.classifier without bloodcv/__init__.py, which loads the C++
    extension (folder datasets need none of it)."""
    package = types.ModuleType("bloodcv")
    package.__path__ = [str(REPO / "python" / "bloodcv")]
    sys.modules["bloodcv"] = package
    from bloodcv.training import classifier, config
    return classifier, config


def load(args):
    classifier, config = import_training()
    cfg = config.apply_settings(classifier.load_config(args.config, config.common_overrides(args)), args.settings)
    labels, folders = classifier.label_groups(cfg)
    cfg["num_classes"] = len(labels)
    return classifier, cfg, labels, folders


def pack(args) -> int:
    import cv2
    classifier, cfg, labels, folders = load(args)
    if cfg.get("sources"):
        raise SystemExit(f"{args.config}: pack takes single-dataset configs (class folders under dataset_root)")
    root = classifier.resolve_path(cfg["dataset_root"], cfg)
    samples, split = classifier.samples_of(cfg, labels, folders)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    classifier.write_split(out / "split.csv", samples, split, labels)
    for name in ("train", "val"):
        for i in split.get(name, []):
            target = out / "images" / samples[i].file
            target.parent.mkdir(parents=True, exist_ok=True)
            bgr = cv2.imread(str(root / samples[i].file), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SystemExit(f"cannot read {root / samples[i].file}")
            ok = cv2.imwrite(str(target.with_suffix(".jpg")), bgr,
                             [cv2.IMWRITE_JPEG_QUALITY, args.quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
            if not ok:
                raise SystemExit(f"cannot write {target}")
    print(f"{out}: split.csv ({len(samples)} images) and {sum(len(split.get(n, [])) for n in ('train', 'val'))} "
          f"train/val images at JPEG quality {args.quality}")
    return 0


def train(args) -> int:
    import torch
    classifier, cfg, labels, _ = load(args)
    cfg["device"] = args.device
    cfg["threads"] = args.threads
    torch.set_num_threads(args.threads)
    pack_dir = Path(args.pack)
    rows = {"train": [], "val": []}
    with open(pack_dir / "split.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] in rows:
                rows[row["split"]].append((str(Path(row["file"]).with_suffix(".jpg")), labels.index(row["label"])))
    files = [f for name in ("train", "val") for f, _ in rows[name]]
    targets = torch.tensor([k for name in ("train", "val") for _, k in rows[name]], dtype=torch.long)
    cache = classifier.build_cache(pack_dir / "images", files, cfg, cache_dir=None, progress=False)
    centre, half = classifier.normalised_boxes(cache["boxes"], cache["images"].shape[3], cache["images"].shape[2])
    n_train = len(rows["train"])
    data = {"images": cache["images"], "centre": centre, "half": half, "labels": targets,
            "groups": targets.tolist(), "train": list(range(n_train)), "val": list(range(n_train, len(files)))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = classifier.Log(out / "train.log")
    log(f"{args.config} {' '.join(args.settings)}: {n_train} train, {len(rows['val'])} val images on {args.device}")

    result = classifier.train(cfg, out, data, resume=args.resume, max_steps_per_epoch=cfg["max_steps_per_epoch"],
                              progress=False, log=log)
    history = result["history"]
    classifier.save_checkpoint(out / "last.pt", {
        "model": result["model"].state_dict(), "epoch": len(history) - 1, "elapsed_s": history[-1]["elapsed_s"] if history else 0.0,
        "history": [{k: v for k, v in h.items() if k != "step_losses"} for h in history]})
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pack", "train"):
        p = sub.add_parser(name)
        p.add_argument("--config", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", dest="settings")
        p.add_argument("--epochs", type=int, default=None)
        p.add_argument("--dataset-root", default=None)
        p.add_argument("--max-steps-per-epoch", type=int, default=None)
        if name == "pack":
            p.add_argument("--quality", type=int, default=80, help="JPEG quality of the packed images")
        else:
            p.add_argument("--pack", required=True, help="what pack wrote")
            p.add_argument("--device", default="cuda")
            p.add_argument("--threads", type=int, default=2, help="CPU threads (augmentation's random draws)")
            p.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    return pack(args) if args.command == "pack" else train(args)


if __name__ == "__main__":
    sys.exit(main())
