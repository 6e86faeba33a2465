"""Python threads sharing one Pipeline: analyses per second with one Python thread against two, LibTorch on one
intra-op thread, so that any gain comes from Pipeline.analyze releasing the GIL (issue 15). (LibTorch on every
core is the other way to use them: `benchmarks/run.py pipeline`, each variant in its own process, since the
intra-op thread count cannot be changed reliably once a process has run on it.) Runs interleaved, median of runs;
every thread's cells are checked equal to a sequential run's before a time is recorded.

    .venv/bin/python benchmarks/run.py threads [--detector models/cell_detector.pt] [--quick]
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

import bloodcv

ROOT = Path(__file__).resolve().parents[1]


def cells(result):
    a = result.arrays()
    return a["boxes"].tobytes(), a["labels"].tobytes()


def run_threads(pipeline, images, threads: int):
    """Analyses every image once, the images shared out among `threads` Python threads."""
    results = [None] * len(images)

    def work(start):
        for i in range(start, len(images), threads):
            results[i] = pipeline.analyze(images[i])

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    begin = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - begin, results


def threads_section(detector: Path, quick: bool) -> list[str]:
    sample = bloodcv.read_image(str(ROOT / "examples" / "data" / "bccd_BloodImage_00001.jpg"))
    rng = np.random.default_rng(0)  # distinct images: the sample flipped and shifted
    images = [np.ascontiguousarray(np.roll(sample[:, ::(1 if i % 2 else -1)], int(rng.integers(0, 200)), axis=1))
              for i in range(8 if quick else 16)]
    runs = 3 if quick else 7
    lines = [f"## Python threads sharing one Pipeline — {time.strftime('%Y-%m-%d')}", "",
             f"{len(images)} BCCD-sized images (640×480, the bundled sample flipped and shifted) through one "
             f"`bloodcv.Pipeline(TorchScriptDetector('{detector.name}'))`, no classifier; per run every image analysed "
             f"once; LibTorch on one intra-op thread; median of {runs} runs, variants interleaved; cells checked equal to a "
             f"one-thread run. {os.cpu_count()} cores.", "",
             "| Python threads | images/s | speed-up over one Python thread |", "|---:|---:|---:|"]
    torch.set_num_threads(1)
    pipeline = bloodcv.Pipeline(bloodcv.TorchScriptDetector(str(detector), threads=1))
    _, want = run_threads(pipeline, images, 1)  # warm-up and reference
    want = [cells(r) for r in want]
    times = {1: [], 2: []}
    for _ in range(runs):
        for n in times:
            seconds, got = run_threads(pipeline, images, n)
            if [cells(r) for r in got] != want:
                raise SystemExit(f"{n} Python threads gave other cells than one")
            times[n].append(seconds)
    base = statistics.median(times[1])
    for n, t in times.items():
        lines.append(f"| {n} | {len(images) / statistics.median(t):.2f} | {base / statistics.median(t):.2f}× |")
        print(lines[-1], flush=True)
    return lines
