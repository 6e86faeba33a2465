"""What every recipe's loop needs: seeding, RNG state for exact resumption, atomic checkpoints, a log."""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state() -> Dict:
    """The generators' states in plain types and tensors (no pickled numpy array), so that a checkpoint
    written with one numpy version (a GPU machine's numpy 2) loads with another."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state()}


def set_rng_state(state: Dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def save_checkpoint(path, state: Dict) -> None:
    """torch.save to path through a temporary file, so that an interrupted save leaves the last checkpoint whole."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


class Log:
    """Timestamped lines to stdout and, with a path, appended to that file."""

    def __init__(self, path: Optional[Path] = None):
        self.path = Path(path) if path else None

    def __call__(self, message: str) -> None:
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")


def progress(iterable, desc: str, enabled: bool = True, total: Optional[int] = None):
    """tqdm over iterable on a terminal (every 30 s into a log otherwise); iterable itself when disabled."""
    if not enabled:
        return iterable
    from tqdm import tqdm
    tty = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, mininterval=0.5 if tty else 30.0, dynamic_ncols=tty, leave=tty, file=sys.stderr)


# What the curves plot draws from an epoch record: losses on the left, scores on the right ("val" may be a
# nested record, as the detector recipe's validation).
_LOSS_KEYS = ("train_loss", "val_loss", "train_metric_loss", "box", "obj", "cls")
_SCORE_KEYS = ("train_acc", "val_acc", "val.mAP50", "val.AP75", "val.AP")


def _curve(history: Sequence[Dict], key: str):
    epochs, values = [], []
    for record in history:
        value = record
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            epochs.append(record["epoch"])
            values.append(value)
    return epochs, values


def plot_history(history: Sequence[Dict], path, title: str) -> Optional[Path]:
    """Loss and metric against epoch as a PNG at path (the training curves a model card shows); None when the
    history has nothing to draw."""
    curves = {key: _curve(history, key) for key in _LOSS_KEYS + _SCORE_KEYS}
    curves = {key: c for key, c in curves.items() if c[0]}
    if not curves:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (losses, scores) = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, keys, label in ((losses, _LOSS_KEYS, "loss"), (scores, _SCORE_KEYS, "score")):
        for key in keys:
            if key in curves:
                epochs, values = curves[key]
                axis.plot(epochs, values, marker="." if len(epochs) < 15 else None, label=key)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
