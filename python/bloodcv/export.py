"""Writes bloodcv model files: TorchScript with its description in the extra file bloodcv.json.

See docs/model_format.md for the keys. export_model checks the description, scripts or traces the
module, saves it, loads the file back and checks that it gives the eager module's outputs.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

METADATA_FILE = "bloodcv.json"
_DECODER_KINDS = ("yolov5", "anchor")


def check_metadata(meta: dict) -> dict:
    """Fills defaults and raises ValueError naming the key when the description is incomplete or wrong."""
    meta = json.loads(json.dumps(meta))  # a deep copy that is JSON-serialisable, or TypeError
    meta.setdefault("format", "bloodcv-model")
    meta.setdefault("version", 1)
    if meta["format"] != "bloodcv-model" or meta["version"] != 1:
        raise ValueError(f"format/version must be 'bloodcv-model'/1, got {meta['format']!r}/{meta['version']!r}")
    if meta.get("task") not in ("detection", "classification"):
        raise ValueError(f"task must be 'detection' or 'classification', got {meta.get('task')!r}")
    labels = meta.get("labels")
    if not labels or not all(isinstance(l, str) and l for l in labels):
        raise ValueError(f"labels must be a non-empty list of names, got {labels!r}")
    size = meta.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"input_size must be [width, height] > 0, got {size!r}")
    inp = meta.setdefault("input", {})
    inp.setdefault("color", "rgb")
    inp.setdefault("scale", 1 / 255)
    inp.setdefault("mean", [0.0, 0.0, 0.0])
    inp.setdefault("std", [1.0, 1.0, 1.0])
    inp.setdefault("resize", "letterbox" if meta["task"] == "detection" else "stretch")
    inp.setdefault("pad_value", 114)
    if meta["task"] == "detection":
        kind = meta.get("decoder", {}).get("kind")
        if kind not in _DECODER_KINDS:
            raise ValueError(f"decoder.kind must be one of {_DECODER_KINDS}, got {kind!r}")
    return meta


def export_model(module: torch.nn.Module, path, metadata: dict, example_input: torch.Tensor,
                 method: str = "trace", atol: float = 1e-5) -> Path:
    """Saves module as a bloodcv model file at path and returns the path.

    method: "trace" (torch.jit.trace on example_input) or "script" (torch.jit.script)."""
    meta = check_metadata(metadata)
    module = module.eval()
    with torch.no_grad():
        scripted = torch.jit.trace(module, example_input) if method == "trace" else torch.jit.script(module)
        expected = module(example_input)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.jit.save(scripted, str(partial), _extra_files={METADATA_FILE: json.dumps(meta, indent=1)})
    loaded, _ = load_model(partial)
    with torch.no_grad():
        got = loaded(example_input)
    for e, g in zip(_flatten(expected), _flatten(got)):
        if e.shape != g.shape or not torch.allclose(e, g, atol=atol, rtol=1e-4):
            partial.unlink()
            raise RuntimeError(f"exported model disagrees with the eager one (max |diff| "
                               f"{(e - g).abs().max().item() if e.shape == g.shape else 'shape'})")
    partial.replace(path)
    return path


def load_model(path):
    """(TorchScript module, description dict) of a bloodcv model file."""
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as e:  # a checkpoint of torch.save, or no archive at all
        raise ValueError(f"{path}: not a TorchScript archive ({str(e).splitlines()[0]})") from e
    if not extra[METADATA_FILE]:
        raise ValueError(f"{path}: no {METADATA_FILE} in the archive: not a bloodcv model file")
    return module, json.loads(extra[METADATA_FILE])


def update_description(path, changes: dict) -> dict:
    """Merges changes into the description of the model file at path (objects key by key, other values
    replaced), the network untouched: a decoder's thresholds are set without retraining. The description is
    checked as export_model checks one, and the file is replaced only once the new one loads. Returns the new
    description."""
    path = Path(path)
    module, meta = load_model(path)
    meta = check_metadata(_merged(meta, changes))
    partial = path.with_name(path.name + ".partial")
    torch.jit.save(module, str(partial), _extra_files={METADATA_FILE: json.dumps(meta, indent=1)})
    try:
        load_model(partial)
    except Exception:
        partial.unlink()
        raise
    partial.replace(path)
    return meta


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _flatten(x):
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in x for t in _flatten(item)]
