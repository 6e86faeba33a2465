"""What every recipe's loop needs: seeding, RNG state for exact resumption, atomic checkpoints, a log."""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state() -> Dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: Dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
