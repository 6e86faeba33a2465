"""numpy and torch at the boundary: the C++ core reads numpy; torch tensors in give torch tensors out."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

try:  # torch is optional for the geometry and NMS functions
    import torch
except ImportError:  # pragma: no cover - exercised only where torch is absent
    torch = None


def is_tensor(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x, dtype, name: str):
    """A numpy view of x where possible (CPU tensors and arrays of the right dtype are not copied). What does
    not convert (text, None, ragged lists) is a ValueError or TypeError naming the argument."""
    if is_tensor(x):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype != _torch_dtype(dtype):
            x = x.to(_torch_dtype(dtype))
        return x.numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{name} must be numbers convertible to {np.dtype(dtype).name}: {e}") from e


def like(result: np.ndarray, reference):
    """result as the same kind of array as reference: a tensor on its device, or numpy."""
    if is_tensor(reference):
        out = torch.from_numpy(result)
        return out if reference.device.type == "cpu" else out.to(reference.device)
    return result


def _torch_dtype(dtype):
    return {np.float32: torch.float32, np.int64: torch.int64}[np.dtype(dtype).type]


@functools.lru_cache(maxsize=None)
def torch_ops():
    """torch.ops.bloodcv (the assigners and NMS as TorchScript operators), loaded on first use."""
    torch.ops.load_library(str(Path(__file__).with_name("_ops.so")))
    return torch.ops.bloodcv
