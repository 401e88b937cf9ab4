"""A non-editable install carries the embedded model, its detector and the app's examples (scripts/check_wheel.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_installed_wheel_runs_the_embedded_model():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "check_wheel.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert done.returncode == 0 and "ok: the installed wheel ran" in done.stdout, \
        f"A pip-installed negprompt must run the embedded model offline:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
