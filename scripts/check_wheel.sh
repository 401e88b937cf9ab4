#!/usr/bin/env bash
# Build and install negprompt NON-editably into a throwaway virtual environment, then run the command line with the
# embedded model from there: the wheel must carry the weights (assets/ is mapped into the package at build time), and
# none of the code that trained them (training/ stays in the repository).
#
#     scripts/check_wheel.sh                 # uses ./.venv/bin/python, or $PYTHON
#
# The dependencies (torch, diffusers, ...) are not downloaded again: the throwaway environment reads them from the
# interpreter's own site-packages through a .pth file. About a minute on a 2-core CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d)"
unset PYTHONPATH  # only the installed package may be importable, not a checkout on the path
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "setuptools>=77" wheel
# Built from a copy of the source without build outputs: a stale build/ in the checkout (from an earlier build)
# would otherwise put files into the wheel that the source no longer has.
mkdir "$WORK/src"
tar -C "$ROOT" --exclude=./build --exclude=./.venv --exclude=./.git --exclude='*.egg-info' --exclude=./outputs \
  --exclude=./runs --exclude=./test-artifacts -cf - . | tar -C "$WORK/src" -xf -
"$WORK/venv/bin/pip" install -q --no-deps --no-build-isolation "$WORK/src"
SITE="$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$SITE/negprompt-deps.pth"

cd "$WORK"  # away from the checkout, so that only the installed package can be imported
HF_HUB_OFFLINE=1 "$WORK/venv/bin/negprompt" --prompt "portrait photo of a man" --negative hat --steps 4 --out "$WORK/out"
"$WORK/venv/bin/python" - "$WORK/out" <<'PY'
import json, sys
from pathlib import Path

import negprompt.loading

out = Path(sys.argv[1])
assert "site-packages" in negprompt.loading.__file__, f"the installed package must run, not {negprompt.loading.__file__}"
assert negprompt.loading.EMBEDDED_MODEL.is_relative_to(Path(negprompt.loading.__file__).parent), "weights in the wheel"
cells = json.loads((out / "manifest.json").read_text())["cells"]
assert [c["label"] for c in cells] == ["baseline: no negative", "- hat"] and (out / "grid.png").is_file()
from negprompt.app.examples import EXAMPLES_FILE
from negprompt.portrait_model.detector import DEFAULT_PATH, load_detector

load_detector()  # the detector the app and benchmarks read, from the wheel too
assert DEFAULT_PATH.is_relative_to(Path(negprompt.loading.__file__).parent), f"detector in the wheel: {DEFAULT_PATH}"
assert EXAMPLES_FILE.is_file(), "the app's examples must be in the wheel"

import importlib.metadata
import importlib.util

import negprompt.portrait_model.detector as detector

installed = [str(f) for f in importlib.metadata.files("negprompt") if f.suffix == ".py"]
trainers = [f for f in installed if f.startswith("training/") or f.endswith("portrait_model/train.py")]
assert not trainers, f"the wheel must ship the model, not its trainers: {trainers}"
assert importlib.util.find_spec("training") is None, "the installed package must not bring a training module"
assert not hasattr(detector, "train") and not hasattr(detector, "make_batch"), "the detector ships without its training"
print("ok: the wheel holds", len(installed), "modules and no trainer")
print("ok: the installed wheel ran the embedded model from", negprompt.loading.EMBEDDED_MODEL)
PY
