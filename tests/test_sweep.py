"""Sweeps: a config expands into comparison specs; a run on one or two processes does each spec once; a run stopped
halfway and resumed gives the table and images of an uninterrupted one; a changed config is refused; the report
counts what the table holds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from negprompt.errors import InputError
from negprompt.report import negative_stats, wilson, write_report
from negprompt.sweep import (
    TIMING_COLUMNS,
    SweepInterrupted,
    expand,
    load_config,
    merge,
    parse_seeds,
    run_sweep,
    spec_id,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as each process of a launched sweep has (torchrun sets OMP_NUM_THREADS=1): on a busy
    2-core machine, two threads per tiny convolution cost 20x more in waiting than they save."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_config(folder: Path, model: Path, **overrides) -> Path:
    """A small sweep on the tiny test pipeline: 1 prompt x (baseline + 2 negatives) x 6 seeds, 2 seeds per spec."""
    settings = {"model": str(model), "steps": 2, "guidance": 7.5, "prompts": ["portrait photo of a man"],
                "negatives": ["hat", "glasses"], "seeds": "0-5", "seeds_per_block": 2, "detector": True, **overrides}
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    path = folder / "sweep.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def table(out: Path) -> list[dict]:
    """The results table without the fields that differ between two identical runs (timings, process rank)."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def image_bytes(out: Path) -> dict[str, bytes]:
    return {r["image"]: (out / r["image"]).read_bytes() for r in table(out)}


def test_config_expands_to_one_spec_per_prompt_and_seed_block(tmp_path, tiny_sd_folder):
    config = load_config(write_config(tmp_path, tiny_sd_folder, seeds=["0-4", 9], prompts=["a man", "a woman"]))
    specs = expand(config)
    assert [list(s.seeds) for s in specs] == [[0, 1], [2, 3], [4, 9]] * 2, "Seed blocks of seeds_per_block, in order"
    assert {s.cells[0].positive for s in specs} == {"a man", "a woman"}
    assert all(len(s.cells) == 2 * 3 for s in specs), "Each row: the baseline and one cell per negative"
    assert spec_id(specs[0]) == spec_id(expand(config)[0]), "A spec's id must not change between expansions"
    assert len({spec_id(s) for s in specs}) == len(specs)
    assert parse_seeds(["0-2", 7]) == (0, 1, 2, 7)


@pytest.mark.parametrize("override, argument", [
    ({"seeds": "5-2"}, "seeds"), ({"seeds": [1, 1]}, "seeds"), ({"axes": ["sideways"]}, "axes[0]"),
    ({"seeds": "0-29", "seeds_per_block": 30}, "seeds_per_block"),
    ({"stepz": 3}, "stepz"), ({"prompts": []}, "prompts"),
])
def test_bad_configs_name_the_key(tmp_path, tiny_sd_folder, override, argument):
    with pytest.raises(InputError) as error:
        expand(load_config(write_config(tmp_path, tiny_sd_folder, **override)))
    assert error.value.argument == argument


def test_timing_and_method_axes_run_in_one_sweep(tmp_path, tiny_sd_folder):
    config = write_config(tmp_path, tiny_sd_folder, seeds="0-1", negatives=["hat"],
                          axes=["plain", "timing", "methods"], timing=[0.0, 0.5], methods=["cfg", "perp-neg"])
    assert [s.mode for s in expand(load_config(config))] == ["negatives", "timing", "methods"]
    run_sweep(config, tmp_path / "out", device="cpu")
    rows = [r for r in table(tmp_path / "out") if r["kind"] != "baseline"]
    assert {(r["axis"], r["window_start"], r["method"]) for r in rows} == {
        ("negatives", 0.0, "cfg"), ("timing", 0.0, "cfg"), ("timing", 0.5, "cfg"), ("methods", 0.0, "cfg"),
        ("methods", 0.0, "perp-neg")}, "Each axis's cells, with their window and method, must reach the table"
    plain = {r["seed"]: r["image"] for r in rows if r["axis"] == "negatives"}
    from_start = {r["seed"]: r["image"] for r in rows if r["axis"] == "timing" and r["window_start"] == 0.0}
    out = tmp_path / "out"
    assert all((out / plain[s]).read_bytes() == (out / from_start[s]).read_bytes() for s in plain), \
        "A negative acting from step 0 must equal the plain negative"
    stats = negative_stats(table(out))
    assert len(stats) == 5 and all(s.cells == 2 for s in stats), "The report keeps each axis's cells apart"


def test_stopped_sweep_resumes_to_the_same_table_and_images(tmp_path, tiny_sd_folder):
    config = write_config(tmp_path, tiny_sd_folder)
    whole = run_sweep(config, tmp_path / "whole", device="cpu")
    assert whole["specs_run"] == 3 and whole["rows_in_table"] == 18

    with pytest.raises(SweepInterrupted):
        run_sweep(config, tmp_path / "resumed", device="cpu", stop_after=1)
    specs = tmp_path / "resumed" / "specs"
    assert len([p for p in specs.iterdir() if (p / "done.json").exists()]) == 1
    assert [p.name for p in specs.iterdir() if p.name.endswith(".partial")], "The stop must leave a half-written spec"
    again = run_sweep(config, tmp_path / "resumed", device="cpu")
    assert again["specs_run"] == 2, "The rerun must skip the finished spec and redo the interrupted one"
    assert not [p for p in specs.iterdir() if p.name.endswith(".partial")], "Leftovers of the stop must be gone"

    assert table(tmp_path / "resumed") == table(tmp_path / "whole"), "Resumed and uninterrupted tables must match"
    assert image_bytes(tmp_path / "resumed") == image_bytes(tmp_path / "whole"), "... and so must every cell PNG"
    rows = table(tmp_path / "whole")
    negatives = ("", "hat", "glasses")
    assert {(r["seed"], r["negative"]) for r in rows} == {(s, n) for s in range(6) for n in negatives}
    assert all("det_hat" in r and r["image"].endswith(".png") for r in rows)
    assert run_sweep(config, tmp_path / "whole", device="cpu")["specs_run"] == 0, "A finished sweep has nothing to do"


def test_table_survives_a_process_killed_while_appending_its_rows(tmp_path, tiny_sd_folder):
    out = tmp_path / "out"
    run_sweep(write_config(tmp_path, tiny_sd_folder, seeds="0-3"), out, device="cpu")
    whole = table(out)
    rows_file = out / "rows" / "process-0.jsonl"
    rows_file.write_bytes(rows_file.read_bytes()[:-40])  # the last row cut in the middle
    merge(out)
    assert table(out) == whole, "A spec whose rows a killed process left incomplete is read from its own folder"


def test_changed_config_is_refused(tmp_path, tiny_sd_folder):
    run_sweep(write_config(tmp_path, tiny_sd_folder, seeds="0-1"), tmp_path / "out", device="cpu")
    with pytest.raises(InputError, match=r"another config \(changed: steps\)"):
        run_sweep(write_config(tmp_path, tiny_sd_folder, seeds="0-1", steps=3), tmp_path / "out", device="cpu")


def test_report_counts_what_the_table_holds(tmp_path, tiny_sd_folder):
    out = tmp_path / "out"
    run_sweep(write_config(tmp_path, tiny_sd_folder, seeds="0-3"), out, device="cpu")
    html_path, md_path = write_report(out)
    rows = table(out)
    hat = [r for r in rows if r["negative"] == "hat"]
    stats = {s.negative: s for s in negative_stats(rows)}["- hat"]
    assert stats.cells == len(hat) == 4
    assert stats.changed.k == sum(r["change"] >= 1.0 for r in hat)
    assert "hat" in stats.removal, "A negative that names a detector attribute gets a removal rate"
    page = html_path.read_text()
    assert "http" not in page.replace("http-equiv", ""), "The page must load nothing from elsewhere"
    assert all((out / path).exists() for path in _links(page)), "Every image the page shows must exist"
    assert "| - hat |" in md_path.read_text()


def _links(page: str) -> list[str]:
    import re

    return re.findall(r'src="([^"]+)"', page)


def test_negprompt_sweep_and_report_commands(tmp_path, tiny_sd_folder, capsys):
    from negprompt.cli import main

    config = write_config(tmp_path, tiny_sd_folder, seeds="0-1")
    assert main(["sweep", str(config), "--out", str(tmp_path / "out"), "--threads", "1"]) == 0
    assert "6 rows" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "results.csv").is_file()
    changed = write_config(tmp_path, tiny_sd_folder, seeds="0-2")
    assert main(["sweep", str(changed), "--out", str(tmp_path / "out")]) == 2, "A changed config exits with status 2"
    assert "another config" in capsys.readouterr().err


def test_wilson_interval_matches_known_values():
    lo, hi = wilson(0, 32)
    assert lo == 0 and abs(hi - 0.1072) < 1e-3, "0 of 32: upper bound about 10.7%"
    lo, hi = wilson(16, 32)
    assert abs(lo - 0.3359) < 1e-3 and abs(hi - 0.6641) < 1e-3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2``: two CPU processes through torchrun (accelerate's --cpu
    flag starts one process unless MPI is set up), joined over gloo."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "negprompt.sweep", str(config), "--out", str(out),
               *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_share_the_specs_and_resume(tmp_path, tiny_sd_folder):
    config = write_config(tmp_path, tiny_sd_folder, seeds="0-7", seeds_per_block=1)  # 8 specs
    run = _launch(config, tmp_path / "whole")
    assert run.returncode == 0, run.stderr[-3000:]
    done: dict[str, list[int]] = {}
    for rank in (0, 1):
        rows = (tmp_path / "whole" / "rows" / f"process-{rank}.jsonl").read_text().splitlines()
        for spec in {json.loads(line)["spec"] for line in rows}:
            done.setdefault(spec, []).append(rank)
    ids = json.loads((tmp_path / "whole" / "sweep.json").read_text())["specs"]
    assert sorted(done) == sorted(ids) and all(len(r) == 1 for r in done.values()), \
        "Every spec must be done exactly once across the two processes"
    assert {r[0] for r in done.values()} == {0, 1}, "Both processes must have worked"

    stopped = _launch(config, tmp_path / "resumed", "--stop-after", "2")
    assert stopped.returncode != 0, "A stopped sweep must exit with an error"
    resumed = _launch(config, tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert table(tmp_path / "resumed") == table(tmp_path / "whole"), "Resumed and uninterrupted tables must match"
    assert image_bytes(tmp_path / "resumed") == image_bytes(tmp_path / "whole"), "... and so must every cell PNG"
