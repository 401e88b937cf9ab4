"""Hostile input on the command line, --replay and sweep configs (the tables in hostile_cli_cases.py): every case is
refused with one line and exit status 2 before any model loads or anything is written. Then each class on its own:
seed ranges counted first, bounded files, whole replays, the sweep lock, escaped reports, explorer modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_cli_cases import ALL_CASES

from negprompt.errors import LIMITS, InputError

IDS = [name for name, _, _, _ in ALL_CASES]


def make_files(tmp: Path, files: dict) -> None:
    for name, content in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == ("dir",):
            path.mkdir(exist_ok=True)
        elif content == ("fifo",):
            os.mkfifo(path)
        elif isinstance(content, tuple):
            path.symlink_to(content[1])
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.replace("{tmp}", str(tmp)).encode())


def test_the_tables_are_large_enough():
    assert len(ALL_CASES) >= 150, (f"The command-line and sweep tables must hold at least 150 cases, not "
                                   f"{len(ALL_CASES)}")
    assert len(set(IDS)) == len(IDS), "Case names must be unique"


@pytest.mark.parametrize("name, args, files, expected", ALL_CASES, ids=IDS)
def test_every_case_is_one_clear_line_and_exit_2(tmp_path, capsys, name, args, files, expected):
    from negprompt.cli import main

    make_files(tmp_path, files)
    out = tmp_path / "out"
    before = sorted(out.rglob("*")) if out.is_dir() else []
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2, f"{name}: must exit with status 2, not {status}: {lines[-3:]}"
    assert len(lines) == 1, f"{name}: the refusal must be one line, not {len(lines)}: {lines[:3]}"
    line = lines[0]
    assert line.startswith(("negprompt: error:", "negprompt sweep: error:", "negprompt report: error:")), line
    assert expected in line, f"{name}: the line must name {expected!r}: {line[:300]}"
    assert "no such folder" not in line, f"{name}: must be refused before the model is looked for: {line[:200]}"
    assert len(line) < 600, f"{name}: the line must not echo the input ({len(line):,} characters)"
    after = sorted(out.rglob("*")) if out.is_dir() else []
    assert after == before, f"{name}: nothing may be written on refused input: {after[:5]}"


# ----------------------------------------------------------------------------------------------------------------
# Seeds


def test_seed_ranges_are_counted_before_they_are_expanded():
    from negprompt.plan import parse_seeds

    start = time.perf_counter()
    with pytest.raises(InputError, match="4,294,967,296 seeds"):
        parse_seeds("0-4294967295")
    with pytest.raises(InputError, match="50,000,000 seeds"):
        parse_seeds([f"{i * 10**6}-{i * 10**6 + 999_999}" for i in range(50)])
    assert time.perf_counter() - start < 0.5, "Counting a range must not expand it"
    assert parse_seeds(["0-2", 7]) == (0, 1, 2, 7) and parse_seeds(5) == (5,)
    assert len(parse_seeds(f"0-{LIMITS.max_sweep_seeds - 1}")) == LIMITS.max_sweep_seeds


def test_cli_seeds_take_ranges(tmp_path):
    from negprompt.cli import build_parser, spec_from_args

    args = build_parser().parse_args(["--prompt", "a man", "--negative", "hat", "--seeds", "3-5,9"])
    assert list(spec_from_args(args, "m", "empty").seeds) == [3, 4, 5, 9]


# ----------------------------------------------------------------------------------------------------------------
# Files


def write_config(folder: Path, model: Path | str, **overrides) -> Path:
    settings = {"model": str(model), "steps": 2, "guidance": 7.5, "prompts": ["portrait photo of a man"],
                "negatives": ["hat", "glasses"], "seeds": "0-1", "seeds_per_block": 2, **overrides}
    path = folder / "sweep.toml"
    path.write_text("\n".join(f"{key} = {json.dumps(value)}" for key, value in settings.items()) + "\n")
    return path


def test_negatives_file_outside_the_config_folder_needs_the_allow_flag(tmp_path):
    from negprompt.sweep import load_config

    (tmp_path / "shared.txt").write_text("hat\n# a comment\nblurry\n")
    folder = tmp_path / "configs"
    folder.mkdir()
    config = write_config(folder, "negprompt-portraits", negatives=[], negatives_file="../shared.txt")
    with pytest.raises(InputError, match="outside the config's folder") as error:
        load_config(config)
    assert error.value.argument == "negatives_file"
    loaded = load_config(config, allow_outside_files=True)
    assert loaded.groups[0].negatives == ("hat", "blurry")
    (folder / "inside.txt").write_text("glasses\n")
    assert load_config(write_config(folder, "negprompt-portraits", negatives_file="inside.txt")).groups[0].negatives \
        == ("hat", "glasses"), "A file beside the config is read without the flag"


def test_duplicate_sweep_negatives_run_once_with_a_note(tmp_path, caplog):
    from negprompt.sweep import expand, load_config

    (tmp_path / "more.txt").write_text("hat\nscarf\n")
    config = load_config(write_config(tmp_path, "negprompt-portraits", negatives=["hat", "glasses", "hat "],
                                      negatives_file="more.txt"))
    assert config.groups[0].negatives == ("hat", "glasses", "scarf"), "Each negative must be counted once"
    assert "'hat'" in caplog.text and "more than once" in caplog.text, "The de-duplication must be noted"
    assert [c.negative for c in expand(config)[0].cells[:4]] == ["", "hat", "glasses", "scarf"]


# ----------------------------------------------------------------------------------------------------------------
# Replays


def test_a_replay_that_fails_while_saving_leaves_no_images_without_a_manifest(tiny_sd_folder, tmp_path, capsys,
                                                                               monkeypatch):
    from negprompt.cli import main
    from negprompt.comparison import Comparison

    first = tmp_path / "first"
    assert main(["--model", str(tiny_sd_folder), "--prompt", "a man", "--negative", "hat", "--steps", "1",
                 "--out", str(first)]) == 0
    save = Comparison.save

    def failing_save(self, folder, differences=True):
        save(self, folder, differences)
        (Path(folder) / "manifest.json").unlink()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Comparison, "save", failing_save)
    again = tmp_path / "again"
    assert main(["--replay", str(first / "manifest.json"), "--out", str(again)]) == 2
    assert "No space left" in capsys.readouterr().err
    assert not again.exists(), "A failed replay must leave no --out folder"
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name], "... and no temporary folder"
    monkeypatch.setattr(Comparison, "save", save)
    assert main(["--replay", str(first / "manifest.json"), "--out", str(again)]) == 0
    assert (again / "manifest.json").is_file() and len(list(again.glob("*-seed*.png"))) == 2


def test_manifest_fields_are_capped_in_the_library_too():
    from negprompt.plan import CellSpec, ComparisonSpec

    cell = CellSpec(1, "a man", "hat", label="L" * (LIMITS.max_label_chars + 1), reference=None)
    with pytest.raises(InputError) as error:
        ComparisonSpec("m", (cell,)).validate()
    assert error.value.argument == "cells[0].label"
    with pytest.raises(InputError) as error:
        ComparisonSpec.from_dict({"model": "m", "cells": [{"seed": 1, "positive": "a", "negative": "b"}] * 65})
    assert error.value.argument == "max_cells", "Too many cells are refused before any is read"


# ----------------------------------------------------------------------------------------------------------------
# The sweep lock


def test_a_second_sweep_on_the_same_out_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    from negprompt.sweep import LOCK, release_lock, take_lock

    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": "now"}))
        with pytest.raises(InputError, match=f"in use by another sweep \\(process {sleeper.pid}"):
            take_lock(out)
    finally:
        sleeper.kill()
        sleeper.wait()
    note = take_lock(out)
    assert note and f"process {sleeper.pid}" in note and "no longer runs" in note, "A dead process's lock is taken"
    assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    release_lock(out)
    assert not (out / LOCK).exists(), "The lock goes when the sweep ends"
    assert take_lock(out) is None
    release_lock(out)


def test_a_sweep_refused_by_the_lock_exits_2_and_a_finished_one_leaves_none(tmp_path, tiny_sd_folder, capsys):
    import torch

    from negprompt.cli import main
    from negprompt.sweep import LOCK

    config, out = write_config(tmp_path, tiny_sd_folder, seeds="0", negatives=["hat"]), tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    threads = torch.get_num_threads()
    try:
        (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": "now"}))
        assert main(["sweep", str(config), "--out", str(out), "--threads", "1"]) == 2
        assert "in use by another sweep" in capsys.readouterr().err
        assert not (out / "sweep.json").exists(), "A refused sweep writes nothing"
        (out / LOCK).write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename, "started": "then"}))
        assert main(["sweep", str(config), "--out", str(out), "--threads", "1"]) == 0
        assert not (out / LOCK).exists() and (out / "results.csv").is_file()
    finally:
        sleeper.kill()
        sleeper.wait()
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_launch_of_two_processes_is_refused_as_a_whole_while_another_runs(tmp_path, tiny_sd_folder):
    from test_sweep import _launch

    from negprompt.sweep import LOCK

    config, out = write_config(tmp_path, tiny_sd_folder, seeds="0-1", seeds_per_block=1), tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "started": "now"}))
        run = _launch(config, out)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert run.returncode != 0 and "in use by another sweep" in run.stderr, run.stderr[-2000:]
    assert not (out / "sweep.json").exists(), "No process of a refused launch may start"
    done = _launch(config, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (out / LOCK).exists(), "The launch's lock goes when it ends"


# ----------------------------------------------------------------------------------------------------------------
# Reports and tables


def test_report_and_table_escape_what_a_user_typed(tmp_path, tiny_sd_folder):
    import csv

    import torch

    from negprompt.report import write_report
    from negprompt.sweep import run_sweep

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        negatives = ["<script>alert(1)</script>", "=HYPERLINK(\"http://x\")", "@SUM(1)", "+1", "**bold** | [a](b)"]
        out = tmp_path / "out"
        run_sweep(write_config(tmp_path, tiny_sd_folder, seeds="0", negatives=negatives,
                               prompts=["<img src=x onerror=alert(1)> man"]), out, device="cpu")
        html_path, md_path = write_report(out)
    finally:
        torch.set_num_threads(threads)
    page, text = html_path.read_text(), md_path.read_text()
    for raw in ("<script>", "<img src=x", "</script>"):
        assert raw not in page and raw not in text, f"{raw!r} must be escaped in report.html and report.md"
    assert "&lt;script&gt;" in text and "\\*\\*bold\\*\\* \\| \\[a\\](b)" in text
    with (out / "results.csv").open(newline="") as f:
        cells = [value for row in csv.reader(f) for value in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], \
        "No results.csv cell may start like a spreadsheet formula"
    assert "'=HYPERLINK(\"http://x\")" in cells and "'- +1" in cells and "'- @SUM(1)" in cells
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert "=HYPERLINK(\"http://x\")" in {r["negative"] for r in rows}, "results.jsonl keeps the text as typed"


def _rows(outcomes: dict[str, list[tuple[bool, bool]]]) -> list[dict]:
    """Detector rows: per negative "- NAME", per seed (baseline shows the hat, the negative's cell shows it)."""
    rows = []
    for n, (negative, seeds) in enumerate(outcomes.items()):
        for seed, (base, cell) in enumerate(seeds):
            sid = f"{n}-{seed}"
            common = {"spec": sid, "prompt": "a man", "seed": seed, "axis": "negatives", "det_clean": True,
                      **{f"det_{a}": 0.0 for a in ("mustache", "beard", "glasses", "smile", "earrings", "scarf")}}
            rows.append({**common, "cell": 0, "kind": "baseline", "reference": None, "label": "baseline",
                         "negative": "", "change": None, "det_hat": float(base)})
            rows.append({**common, "cell": 1, "kind": "negative", "reference": 0, "label": f"- {negative}",
                         "negative": negative, "change": 5.0, "det_hat": float(cell)})
    return rows


def test_removed_counts_only_seeds_whose_baseline_showed_it_and_says_so():
    from negprompt.report import markdown, negative_stats

    # 16 seeds: the baseline shows a hat on 1; the negative removes it there and adds one on another seed
    seeds = [(True, False), (False, True)] + [(False, False)] * 14
    stats = negative_stats(_rows({"hat": seeds}))[0]
    assert (stats.removal["hat"].k, stats.removal["hat"].n) == (1, 1), "Removal counts the one seed with a hat"
    assert (stats.present_negative["hat"].k, stats.present_negative["hat"].n) == (1, 16)
    record = {"config": {"model": "m", "steps": 2, "guidance": 5.0, "sampler": "Default", "seeds": list(range(16))},
              "specs": []}
    text = markdown(record, _rows({"hat": seeds}))
    assert "1/1 = 100%" in text and "1/16 = 6%" in text, "The removal's denominator and the rate with the negative"


def test_most_and_least_effective_are_never_the_same_and_overlap_is_said():
    from negprompt.report import _extremes, markdown, negative_stats

    strong = [(True, False)] * 15 + [(False, False)]
    weak = [(True, True)] * 15 + [(False, False)]
    rows = _rows({"hat": strong, "red hat": weak})
    extremes = _extremes(negative_stats(rows), 3)
    assert [s.negative for s in extremes.best] == ["- hat"] and [s.negative for s in extremes.worst] == ["- red hat"]
    assert not extremes.overlapping
    text = markdown({"config": {"model": "m", "steps": 2, "guidance": 5.0, "sampler": "Default", "seeds": [0]},
                     "specs": []}, rows)
    assert "- most: - hat with" in text and "15 of 15 = 100% (95% CI" in text and "0 of 15 = 0%" in text
    close = _rows({"hat": [(True, False), (True, True)], "red hat": [(True, True), (True, False)]})
    extremes = _extremes(negative_stats(close), 3)
    assert {s.negative for s in extremes.best} & {s.negative for s in extremes.worst} == set()
    assert extremes.overlapping and "cannot rank" in extremes.caution()
    single = _extremes(negative_stats(_rows({"hat": strong})), 3)
    assert single.best and not single.worst, "One negative is never called both most and least effective"


# ----------------------------------------------------------------------------------------------------------------
# Explorer modes and the sweep's threads


def test_term_modes_refuse_extra_negatives_at_their_box_in_the_app():
    from negprompt.app.form import Form, build_request, field_label
    from negprompt.app.settings import AppSettings
    from negprompt.loading import EMBEDDED_NAME

    settings = AppSettings(model=EMBEDDED_NAME, models=(EMBEDDED_NAME,))
    for mode in ("leave-one-out", "terms-alone"):
        form = Form(prompt="a man", negatives=((0, "hat, glasses"), (2, "blurry")), mode=mode)
        with pytest.raises(InputError) as error:
            build_request(settings, form)
        assert field_label(error.value.argument, (0, 2)) == "Negative prompt 3", "The refusal sits at the extra box"
        assert "exactly one negative" in str(error.value)
        form = Form(prompt="a man", negatives=((0, "hat, \u200b"),), mode=mode)
        with pytest.raises(InputError) as error:
            build_request(settings, form)
        assert field_label(error.value.argument, (0,)) == "Negative prompt 1", "An invisible term names its own box"


def test_sweep_threads_default_to_the_idle_cores_and_one_per_launched_process(monkeypatch):
    from negprompt import sweep

    monkeypatch.setattr(sweep, "_no_accelerator", lambda: True)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.3, 1.0, 1.0))
    assert sweep.default_threads(None) == 1, "A 2-core CPU with another job running: one thread"
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert sweep.default_threads("cpu") == 2, "An idle CPU: every core"
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    assert sweep.default_threads(None) == 61
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert sweep.default_threads(None) == 1, "Several launched processes: one thread each"
    assert sweep.default_threads("cuda") == 0, "On an accelerator torch's default stays"
