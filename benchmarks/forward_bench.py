"""The detector's forward pass alone, in each form bloodcv could run it: as loaded on NCHW or NHWC input,
frozen and optimised (RuntimeOptions::optimize), bfloat16 (RuntimeOptions::precision), and int8 by
post-training static quantisation (FX graph mode, oneDNN, the one x86 engine of Debian's torch; the decoding
head stays float). One process, the variants interleaved run by run, on one thread and on every core.

    .venv/bin/python benchmarks/run.py forward [--detector models/cell_detector.pt] [--quick]
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

BATCH = 8


class Features(torch.nn.Module):
    """YoloDetector up to the head's inputs: the part int8 quantisation can trace."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m.features(x)


class Quantised(torch.nn.Module):
    def __init__(self, features, detect):
        super().__init__()
        self.features, self.detect = features, detect

    def forward(self, x):
        o3, o4, o5 = self.features(x)
        return self.detect([o3, o4, o5])


def int8_detector(path: Path, meta: dict, calibration: torch.Tensor):
    """The shipped YOLO detector rebuilt eagerly from its own weights and quantised, or None for another kind."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from bloodcv.models.yolo import YoloDetector
    scripted = torch.jit.load(str(path)).eval()
    if meta.get("decoder", {}).get("kind") != "yolov5":
        return None
    state = scripted.state_dict()
    anchors = (state["detect.anchors"] * state["detect.stride"].view(-1, 1, 1)).view(3, -1).tolist()
    c1 = state["stem.conv.weight"].shape[0]
    model = YoloDetector(len(meta["labels"]), width=c1 / 64, depth=0.33, anchors=anchors, input_size=meta["input_size"][0])
    model.fuse().load_state_dict(state)
    model.eval()
    torch.backends.quantized.engine = "onednn"
    prepared = prepare_fx(Features(model), get_default_qconfig_mapping("onednn"), example_inputs=(calibration,))
    with torch.no_grad():
        prepared(calibration)
    return torch.jit.freeze(torch.jit.trace(Quantised(convert_fx(prepared), model.detect).eval(), calibration))


def forward_section(detector: Path, datasets: Path, quick: bool) -> list[str]:
    import cv2
    import numpy as np

    from bloodcv.export import load_model
    plain, meta = load_model(detector)
    w, h = meta["input_size"]
    # real tiles: the first BCCD test images, letterboxed as bloodcv does (resized to the input, no padding needed)
    bccd = datasets / "bccd" / "BCCD"
    ids = (bccd / "ImageSets" / "Main" / "test.txt").read_text().split()[:BATCH]
    tiles = [cv2.resize(cv2.imread(str(bccd / "JPEGImages" / f"{i}.jpg")), (w, h))[:, :, ::-1] for i in ids]
    nchw = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float().div(255).contiguous()
    nhwc = nchw.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = plain.eval()(nchw)
    variants = {
        "as loaded, NCHW input": (plain, nchw),
        "as loaded, NHWC input (bloodcv on several threads)": (plain, nhwc),
        "frozen and optimised, NHWC input (bloodcv on one thread)": (torch.jit.optimize_for_inference(torch.jit.freeze(load_model(detector)[0].eval())), nhwc),
        "bfloat16, NHWC input (precision=\"bfloat16\")": (load_model(detector)[0].eval().to(torch.bfloat16), nhwc.to(torch.bfloat16)),
    }
    quantised = int8_detector(detector, meta, nchw)
    if quantised is not None:
        variants["int8, static quantisation (oneDNN), NCHW input"] = (quantised, nchw)
    repeats = 3 if quick else 9
    lines = [f"## The detector's forward pass in each form — {time.strftime('%Y-%m-%d')}", "",
             f"`{detector.name}` ({meta.get('name', '?')}) on a batch of {BATCH} real {w}×{h} tiles (BCCD test images), "
             f"median of {repeats} runs per variant, the variants interleaved run by run in one process after 3 warm-ups. "
             "*Max |Δ|*: the largest difference of any output (box coordinates in input pixels, scores) from the float32 "
             "module's. The int8 model is calibrated on the same batch (enough for its speed, not for its accuracy: "
             "its decoder is kept in float, and SiLU, which has no quantised kernel, runs between a dequantise and a "
             "quantise after every convolution).", "",
             "| variant | threads | ms per batch | speed-up vs as loaded, NCHW | max abs diff |", "|---|---:|---:|---:|---:|"]
    for threads in (1, os.cpu_count() or 1):
        torch.set_num_threads(threads)
        times = {name: [] for name in variants}
        with torch.inference_mode():
            for module, x in variants.values():
                for _ in range(3):
                    module(x)
            for _ in range(repeats):
                for name, (module, x) in variants.items():
                    start = time.perf_counter()
                    module(x)
                    times[name].append(time.perf_counter() - start)
            diffs = {name: (module(x).float() - reference).abs().max().item() for name, (module, x) in variants.items()}
        base = statistics.median(times["as loaded, NCHW input"])
        for name, t in times.items():
            ms = statistics.median(t)
            lines.append(f"| {name} | {threads} | {ms * 1e3:.1f} | {base / ms:.2f}× | {diffs[name]:.3g} |")
            print(lines[-1], flush=True)
    torch.set_num_threads(1)
    return lines
