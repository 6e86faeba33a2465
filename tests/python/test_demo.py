"""scripts/demo.sh, the README's main command, prints bloodcv's own output and nothing else, also on the
first run (when set-up installs the notebook kernel, whose debugger used to print a warning)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNEL = ROOT / ".venv" / "share" / "jupyter" / "kernels" / "python3"


def test_demo_prints_only_bloodcv_output(tmp_path):
    aside = tmp_path / "kernel"
    moved = KERNEL.exists()
    if moved:
        shutil.move(str(KERNEL), str(aside))  # as on a first run: set-up installs the kernel again
    try:
        result = subprocess.run([str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, timeout=1200,
                                env={**os.environ, "BLOODCV_DEMO_OUT": str(tmp_path / "out")})
        assert (KERNEL / "kernel.json").exists()
    finally:
        if moved and not KERNEL.exists():
            shutil.move(str(aside), str(KERNEL))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("detector ") and lines[1].startswith("[1/1] bccd_BloodImage_00001.jpg: ")
    assert lines[2].split()[:4] == ["image", "WBC", "RBC", "Platelets"] and lines[3].startswith("bccd_BloodImage_00001.jpg ")
    assert lines[4].startswith("wrote 1 report(s)") and len(lines) == 5
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["total_counts"]["WBC"] == 1
