"""Load: a Pipeline called from Python threads lets other Python code run (the GIL is released), and a
thousand analyses in one process do not grow its resident memory."""
import threading
from pathlib import Path

import numpy as np

import bloodcv
from conftest import smear


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def marker_pipeline(models):
    return bloodcv.Pipeline(bloodcv.TorchScriptDetector(models["marker_yolo"]), bloodcv.TorchScriptClassifier(models["color_classifier"]),
                            tiler=bloodcv.GridTiler(tile_size=(256, 256), overlap=0.25))


def test_analyze_releases_the_gil_for_other_python_threads(models):
    pipeline = marker_pipeline(models)
    image = smear(2048, 2048, red=[(100, 100, 50, 50)], blue=[(400, 400, 40, 40)])
    ticks, running = [0], threading.Event()

    def python_work():
        running.set()
        while running.is_set():
            ticks[0] += 1

    worker = threading.Thread(target=python_work)
    worker.start()
    running.wait()
    try:
        before = ticks[0]
        result = pipeline.analyze(image)  # 100 tiles: long enough for the other thread to run if it may
        during = ticks[0] - before
    finally:
        running.clear()
        worker.join()
    assert len(result.arrays()["boxes"]) == 2
    assert during > 1000, f"the other thread ran {during} loop iterations while analyze ran"


def test_a_thousand_analyses_do_not_grow_resident_memory(models):
    pipeline = marker_pipeline(models)
    images = [smear(600, 400, red=[(100 + 40 * i, 100, 50, 50)], blue=[(400, 30 + 30 * i, 40, 40)]) for i in range(8)]
    for image in images * 12:  # warm-up: allocator pools and LibTorch's caches reach their size
        pipeline.analyze(image)
    start = resident_mib()
    cells = 0
    for k in range(1000):
        cells += len(pipeline.analyze(images[k % len(images)]).arrays()["boxes"])
    growth = resident_mib() - start
    assert cells == 2000
    # A leak of one 600x400 image per analysis would be 690 MB; of one tile's tensor, 750 MB.
    assert growth < 32, f"resident memory grew by {growth:.1f} MiB over 1,000 analyses"
