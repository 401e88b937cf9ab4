"""The code style the project holds itself to: ruff's rules as pyproject.toml selects them (pycodestyle, pyflakes,
import order, and C901: no function more complex than 10), over every Python file of the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (requirements-dev.txt installs it)")
    done = subprocess.run([ruff, "check", "negprompt", "tests", "benchmarks", "scripts", "training", "app.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
