"""`bloodcv analyze` killed mid-directory (SIGINT, SIGTERM, SIGKILL) leaves only complete files; rerun with
--resume it keeps the finished images' reports, analyses the rest, and writes the summary an uninterrupted
run writes."""
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "build" / "bloodcv"
BCCD = ROOT.parent / "shared" / "datasets" / "bccd" / "BCCD"
IMAGES = [f"BloodImage_{i:05d}.jpg" for i in (0, 1, 2, 3, 4, 5)]

pytestmark = pytest.mark.skipif(not (BCCD / "JPEGImages" / IMAGES[0]).exists(), reason="BCCD images are not here")


def comparable(summary: dict, out: Path) -> dict:
    """The summary without what differs between two runs of the same images: timings and the output folder."""
    for image in summary["images"]:
        image.pop("total_ms")
        image["report"] = str(Path(image["report"]).relative_to(out))
    return summary


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smears")
    for name in IMAGES:
        shutil.copy(BCCD / "JPEGImages" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run([str(CLI), "analyze", str(inputs), "--out", str(out), "--threads", "1"], check=True, capture_output=True)
    return comparable(json.loads((out / "summary.json").read_text()), out)


def reports(out: Path) -> list:
    return [p for p in out.glob("*.json") if p.name not in ("summary.json", "coco_images.json", "coco_results.json")
            and not p.name.endswith(".coco.json")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_killed_run_leaves_complete_files_and_resumes_to_the_same_summary(inputs, uninterrupted, tmp_path, sig):
    out = tmp_path / "out"
    # SIGINT as a terminal sends it: a test run started in the background (`cmd &` in a script) inherits SIGINT
    # ignored, and the child would finish the directory untouched.
    run = subprocess.Popen([str(CLI), "analyze", str(inputs), "--out", str(out), "--threads", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while len(reports(out)) < 2 if out.exists() else True:
        assert run.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "no reports after 120 s"
        time.sleep(0.05)
    run.send_signal(sig)
    assert run.wait(timeout=60) != 0
    assert not (out / "summary.json").exists()
    done = len(reports(out))
    assert 2 <= done < len(IMAGES)
    for path in out.iterdir():  # what is visible is whole: reports parse, pictures decode
        if path.name.startswith(".partial."):
            continue  # hidden, and removed by the next run
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jpg":
            assert cv2.imread(str(path)) is not None, path

    resumed = subprocess.run([str(CLI), "analyze", str(inputs), "--out", str(out), "--threads", "1", "--resume"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("done by an earlier run") == done
    assert f"kept {done} from an earlier run" in resumed.stdout
    assert not list(out.glob(".partial.*"))
    assert comparable(json.loads((out / "summary.json").read_text()), out) == uninterrupted


def test_resume_analyses_an_image_again_when_its_report_is_damaged(inputs, uninterrupted, tmp_path):
    out = tmp_path / "out"
    subprocess.run([str(CLI), "analyze", str(inputs), "--out", str(out), "--threads", "1"], check=True, capture_output=True)
    (out / "BloodImage_00002.json").write_text('{"schema": "bloodcv.analysis", "cel')  # cut short
    (out / "BloodImage_00004.overlay.jpg").unlink()
    resumed = subprocess.run([str(CLI), "analyze", str(inputs), "--out", str(out), "--threads", "1", "--resume"],
                             capture_output=True, text=True, check=True)
    assert resumed.stdout.count("done by an earlier run") == len(IMAGES) - 2
    assert "BloodImage_00002.jpg: " in resumed.stdout and (out / "BloodImage_00004.overlay.jpg").exists()
    assert comparable(json.loads((out / "summary.json").read_text()), out) == uninterrupted
