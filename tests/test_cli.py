"""The command line writes a grid, cells and manifest, and fails with one clear line on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, cwd):
    """``python -m negprompt`` in a fresh process, importing this checkout's package whatever is installed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "negprompt", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env)


def test_cli_writes_grid_cells_and_manifest(tiny_sd_folder, tmp_path):
    negatives = tmp_path / "negatives.txt"
    negatives.write_text("# candidates\nglasses\n\nred hat\n")
    out = tmp_path / "out"
    done = run("--model", str(tiny_sd_folder), "--prompt", "portrait photo of a man", "--negative", "mustache",
               "--negatives-file", str(negatives), "--seeds", "1,2", "--steps", "2", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["negative_prompt"] for c in manifest["cells"]] == ["", "mustache", "glasses", "red hat"] * 2
    assert (out / "grid.png").is_file() and len(list(out.glob("*-seed*.png"))) == 8
    assert "change" in done.stdout and "red hat" in done.stdout


def test_cli_bad_input_prints_one_line_and_exits_non_zero(tiny_sd_folder, tmp_path):
    done = run("--model", str(tiny_sd_folder), "--prompt", "a man", "--negative", "hat", "--size", "60x64",
               cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("negprompt: error: width=60")
    assert not (tmp_path / "outputs").exists(), "Nothing is written when the input is bad."
    done = run("--model", str(tmp_path / "missing"), "--prompt", "a man", "--negative", "hat", cwd=tmp_path)
    assert done.returncode == 2 and "no such folder or file" in done.stderr


def cli(*args, capsys):
    """The command line in this process: (exit status, stdout, stderr)."""
    from negprompt.cli import main

    status = main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_cli_modes_write_their_cells_and_replay_gives_the_same_images(tiny_sd_folder, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    out = tmp_path / "run"
    status, stdout, stderr = cli("--model", tiny_sd_folder, "--prompt", "portrait photo of a man", "--negative",
                                 "hat@0.5", "--negative", "glasses", "--guidance-methods", "cfg,perp-neg",
                                 "--other-positive", "portrait photo of a man without mustache", "--steps", "2",
                                 "--out", out, capsys=capsys)
    assert status == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    cells = manifest["cells"]
    assert [c["label"] for c in cells] == ["baseline: no negative", "- hat @0.5 (cfg)", "- hat @0.5 (perp-neg)",
                                           "- glasses (cfg)", "- glasses (perp-neg)",
                                           "+ portrait photo of a man without mustache"]
    assert cells[2]["window"] == [0.5, 1.0] and cells[2]["guidance"] == {"method": "perp-neg", "negative_scale": 1.0}
    assert "Negative window: 0.5" in cells[1]["parameters"] and "perp-neg" in cells[2]["parameters"]
    assert manifest["spec"]["mode"] == "methods" and len(manifest["spec"]["cells"]) == 6

    again = tmp_path / "again"
    status, stdout, stderr = cli("--replay", out / "manifest.json", "--out", again, capsys=capsys)
    assert status == 0, stderr
    replayed = json.loads((again / "manifest.json").read_text())
    assert replayed["spec"] == manifest["spec"], "A replay runs the recorded spec."
    for a, b in zip(cells, replayed["cells"]):
        first, second = (np.asarray(Image.open(folder / c["file"])) for folder, c in ((out, a), (again, b)))
        assert np.array_equal(first, second), "A replay must give pixel-identical images."


def test_cli_timing_makes_one_cell_per_start(tiny_sd_folder, tmp_path, capsys):
    status, _, stderr = cli("--model", tiny_sd_folder, "--prompt", "a man", "--negative", "hat", "--timing",
                            "0,0.5", "--steps", "2", "--out", tmp_path, capsys=capsys)
    assert status == 0, stderr
    cells = json.loads((tmp_path / "manifest.json").read_text())["cells"]
    assert [c["window"] for c in cells] == [[0.0, 1.0], [0.0, 1.0], [0.5, 1.0]]


@pytest.mark.parametrize(("args", "message"), [
    (["--max-batch", "0"], "--max-batch 0"),
    (["--max-batch", "-1"], "--max-batch -1"),
    (["--steps", "0"], "steps=0"),
    (["--negative", "hat@x"], "negatives[1]='hat@x'"),
    (["--timing", "0,1.5"], "starts[1]"),
    (["--guidance-methods", "cfg,perp-negg"], "perp-negg"),
    (["--other-positive", " "], "other_positive"),
    (["--seed", "-1"], "seed"),
])
def test_cli_checks_arguments_before_the_model_loads(tmp_path, capsys, args, message):
    status, _, stderr = cli("--model", tmp_path / "no" / "such-model", "--prompt", "a man", "--negative", "glasses",
                            *args, "--out", tmp_path / "out", capsys=capsys)
    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("negprompt: error:") and message in lines[0], stderr
    assert "no such folder" not in stderr, "Bad arguments must be reported before the model is looked at."
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "bogus"], "device='bogus'"),
    (["--model", "MALFORMED"], "not valid JSON"),
    (["--replay", "MISSING"], "--replay"),
    (["--replay", "MISSING", "--prompt", "a man"], "give no --prompt"),
])
def test_cli_bad_device_model_or_manifest_is_one_line(tiny_sd_folder, tmp_path, capsys, args, message):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{ not json")
    args = [str(broken) if a == "MALFORMED" else str(tmp_path / "none.json") if a == "MISSING" else a for a in args]
    base = [] if "--model" in args or "--replay" in args else ["--model", tiny_sd_folder]
    prompt = [] if "--replay" in args else ["--prompt", "a man", "--negative", "hat"]
    status, _, stderr = cli(*base, *prompt, *args, "--out", tmp_path / "out", capsys=capsys)
    assert status == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert "Traceback" not in stderr


def test_cli_cuda_without_a_gpu_is_one_line(tiny_sd_folder, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without a CUDA GPU")
    status, _, stderr = cli("--model", tiny_sd_folder, "--prompt", "a man", "--negative", "hat", "--device", "cuda",
                            "--out", tmp_path, capsys=capsys)
    assert status == 2 and "no CUDA GPU" in stderr and len(stderr.strip().splitlines()) == 1
