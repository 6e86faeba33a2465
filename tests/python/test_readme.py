"""The README's C++ example, compiled from the README as written (examples/consumer, built by
scripts/test.sh), gives the same answer as the Python pipeline and the CLI on the bundled sample."""
import json
import subprocess
from pathlib import Path

import bloodcv

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "build" / "consumer" / "readme_example"
SAMPLE = ROOT / "examples" / "data" / "bccd_BloodImage_00001.jpg"


def test_readme_cpp_example_agrees_with_python_and_the_cli(tmp_path):
    assert EXAMPLE.exists(), f"{EXAMPLE} is missing: scripts/test.sh builds examples/consumer before pytest"
    result = subprocess.run([str(EXAMPLE)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    first, *rows = result.stdout.strip().splitlines()
    counts = {name: int(n) for name, n in (row.rsplit(" ", 1) for row in rows)}

    python = bloodcv.Pipeline(bloodcv.TorchScriptDetector(str(ROOT / "models" / "cell_detector.pt")),
                              bloodcv.TorchScriptClassifier(str(ROOT / "models" / "wbc_classifier.pt"))).analyze(str(SAMPLE))
    assert first == f"{len(python)} cells in {python.tiles} tiles"
    assert python.tiles == 1  # the detector's 640-pixel field covers the 640 x 480 sample
    assert counts == {**python.counts, **python.type_counts}

    cli = subprocess.run([str(ROOT / "build" / "bloodcv"), "analyze", str(SAMPLE), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["total_counts"] == python.counts and summary["total_type_counts"] == python.type_counts
