"""Many slides on a Dask cluster: each slide is planned once, its tiles are detected in region tasks by
workers that load the models once, and the driver merges every slide's tiles with the same seam merging,
classification and counting as a single run (Pipeline.plan / detect_tiles / finish), so the cells are the
same. A worker that dies takes its tasks with it; the scheduler runs them again elsewhere, and a slide's
result is assembled from exactly one answer per task, so nothing is lost or counted twice.

    from bloodcv.distributed import analyze_many
    summary = analyze_many(["a.svs", "b.tif"], "out/", scheduler="local:2")        # a LocalCluster of 2
    summary = analyze_many(paths, "out/", scheduler="tcp://10.0.0.5:8786")        # an existing scheduler

Command line: `bloodcv analyze --scheduler local[:N]|tcp://HOST:PORT SLIDE... --out DIR` (or
`python -m bloodcv.distributed`). docs/scale.md says how to run it on a cluster.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import bloodcv


@dataclass(frozen=True)
class Models:
    """The model files and options every worker builds its pipeline from (plain data: sent to workers)."""
    detector: str = ""
    classifier: Optional[str] = ""      # "" the default, None no classifier
    microns_per_pixel: Optional[float] = None
    skip_background: bool = True
    precision: str = "float32"          # RuntimeOptions::precision of both networks

    def resolved(self) -> "Models":
        models = Path(bloodcv.default_model_dir())
        return Models(self.detector or str(models / "cell_detector.pt"),
                      None if self.classifier is None else (self.classifier or str(models / "wbc_classifier.pt")),
                      self.microns_per_pixel, self.skip_background, self.precision)


_PIPELINES: dict = {}  # per process: a worker loads each set of models once
_PLANS: dict = {}      # ... and opens and plans each slide once (its later tasks reuse them)


def pipeline_of(models: Models) -> bloodcv.Pipeline:
    if models not in _PIPELINES:
        detector = bloodcv.TorchScriptDetector(models.detector, precision=models.precision)
        classifier = bloodcv.TorchScriptClassifier(models.classifier, precision=models.precision) if models.classifier else None
        _PIPELINES[models] = bloodcv.Pipeline(detector, classifier)
    return _PIPELINES[models]


def _plan(pipeline, source, models: Models):
    return pipeline.plan(source, microns_per_pixel=models.microns_per_pixel, skip_background=models.skip_background)


def detect_region(path: str, models: Models, tiles: Sequence[int]) -> dict:
    """A region task: the tile-local detections of some planned tiles of one slide, and the tiles that could
    not be read (each tried alone after a failed batch)."""
    pipeline = pipeline_of(models)
    key = (path, models)
    if key not in _PLANS:
        if len(_PLANS) >= 4:  # a few slides at a time: a plan holds the slide open and its mask
            _PLANS.pop(next(iter(_PLANS)))
        source = bloodcv.open_image_source(path)
        _PLANS[key] = (source, _plan(pipeline, source, models))
    source, plan = _PLANS[key]
    try:
        return {"tiles": list(tiles), "detections": pipeline.detect_tiles(source, plan, list(tiles)), "errors": []}
    except RuntimeError:
        found, errors = [], []
        for i in tiles:
            try:
                found.append(pipeline.detect_tiles(source, plan, [i])[0])
            except RuntimeError as e:
                found.append(None)
                errors.append(f"tile {i}: {e}")
        return {"tiles": list(tiles), "detections": found, "errors": errors}


def connect(scheduler: Optional[str], timeout: float = 30.0):
    """A dask.distributed Client: None or "local[:N]" starts a LocalCluster of N single-threaded worker
    processes (default: the cores); "tcp://HOST:PORT" connects to a running scheduler, failing with a
    clear TimeoutError after `timeout` seconds when it does not answer."""
    from dask.distributed import Client, LocalCluster

    if scheduler is None or scheduler == "local" or scheduler.startswith("local:"):
        n = int(scheduler.split(":", 1)[1]) if scheduler and ":" in scheduler else (os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f"scheduler {scheduler!r}: local:N needs N >= 1")
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster)
    if not scheduler.startswith(("tcp://", "tls://")):
        raise ValueError(f"scheduler must be local, local:N or tcp://HOST:PORT, got {scheduler!r}")
    try:
        return Client(scheduler, timeout=f"{timeout}s")
    except (OSError, TimeoutError) as e:
        raise TimeoutError(f"the Dask scheduler at {scheduler} did not answer within {timeout:.0f} s: {e}") from None


def analyze_many(paths: Sequence[str], out_dir, scheduler=None, regions_per_task: int = 16, detector: str = "",
                 classifier: Optional[str] = "", microns_per_pixel: Optional[float] = None, skip_background: bool = True,
                 precision: str = "float32", client=None, timeout: float = 30.0, log=print) -> dict:
    """Analyses every slide (or image) of paths on a Dask cluster and writes, per slide, the reports
    `bloodcv analyze` writes for a slide (STEM.json, .csv, .coco.json, .overview.jpg, .density.jpg) and
    summary.json over all of them. regions_per_task: tiles per task. scheduler as connect(); or pass a
    client. precision: of the networks (float32, bfloat16, float16 on CUDA). Returns the summary."""
    if regions_per_task < 1:
        raise ValueError(f"regions_per_task must be >= 1, got {regions_per_task}")
    models = Models(detector, classifier, microns_per_pixel, skip_background, precision).resolved()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    own_client = client is None
    client = client or connect(scheduler, timeout)
    try:
        pipeline = pipeline_of(models)
        started = time.monotonic()
        slides, futures = [], []
        for index, path in enumerate(paths):
            source = bloodcv.open_image_source(str(path))  # a missing or unreadable file fails here, before any work
            plan = _plan(pipeline, source, models)
            run = [i for i, r in enumerate(plan.run) if r]
            chunks = [run[k:k + regions_per_task] for k in range(0, len(run), regions_per_task)]
            slides.append({"path": str(path), "source": source, "plan": plan, "tasks": len(chunks)})
            for chunk in chunks:
                futures.append((index, client.submit(detect_region, str(path), models, chunk, pure=False, retries=2)))
            log(f"{path}: {len(plan.regions)} tiles, {len(run)} with tissue, {len(chunks)} tasks")
        per_slide = [[None] * len(s["plan"].regions) for s in slides]
        errors = [[] for _ in slides]
        for index, future in futures:
            answer = future.result()
            for i, found in zip(answer["tiles"], answer["detections"]):
                per_slide[index][i] = found
            errors[index] += answer["errors"]
        summary = {"scheduler": str(client.scheduler.address) if client.scheduler else None,
                   "workers": len(client.scheduler_info().get("workers", {})), "regions_per_task": regions_per_task,
                   "detector": models.detector, "classifier": models.classifier, "slides": []}
        used = set()
        for index, slide in enumerate(slides):
            result = pipeline.finish(slide["source"], slide["plan"], per_slide[index])
            base = stem = Path(slide["path"]).stem  # a later slide of the same name gets -2, -3, ... as in bloodcv analyze
            k = 2
            while stem in used:
                stem, k = f"{base}-{k}", k + 1
            used.add(stem)
            written = bloodcv.write_slide_reports(slide["source"], result, str(out), stem, index + 1)
            summary["slides"].append({"path": slide["path"], "report": written["json"], "cells": len(result),
                                      "counts": result.counts, "type_counts": result.type_counts,
                                      "differential_percent": result.differential, "tiles": result.tiles,
                                      "tiles_skipped": result.slide["tiles_skipped"], "tasks": slide["tasks"],
                                      "tile_errors": errors[index]})
            log(f"{slide['path']}: {len(result)} cells ({result.counts})" + (f", {len(errors[index])} tiles unreadable" if errors[index] else ""))
        summary["seconds"] = round(time.monotonic() - started, 2)
        partial = out / ".partial.summary.json"
        partial.write_text(json.dumps(summary, indent=1) + "\n")
        os.replace(partial, out / "summary.json")
        return summary
    finally:
        if own_client:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None:
                cluster.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bloodcv analyze --scheduler", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("slides", nargs="+", help="slides or images")
    p.add_argument("--scheduler", default="local", help="local, local:N or tcp://HOST:PORT (default: local, one worker per core)")
    p.add_argument("--out", default="out", help="output directory (default: %(default)s)")
    p.add_argument("--regions-per-task", type=int, default=16, help="tiles per task (default: %(default)s)")
    p.add_argument("--detector", default="", help="detector model file (default: the bundled one)")
    p.add_argument("--classifier", default="", help="classifier model file, or none (default: the bundled one)")
    p.add_argument("--mpp", type=float, default=None, help="microns per pixel of the slides' level 0 (default: each slide's own)")
    p.add_argument("--keep-background", action="store_true", help="run every tile, also those without tissue")
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="arithmetic of the networks (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a scheduler (default: %(default)s)")
    args = p.parse_args(argv)
    # Through the imported module, not __main__: workers then import the task functions by name instead of
    # receiving this script's globals (the driver's loaded models) by value.
    from bloodcv.distributed import analyze_many as run
    try:
        run(args.slides, args.out, args.scheduler, args.regions_per_task, args.detector,
            None if args.classifier == "none" else args.classifier, args.mpp, not args.keep_background,
            args.precision, timeout=args.timeout)
    except (TimeoutError, ValueError, RuntimeError, OSError) as e:
        print(f"bloodcv analyze: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
