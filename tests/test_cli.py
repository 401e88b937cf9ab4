"""The command line writes a grid, cells and manifest, and fails with one clear line on bad input."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "negprompt", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


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
    assert done.returncode == 2 and "could not be fetched" in done.stderr
