"""The speed benchmark runs end to end on the CPU in its CI-sized form, and its batched comparison draws the same
images as one batched diffusers call."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAST_LINE = re.compile(r"^speedup_vs_one_call_per_image=(\d+\.\d+) seconds=(\d+\.\d+) device=(\S+)$")


@pytest.mark.slow
def test_speed_smoke_on_cpu(tmp_path):
    results = tmp_path / "speed.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--smoke", "--device", "cpu",
                          "--json", str(results)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, f"The smoke benchmark must pass its image check.\n{run.stdout}\n{run.stderr}"
    lines = run.stdout.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, f"The last line must be the one-line summary for scripts, got {lines[-1]!r}"
    assert float(match[1]) > 0 and float(match[2]) > 0 and match[3].startswith("cpu")
    table = [line for line in lines if line.startswith("| tiny_")]
    assert len(table) == 2 and all(row.rstrip(" |").endswith("ok") for row in table), \
        f"Every configuration's images must match the batched diffusers call within 2/255:\n{run.stdout}"

    import json

    data = json.loads(results.read_text())
    assert all(r["max_diff_c_vs_b"] <= 2 / 255 for r in data["results"])


@pytest.mark.slow
def test_speed_runs_the_transformer_families_at_tiny_size(tmp_path):
    arguments = ["--device", "cpu", "--configs", "tiny_sd3,tiny_flux", "--steps", "2", "--negatives", "2",
                 "--repeats", "1", "--threads", "1"]
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), *arguments], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, f"SD3 and FLUX comparisons must match their batched pipeline calls.\n{run.stdout}"
    table = [line for line in run.stdout.splitlines() if line.startswith(("| tiny_sd3", "| tiny_flux"))]
    assert len(table) == 2 and all(row.rstrip(" |").endswith("ok") for row in table), run.stdout
