import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def random_boxes(rng, n, extent=1000.0, max_side=80.0):
    xy = rng.uniform(0, extent, size=(n, 2))
    wh = rng.uniform(1, max_side, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
