"""Whole slides: peak memory and time of `bloodcv analyze` on pyramidal TIFF slides of growing size that hold
the same smear fields on blank background, and the scaling of bloodcv.distributed from 1 to 2 local workers.

    .venv/bin/python benchmarks/run.py slides [--quick]

The slides are made with libvips without ever holding them whole (`vips embed` of one field onto a canvas,
`vips insert` of the others, `vips tiffsave --tile --pyramid`), so 40,000 pixels a side fit a laptop.
Each run is its own process; peak resident memory is `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, the
largest child so far: the slides grow, so each row's figure is its own run's.
"""
from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VIPS = shutil.which("vips")
FIELD = ROOT / "examples" / "data" / "bccd_BloodImage_00001.jpg"
BACKGROUND = "240 238 236"  # RGB: the glass beside a smear


def make_slide(side: int, out: Path, fields: int = 6) -> Path:
    """A side x side pyramidal tiled TIFF: `fields` copies of the bundled field along the diagonal, background elsewhere."""
    canvas = out.with_suffix(".v")
    step = side // (fields + 1)
    subprocess.run([VIPS, "embed", str(FIELD), str(canvas), str(step // 2), str(step // 2), str(side), str(side),
                    "--extend", "background", "--background", BACKGROUND], check=True)
    for k in range(1, fields):
        nxt = out.with_name(f"{out.stem}-{k}.v")
        subprocess.run([VIPS, "insert", str(canvas), str(FIELD), str(nxt), str(step // 2 + k * step), str(step // 2 + k * step)], check=True)
        canvas.unlink()
        canvas = nxt
    subprocess.run([VIPS, "tiffsave", str(canvas), str(out), "--tile", "--tile-width", "256", "--tile-height", "256", "--pyramid",
                    "--compression", "jpeg", "--Q", "90"], check=True)
    canvas.unlink()
    return out


def make_dense_slide(out: Path, across: int = 12, down: int = 16) -> Path:
    """A slide covered with smear: the bundled field repeated across x down times (`vips replicate`)."""
    canvas = out.with_suffix(".v")
    subprocess.run([VIPS, "replicate", str(FIELD), str(canvas), str(across), str(down)], check=True)
    subprocess.run([VIPS, "tiffsave", str(canvas), str(out), "--tile", "--tile-width", "256", "--tile-height", "256", "--pyramid",
                    "--compression", "jpeg", "--Q", "90"], check=True)
    canvas.unlink()
    return out


def run_child(command: list[str]) -> tuple[float, float, str]:
    """(seconds, peak MiB of the child, stdout): each command is the only child measured."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: sizes grow, so each run is the largest yet
    return seconds, max(peak, before) / 1024, done.stdout


def slides_section(quick: bool) -> list[str]:
    if VIPS is None:
        raise SystemExit("vips is missing: scripts/setup.sh installs libvips-tools")
    sides = [10_000, 20_000] if quick else [10_000, 20_000, 40_000]
    lines = [f"## Whole slides: memory and time against slide size — {time.strftime('%Y-%m-%d')}", "",
             "`build/bloodcv analyze SLIDE` (default models, every core, background skipped) on pyramidal tiled TIFFs "
             "(JPEG Q90, 256-pixel tiles) of N×N pixels holding the same 6 BCCD fields (640×480) on blank background. "
             "Peak resident memory of the whole process; one run each.", "",
             "| slide | tiles | skipped | cells | seconds | peak MiB |", "|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slides = []
        for side in sides:
            slide = make_slide(side, work / f"slide{side}.tif")
            slides.append(slide)
            seconds, peak, _ = run_child([str(ROOT / "build" / "bloodcv"), "analyze", str(slide), "--out", str(work / f"out{side}")])
            report = json.loads((work / f"out{side}" / f"slide{side}.json").read_text())
            lines.append(f"| {side:,}×{side:,} ({side * side / 1e6:,.0f} MP) | {report['tiles']:,} | {report['slide']['tiles_skipped']:,} | "
                         f"{len(report['cells'])} | {seconds:.1f} | {peak:.0f} |")
            print(lines[-1], flush=True)
        dense = make_dense_slide(work / "dense.tif")
        copies = [str(dense)] * (2 if quick else 4)
        lines += ["", "### Many slides on Dask: 1 and 2 local workers", "",
                  f"`bloodcv.distributed.analyze_many` on {len(copies)} copies of a slide covered with smear (the bundled field "
                  "repeated 12×16: 7,680×7,680 pixels, every tile runs), timed end to end: cluster start, the driver's planning, "
                  "region tasks of 16 tiles, merging, classification and reports.", "",
                  "| workers | seconds | slides/min | speed-up |", "|---:|---:|---:|---:|"]
        times = {}
        for workers in (1, 2):
            code = ("import sys, json, time; from bloodcv.distributed import analyze_many; t = time.perf_counter(); "
                    f"analyze_many({copies!r}, {str(work / f'dask{workers}')!r}, scheduler='local:{workers}', regions_per_task=16, log=lambda m: None); "
                    "print(json.dumps(time.perf_counter() - t))")
            _, _, out = run_child([sys.executable, "-c", code])
            times[workers] = json.loads(out.strip().splitlines()[-1])
            lines.append(f"| {workers} | {times[workers]:.1f} | {60 * len(copies) / times[workers]:.2f} | {times[1] / times[workers]:.2f}× |")
            print(lines[-1], flush=True)
    return lines
