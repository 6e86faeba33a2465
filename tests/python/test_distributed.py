"""Many slides on Dask (bloodcv.distributed): the cells equal a single run's; a real scheduler and workers
started here, one of them killed mid-run, lose and double nothing; a scheduler that does not answer is a
clear error within the timeout."""
import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")
cv2 = pytest.importorskip("cv2")

import bloodcv  # noqa: E402
from bloodcv.distributed import analyze_many, connect  # noqa: E402
from pg_server import free_port  # noqa: E402
from slides import BACKGROUND, VIPS, canvas, save_slide  # noqa: E402
from web_helpers import ROOT  # noqa: E402

pytestmark = pytest.mark.skipif(VIPS is None, reason="libvips-tools (vips) is not installed")
PLACES = [(100, 150), (1500, 120), (300, 1400), (2100, 1500)]


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    blank = np.empty((900, 1200, 3), np.uint8)
    blank[:] = BACKGROUND
    return [save_slide(canvas((3000, 2200), PLACES), root / "smears.tif", mpp=0.5),
            save_slide(canvas((2400, 1400), PLACES[:2]), root / "two.tif"), save_slide(blank, root / "blank.tif")]


@pytest.fixture(scope="module")
def single_runs(slides):
    models = bloodcv.default_model_dir()
    pipeline = bloodcv.Pipeline(bloodcv.TorchScriptDetector(f"{models}/cell_detector.pt"),
                                bloodcv.TorchScriptClassifier(f"{models}/wbc_classifier.pt"))
    return {s.stem: json.loads(pipeline.analyze_source(bloodcv.OpenSlideSource(str(s))).to_json())["cells"] for s in slides}


def cells_of(out, stem):
    return json.loads((out / f"{stem}.json").read_text())["cells"]


def same_cells(a, b):
    """The same cells, types and order; boxes and scores equal to float rounding (tiles batched otherwise
    than in the single run go through the network in other batches)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in ("box", "score", "type_score", "type_probabilities", "type_top3", "type_entropy")} == \
               {k: v for k, v in y.items() if k not in ("box", "score", "type_score", "type_probabilities", "type_top3", "type_entropy")}
        assert np.allclose(x["box"], y["box"], atol=1e-3) and abs(x["score"] - y["score"]) < 1e-5


def test_a_local_cluster_gives_the_cells_of_a_single_run(slides, single_runs, tmp_path):
    # 8 tiles a task: the single run's batches, so the network sees the same batches and the cells are equal bit for bit
    summary = analyze_many([str(s) for s in slides], tmp_path, scheduler="local:2", regions_per_task=8, log=lambda m: None)
    assert summary["workers"] == 2 and [s["path"] for s in summary["slides"]] == [str(s) for s in slides]
    for s in slides:
        assert cells_of(tmp_path, s.stem) == single_runs[s.stem], s.stem
    first = summary["slides"][0]
    assert first["counts"]["WBC"] == 4 and first["tasks"] == -(-(first["tiles"] - first["tiles_skipped"]) // 8) > 1
    assert summary["slides"][2]["cells"] == 0 and summary["slides"][2]["tasks"] == 0
    assert (tmp_path / "smears.overview.jpg").exists() and json.loads((tmp_path / "summary.json").read_text()) == summary


def start(*command, log):
    return subprocess.Popen([sys.executable, "-m", *command], stdout=log, stderr=subprocess.STDOUT)


def test_a_worker_killed_mid_run_loses_nothing_and_doubles_nothing(slides, single_runs, tmp_path):
    port = free_port()
    logs = [open(tmp_path / f"{name}.log", "w") for name in ("scheduler", "worker1", "worker2")]
    scheduler = start("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard", log=logs[0])
    address = f"tcp://127.0.0.1:{port}"
    workers = [start("distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1", log=log)
               for log in logs[1:]]
    try:
        client = connect(address, timeout=60)
        client.wait_for_workers(2, timeout=120)
        done = {}
        run = threading.Thread(target=lambda: done.update(summary=analyze_many(
            [str(s) for s in slides], tmp_path / "out", client=client, regions_per_task=1, log=lambda m: None)))
        run.start()
        # kill one worker once it is working on the tasks
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(client.processing().values()):
            time.sleep(0.05)
        time.sleep(1.5)
        workers[0].send_signal(signal.SIGKILL)
        run.join(timeout=600)
        assert not run.is_alive() and "summary" in done
        assert len(client.scheduler_info()["workers"]) == 1  # the killed one is gone; its tasks ran on the other
        for s in slides:
            same_cells(cells_of(tmp_path / "out", s.stem), single_runs[s.stem])
        client.close()
    finally:
        for p in [*workers, scheduler]:
            p.kill()
            p.wait(timeout=30)
        for log in logs:
            log.close()


def test_a_scheduler_that_does_not_answer_is_a_clear_error_within_the_timeout(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"the Dask scheduler at {address} did not answer within 2 s"):
        connect(address, timeout=2)
    assert time.monotonic() - started < 30
    r = subprocess.run([sys.executable, "-m", "bloodcv.distributed", "x.tif", "--scheduler", address, "--timeout", "2",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "did not answer" in r.stderr


def test_the_command_line_hands_over_to_dask(slides, single_runs, tmp_path):
    r = subprocess.run([str(ROOT / "build" / "bloodcv"), "analyze", "--scheduler", "local:1", str(slides[1]), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    same_cells(cells_of(tmp_path, "two"), single_runs["two"])
    bad = subprocess.run([str(ROOT / "build" / "bloodcv"), "analyze", "--scheduler", "local:1", "--tile", "320", str(slides[1])],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--scheduler takes" in bad.stderr
