"""Benchmarks bloodcv's NMS against torchvision's, side by side in one run, and writes RESULTS.md.

    .venv/bin/python benchmarks/run.py nms [--quick]
    .venv/bin/python benchmarks/run.py pipeline [--detector models/cell_detector.pt] [--quick]
    .venv/bin/python benchmarks/run.py assign [--quick]
    .venv/bin/python benchmarks/run.py slides [--quick]
    .venv/bin/python benchmarks/run.py threads [--quick]

Everything runs on the CPU with one thread (torch.set_num_threads(1); the C++ benchmark pinned to one core
where taskset exists), except the rows and sections that say "all" cores. Each case is timed several times on the same data and the median is reported;
the ratio is torchvision's median over ours (above 1: we are faster). Both results are checked to be
the same indices before a time is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

import bloodcv

ROOT = Path(__file__).resolve().parent.parent


def make_boxes(n: int, layout: str, seed: int = 0):
    """Cell-sized boxes (20-60 px) over a square slide whose side grows with sqrt(n): 'spread' puts
    one box per cell, 'clustered' ten jittered candidates per cell (a detector's raw output)."""
    rng = np.random.default_rng(seed)
    copies = 10 if layout == "clustered" else 1
    cells = -(-n // copies)
    side = 60.0 * np.sqrt(n)
    xy = np.repeat(rng.uniform(0, side, size=(cells, 2)), copies, axis=0)[:n]
    wh = np.repeat(rng.uniform(20, 60, size=(cells, 2)), copies, axis=0)[:n]
    if copies > 1:
        xy = xy + rng.uniform(-6, 6, size=xy.shape) * (np.arange(n) % copies != 0)[:, None]
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = (rng.permutation(n).astype(np.float64) + 1) / n  # distinct: torchvision's tie order is unspecified
    labels = np.repeat(rng.integers(0, 3, size=cells), copies)[:n]
    return torch.from_numpy(boxes), torch.from_numpy(scores.astype(np.float32)), torch.from_numpy(labels)


def median_seconds(fn, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores{mem}; one thread per case unless a table says otherwise",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"numpy {np.__version__}, bloodcv {bloodcv.__version__}",
    ]


def nms_table(sizes, repeats) -> list[str]:
    rows = ["| op | layout | boxes | kept | torchvision (ms) | bloodcv (ms) | ratio |", "|---|---|---:|---:|---:|---:|---:|"]
    for layout in ["clustered", "spread"]:
        for n in sizes:
            boxes, scores, labels = make_boxes(n, layout)
            for op in ["nms", "batched_nms"]:
                if op == "nms":
                    theirs = lambda: torchvision.ops.nms(boxes, scores, 0.5)
                    ours = lambda: bloodcv.nms(boxes, scores, 0.5)
                else:
                    theirs = lambda: torchvision.ops.batched_nms(boxes, scores, labels, 0.5)
                    ours = lambda: bloodcv.batched_nms(boxes, scores, labels, 0.5)
                expected, got = theirs(), ours()
                if not torch.equal(expected, got):
                    raise SystemExit(f"{op} {layout} {n}: results differ from torchvision")
                # torchvision is quadratic on spread boxes: fewer repeats where one run takes seconds
                reps = repeats if n <= 10_000 else max(1, repeats // 3)
                t_theirs, t_ours = median_seconds(theirs, reps), median_seconds(ours, reps)
                rows.append(f"| {op} | {layout} | {n:,} | {len(got):,} | {t_theirs * 1e3:.2f} | {t_ours * 1e3:.2f} "
                            f"| {t_theirs / t_ours:.1f}× |")
                print(rows[-1], flush=True)
    return rows


def cpp_table(n: int, repeats: int) -> list[str]:
    exe = ROOT / "build" / "bench_nms"
    if not exe.exists():
        raise SystemExit(f"{exe} is missing: run scripts/setup.sh first")
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    rows = ["| strategy | layout | boxes | kept | median (ms) | fastest (ms) |", "|---|---|---:|---:|---:|---:|"]
    for layout in ["spread", "clustered"]:
        out = subprocess.run(pin + [str(exe), "--boxes", str(n), "--layout", layout, "--repeats", str(repeats)],
                             check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            r = json.loads(line)
            rows.append(f"| {r['strategy']} | {r['layout']} | {r['boxes']:,} | {r['kept']:,} | {r['median_ms']:.0f} "
                        f"| {r['min_ms']:.0f} |")
            print(rows[-1], flush=True)
    return rows


def write_results(section: str, lines: list[str]) -> Path:
    """Stores one section and rebuilds RESULTS.md: the machine, then every section in name order."""
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / f"{section}.md").write_text("\n".join(lines) + "\n")
    out = ROOT / "benchmarks" / "RESULTS.md"
    parts = ["# Benchmark results", "", "Each section is written by `.venv/bin/python benchmarks/run.py SECTION` "
             "(sections: nms, pipeline, forward, assign, slides, threads); the machine below is the one the latest section ran on.", "",
             "## Machine", ""] + machine()
    for f in sorted(results.glob("*.md")):
        parts += ["", f.read_text().rstrip()]
    out.write_text("\n".join(parts) + "\n")
    return out


def nms_section(quick: bool) -> list[str]:
    sizes, repeats, big = ([1_000, 10_000], 3, 100_000) if quick else ([1_000, 10_000, 100_000], 9, 1_000_000)
    lines = [f"## NMS against torchvision (CPU, Python API, same data, same indices checked) — {time.strftime('%Y-%m-%d')}", "",
             "Median wall time of each call from Python, numpy/torch conversion included. Ratio = torchvision / bloodcv.",
             "Boxes are 20-60 px cells on a square slide of side 60·√N px; *clustered* has 10 jittered candidates "
             "per cell (a detector's raw output), *spread* one box per cell. IoU threshold 0.5; batched_nms over 3 labels.",
             ""]
    lines += nms_table(sizes, repeats)
    lines += ["", f"### The NMS family on {big:,} boxes in C++ (`build/bench_nms`, one core)", "",
              "Whole-slide scale: every strategy on the same synthetic detections, timed in C++ without Python.", ""]
    lines += cpp_table(big, 3)
    return lines


def plain_sinkhorn(cost, supply, demand, eps, iterations):
    """The same log-domain Sinkhorn-Knopp, written in plain PyTorch."""
    f = torch.zeros_like(supply)
    g = torch.zeros_like(demand)
    log_s, log_d = supply.log(), demand.log()
    for _ in range(iterations):
        f = log_s - torch.logsumexp(-cost / eps + g[None, :], 1)
        g = log_d - torch.logsumexp(-cost / eps + f[:, None], 0)
    return torch.exp(-cost / eps + f[:, None] + g[None, :])


def assign_section(quick: bool) -> list[str]:
    from sklearn.mixture import GaussianMixture
    from bloodcv import assign
    repeats = 3 if quick else 5
    lines = [f"## Label assignment — {time.strftime('%Y-%m-%d')}", "",
             "Optimal transport: `bloodcv.assign.sinkhorn` (C++ on ATen, log domain) against the same algorithm in plain "
             "PyTorch, float64, ε = 0.1, 50 iterations, cost [cells + 1, anchors]; plans checked equal (max |Δ| < 1e-9). "
             "Median of runs.", "",
             "| anchors | cells | plain PyTorch (ms) | bloodcv (ms) | ratio |", "|---:|---:|---:|---:|---:|"]
    gen = torch.Generator().manual_seed(0)
    for anchors in ([10_000] if quick else [10_000, 100_000]):
        for cells in [10, 100, 300]:
            cost = torch.rand(cells + 1, anchors, generator=gen, dtype=torch.float64) * 10
            k = torch.full((cells,), float(anchors // (4 * cells)), dtype=torch.float64)
            supply = torch.cat([k, torch.tensor([anchors - k.sum().item()], dtype=torch.float64)])
            demand = torch.ones(anchors, dtype=torch.float64)
            ours = lambda: assign.sinkhorn(cost, supply, demand, 0.1, 50)
            theirs = lambda: plain_sinkhorn(cost, supply, demand, 0.1, 50)
            if (ours() - theirs()).abs().max().item() > 1e-9:
                raise SystemExit("Sinkhorn plans differ")
            # a 10^5 x 301 plan takes a minute: one timed run, the equality check above being the warm-up
            big = anchors > 10_000
            t_ours, t_theirs = median_seconds(ours, 1 if big else repeats, not big), median_seconds(theirs, 1 if big else repeats, not big)
            lines.append(f"| {anchors:,} | {cells} | {t_theirs * 1e3:.1f} | {t_ours * 1e3:.1f} | {t_theirs / t_ours:.2f}× |")
            print(lines[-1], flush=True)
    lines += ["", "PAA's mixture: the two-component 1-D EM of `bloodcv.assign.fit_gmm_1d` (C++) against "
              "`sklearn.mixture.GaussianMixture` (what the reference PAA calls), one fit per cell on 45 candidate scores "
              "(top 9 of 5 levels), same initialisation; fitted means checked equal to 1e-6.", "",
              "| cells (fits) | scikit-learn (ms) | bloodcv (ms) | ratio |", "|---:|---:|---:|---:|"]
    rng = np.random.default_rng(0)
    for cells in [10, 100, 300]:
        data = [np.concatenate([rng.normal(0.2, 0.05, 30), rng.normal(0.7, 0.1, 15)]) for _ in range(cells)]
        def ours():
            return [assign.fit_gmm_1d(x, means=(x.min(), x.max()), variances=(x.var(), x.var())) for x in data]
        def theirs():
            return [GaussianMixture(2, weights_init=[0.5, 0.5], means_init=[[x.min()], [x.max()]],
                                    precisions_init=[[[1 / x.var()]], [[1 / x.var()]]], tol=1e-3).fit(x[:, None]) for x in data]
        for a, b in zip(ours(), theirs()):
            if not np.allclose(a["means"].numpy(), b.means_.ravel(), rtol=1e-6):
                raise SystemExit("GMM fits differ")
        t_ours, t_theirs = median_seconds(ours, repeats), median_seconds(theirs, repeats)
        lines.append(f"| {cells} | {t_theirs * 1e3:.1f} | {t_ours * 1e3:.2f} | {t_theirs / t_ours:.0f}× |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="section", required=True)
    nms_p = sub.add_parser("nms", help="bloodcv.nms / batched_nms against torchvision, and the NMS family at 10^6 boxes")
    nms_p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (a smoke run)")
    pipe_p = sub.add_parser("pipeline", help="the whole pipeline (C++, Python) against a plain Python tiling loop")
    pipe_p.add_argument("--detector", default=str(ROOT / "models" / "cell_detector.pt"))
    pipe_p.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    pipe_p.add_argument("--quick", action="store_true")
    fwd_p = sub.add_parser("forward", help="the detector's forward pass: as loaded, optimised, bfloat16, int8")
    fwd_p.add_argument("--detector", default=str(ROOT / "models" / "cell_detector.pt"))
    fwd_p.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    fwd_p.add_argument("--quick", action="store_true")
    assign_p = sub.add_parser("assign", help="OT Sinkhorn against plain PyTorch, PAA's EM against scikit-learn")
    assign_p.add_argument("--quick", action="store_true")
    slides_p = sub.add_parser("slides", help="peak memory and time against slide size; Dask scaling from 1 to 2 workers")
    slides_p.add_argument("--quick", action="store_true")
    threads_p = sub.add_parser("threads", help="Python threads sharing one Pipeline: one against two")
    threads_p.add_argument("--detector", default=str(ROOT / "models" / "cell_detector.pt"))
    threads_p.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.section == "nms":
        lines = nms_section(args.quick)
    elif args.section == "assign":
        lines = assign_section(args.quick)
    elif args.section == "forward":
        from forward_bench import forward_section
        lines = forward_section(Path(args.detector), Path(args.datasets), args.quick)
    elif args.section == "threads":
        from threads_bench import threads_section
        lines = threads_section(Path(args.detector), args.quick)
    elif args.section == "slides":
        from slide_bench import slides_section
        lines = slides_section(args.quick)
    else:
        from pipeline_bench import pipeline_section
        lines = pipeline_section(Path(args.detector), Path(args.datasets), args.quick)
    print(f"wrote {write_results(args.section, lines)}")


if __name__ == "__main__":
    main()
