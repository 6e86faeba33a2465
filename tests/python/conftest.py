import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def random_boxes(rng, n, extent=1000.0, max_side=80.0):
    xy = rng.uniform(0, extent, size=(n, 2))
    wh = rng.uniform(1, max_side, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def make_test_models_module():
    """tests/models/make_test_models.py as a module (its small modules, e.g. Constant, serve tests too)."""
    spec = importlib.util.spec_from_file_location("make_test_models", ROOT / "tests" / "models" / "make_test_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    out = make_test_models_module().main(tmp_path_factory.mktemp("models"))
    return {p.stem: str(p) for p in out.glob("*.pt")}


def smear(width, height, red=(), blue=()):
    """A grey BGR image with red (WBC) and blue (RBC) squares given as (x, y, w, h)."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (200, 190, 180)
    for x, y, w, h in red:
        image[y:y + h, x:x + w] = (0, 0, 255)
    for x, y, w, h in blue:
        image[y:y + h, x:x + w] = (255, 0, 0)
    return image


def xyxy(x, y, w, h):
    return [x, y, x + w, y + h]
