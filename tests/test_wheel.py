"""A non-editable install carries the embedded model, its detector and the app's examples, and not the code that
trained them (scripts/check_wheel.sh)."""

from __future__ import annotations

import ast
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_installed_wheel_runs_the_embedded_model():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "check_wheel.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=600)
    assert done.returncode == 0 and "ok: the installed wheel ran" in done.stdout \
        and "no trainer" in done.stdout, \
        f"A pip-installed negprompt must run the embedded model offline:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def test_the_package_never_imports_the_trainers():
    """training/ imports the package, never the reverse: an installed wheel, which has no training/, must import."""
    found = []
    for path in sorted((ROOT / "negprompt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "training"]
    assert not found, f"The package must not import the repository's training code: {found}"


def test_the_build_packages_no_trainer(monkeypatch):
    import setuptools

    seen = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: seen.update(kwargs))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"))
    packages = seen["packages"]
    assert "negprompt.portrait_model" in packages and "negprompt.assets" in packages, packages
    assert not [p for p in packages if p.split(".")[0] == "training"], f"The wheel must not ship training/: {packages}"
