"""Every ``negprompt`` / ``python -m negprompt...`` command in README.md that makes images runs, on the embedded model,
and its output shows what the README says next to it, as the attribute detector reads it.

``CLAIMS`` maps each such command, exactly as the README writes it, to the claim the README makes about its output
and the checks of that claim. A command added to the README without an entry here fails
``test_every_readme_command_states_its_claim``, so a new command must state (and pass) its claim. The slow test runs
the commands in README order in a temporary folder (so ``outputs/`` and ``runs/`` land there; ``--replay`` replays what
the command before it wrote) and checks each claim.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from negprompt.loading import EMBEDDED_MODEL
from negprompt.portrait_model.detector import MAX_OUTSIDE, MAX_PATCH, SURE

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
REPLAY_TOLERANCE = 2  # /255: the largest pixel difference a replay may show (the engine's batching tolerance)
needs_model = pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="no embedded model")


def readme_commands(text: str | None = None) -> list[str]:
    """The commands of README.md's bash blocks that run negprompt, comments and extra spaces removed, in order."""
    text = README.read_text() if text is None else text
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["negprompt"] or (words[:2] == ["python", "-m"] and len(words) > 2
                                              and words[2].split(".")[0] == "negprompt"):
                commands.append(shlex.join(words))
    return commands


# --- what a command's output must show ---------------------------------------------------------------------------

class Output:
    """A command's output folder (a copy taken right after it ran) and what it printed."""

    def __init__(self, folder: Path, printed: str, before: Output | None):
        self.folder, self.printed, self.before = folder, printed, before
        self._cells = None

    @property
    def cells(self) -> list[dict]:
        """The manifest's cells, each with its ``image`` and the detector's ``record``."""
        if self._cells is None:
            from negprompt.portrait_model.detector import detect

            cells = json.loads((self.folder / "manifest.json").read_text())["cells"]
            images = [Image.open(self.folder / c["file"]).convert("RGB") for c in cells]
            for cell, image, record in zip(cells, images, detect(images)):
                cell["image"], cell["record"] = image, record
            self._cells = cells
        return self._cells

    def cell(self, seed: int, label: str) -> dict:
        found = [c for c in self.cells if c["seed"] == seed and c["label"] == label]
        assert found, f"no cell {label!r} on seed {seed} in {[(c['seed'], c['label']) for c in self.cells]}"
        return found[0]

    def reference(self, cell: dict) -> dict:
        return self.cells[cell["reference"]]


def removes(seed: int, label: str, attribute: str, clean: bool = True):
    """On ``seed`` the baseline shows ``attribute`` and the cell ``label`` removes it; with ``clean``, with little
    collateral (the bounds of the app's examples)."""
    def check(out: Output) -> None:
        from negprompt.portrait_model.detector import collateral, collateral_faults, removal_faults

        cell = out.cell(seed, label)
        base = out.reference(cell)
        measured = collateral(cell["image"], base["image"], attribute, cell["record"], base["record"])
        faults = removal_faults(cell["record"], base["record"], attribute)
        if clean:
            faults += collateral_faults(measured)
        assert not faults, (f"'{label}' on seed {seed} must remove {attribute} (baseline >= {SURE}, cell <= "
                            f"{1 - SURE:.1f})" + (f" with little collateral (outside its region <= {MAX_OUTSIDE}%, "
                                                  f"any patch <= {MAX_PATCH}%, other attributes, background, skin "
                                                  "and hair kept)" if clean else "") + f": {faults}; {measured}")
    check.__doc__ = f"seed {seed}: '{label}' removes {attribute}"
    return check


def keeps(seed: int, label: str, attribute: str):
    """On ``seed`` the baseline and the cell ``label`` both show ``attribute``."""
    def check(out: Output) -> None:
        cell = out.cell(seed, label)
        base = out.reference(cell)
        assert base["record"][attribute] >= SURE and cell["record"][attribute] >= SURE, \
            (f"On seed {seed} the baseline and '{label}' must both show {attribute} (>= {SURE}): baseline "
             f"{base['record'][attribute]:.2f}, cell {cell['record'][attribute]:.2f}")
    check.__doc__ = f"seed {seed}: '{label}' keeps {attribute}"
    return check


def counts(label: str, attribute: str, expected: int):
    """Over the rows, ``attribute`` shows (>= 0.5) on exactly ``expected`` cells labelled ``label``."""
    def check(out: Output) -> None:
        found = [c for c in out.cells if c["label"] == label]
        shown = sum(c["record"][attribute] >= 0.5 for c in found)
        assert shown == expected, (f"'{label}' must show {attribute} on {expected} of {len(found)} rows, as the "
                                   f"README says: it shows it on {shown} ({[c['record'][attribute] for c in found]})")
    check.__doc__ = f"'{label}' shows {attribute} on {expected} rows"
    return check


def draws(seed: int, label: str, attribute: str):
    """On ``seed`` the cell ``label`` shows ``attribute``."""
    def check(out: Output) -> None:
        record = out.cell(seed, label)["record"]
        assert record[attribute] >= SURE, \
            f"'{label}' must show {attribute} on seed {seed} (>= {SURE}): {record[attribute]:.2f}"
    check.__doc__ = f"seed {seed}: '{label}' shows {attribute}"
    return check


def same_as_reference(seed: int, label: str):
    """On ``seed`` the cell ``label`` is its reference cell, pixel for pixel (the negative did nothing)."""
    def check(out: Output) -> None:
        cell = out.cell(seed, label)
        worst = int(np.abs(np.asarray(cell["image"], np.int16)
                           - np.asarray(out.reference(cell)["image"], np.int16)).max())
        assert worst == 0, f"'{label}' on seed {seed} must equal its baseline: it differs by {worst}/255"
    check.__doc__ = f"seed {seed}: '{label}' equals its baseline"
    return check


def ranks_first(terms: list[str], trimmed: str):
    """The term ranking puts ``terms`` first (in any order) and the trimmed negative is ``trimmed``."""
    def check(out: Output) -> None:
        ranking = json.loads((out.folder / "manifest.json").read_text())["terms"]
        order = [t["term"] for t in ranking["terms"]]
        assert sorted(order[:len(terms)]) == sorted(terms), f"{terms} must rank first: {order}"
        assert ranking["trimmed_negative"] == trimmed, \
            f"the trimmed negative must be {trimmed!r}: {ranking['trimmed_negative']!r} ({ranking['terms']})"
    check.__doc__ = f"{terms} rank first, trimmed to {trimmed!r}"
    return check


def same_images_as_before(out: Output) -> None:
    """Every cell equals the cell of the same file the command before wrote (within REPLAY_TOLERANCE/255)."""
    assert out.before is not None
    for cell in out.cells:
        a = np.asarray(cell["image"], np.int16)
        b = np.asarray(Image.open(out.before.folder / cell["file"]).convert("RGB"), np.int16)
        worst = int(np.abs(a - b).max())
        assert worst <= REPLAY_TOLERANCE, f"the replayed {cell['file']} differs by {worst}/255 from the original"


def sweep_rows(expected: int):
    def check(out: Output) -> None:
        rows = (out.folder / "results.csv").read_text().strip().splitlines()[1:]
        assert len(rows) == expected, f"results.csv must hold one row per image, {expected}: {len(rows)}"
    check.__doc__ = f"results.csv holds {expected} rows"
    return check


def report_written(out: Output) -> None:
    for name in ("report.html", "report.md"):
        assert (out.folder / name).is_file(), f"the report must write {name} into the sweep's folder"


def manifest(out: Output) -> dict:
    return json.loads((out.folder / "manifest.json").read_text())


def reads(reading: str):
    """Every cell is read ``reading``, as the manifest records it."""
    def check(out: Output) -> None:
        found = {c["reading"] for c in manifest(out)["cells"]}
        assert found == {reading}, f"every cell must be read {reading!r}: {found}"
    check.__doc__ = f"every cell read {reading}"
    return check


def both_readings(out: Output) -> None:
    """The negative shows read plain and read a1111, each beside a baseline of its own reading."""
    cells = manifest(out)["cells"]
    shown = {(c["reading"], c["label"].startswith("baseline")) for c in cells}
    assert shown == {("plain", True), ("plain", False), ("a1111", True), ("a1111", False)}, shown


def loads_embedding(name: str):
    """The manifest records the embedding ``name`` loaded with the model, with its file hash."""
    def check(out: Output) -> None:
        loaded = {e["name"]: e for e in manifest(out).get("model_additions", {}).get("embeddings", [])}
        assert name in loaded and len(loaded[name]["sha256"]) == 64, f"{name!r} must be loaded: {loaded}"
    check.__doc__ = f"{name} loaded with the model"
    return check


def xrays(name: str, vectors: int, seeds: int):
    """Per seed: the baseline, the whole embedding and one cell per vector; each vector's nearest words."""
    def check(out: Output) -> None:
        data = manifest(out)
        assert len(data["cells"]) == seeds * (2 + vectors), [c["label"] for c in data["cells"]]
        found = data["xray"]
        assert found["embedding"] == name and len(found["vectors"]) == vectors, found
        assert all(v["nearest_words"] for v in found["vectors"]), "every vector lists its nearest words"
    check.__doc__ = f"{name}: {vectors} vectors x-rayed on {seeds} seeds"
    return check


# A README command that needs a model or file negprompt does not ship (an SD 1.5 folder, a community embedding, a
# LoRA): it is listed, so the README cannot add a command silently, but it is not run.
OUTSIDE = "needs a model or file that is not shipped: not run here"


P = "portrait photo of a man"
W = f"{P} without mustache"
BASE = "baseline: no negative"
METHODS = ("cfg", "perp-neg", "cfg-rescale", "neg-strength")
# README command -> (what the README says its output shows, the checks of that claim)
CLAIMS = {
    f"python -m negprompt --prompt '{P}' --negative mustache --negative hat --seeds 20,136":
        ("seed 20: '- mustache' removes the mustache, seed 136: '- hat' the hat, each with little else changed",
         [removes(20, "- mustache", "mustache"), removes(136, "- hat", "hat")]),
    f"negprompt --prompt '{P}' --negative mustache --other-positive '{W}' --seeds 166,167,168":
        ("the app's seed-article example: '... without mustache' draws a mustache on 3 of 3 rows, the plain prompt "
         "on 2, the negative on none; the negative removes it cleanly on seeds 166 and 168",
         [counts(f"+ {W}", "mustache", 3), counts(BASE, "mustache", 2), counts("- mustache", "mustache", 0),
          removes(166, "- mustache", "mustache"), removes(168, "- mustache", "mustache")]),
    f"negprompt --prompt '{P}' --negative hat@0.3 --negative glasses@0.2-0.8 --seeds 217,358":
        ("seeds 217 and 358 (hat and glasses in the baseline): the hat from 30% of the steps stays, the glasses "
         "from 20% to 80% go",
         [keeps(217, "- hat @0.3", "hat"), keeps(358, "- hat @0.3", "hat"),
          removes(217, "- glasses @0.2-0.8", "glasses", clean=False),
          removes(358, "- glasses @0.2-0.8", "glasses", clean=False)]),
    f"negprompt --prompt '{P}' --negative hat --timing 0,0.2,0.4,0.6 --seeds 136,148":
        ("on both hat seeds the hat goes with starts 0 and 0.2 and stays with 0.4 and 0.6",
         [counts("- hat", "hat", 0), counts("- hat @0.2", "hat", 0), counts("- hat @0.4", "hat", 2),
          counts("- hat @0.6", "hat", 2)]),
    f"negprompt --prompt '{P}' --negative hat --guidance-methods cfg,perp-neg,cfg-rescale:0.7,neg-strength:3 "
    "--seed 136":
        ("every method removes the hat of seed 136", [removes(136, f"- hat ({m})", "hat", clean=False)
                                                      for m in METHODS]),
    f"negprompt --prompt '{P}' --negative hat --guidance-scales 1,3,7.5,15 --seed 136":
        ("at guidance 1 the negative does nothing (the cell is its baseline, hat and all); at 3 and 7.5 it removes "
         "the hat its own baseline shows; at 15 the baseline itself has lost the hat",
         [keeps(136, "- hat (guidance 1)", "hat"), same_as_reference(136, "- hat (guidance 1)"),
          removes(136, "- hat (guidance 3)", "hat", clean=False), removes(136, "- hat (guidance 7.5)", "hat",
                                                                          clean=False),
          counts("baseline: no negative (guidance 15)", "hat", 0)]),
    "negprompt --replay outputs/manifest.json --out outputs/again":
        ("the same images again", [same_images_as_before]),
    "python -m negprompt.sweep benchmarks/sweeps/smoke.toml --out runs/smoke":
        ("80 images, one row each in results.csv", [sweep_rows(80)]),
    "python -m negprompt.report runs/smoke":
        ("runs/smoke/report.html and report.md", [report_written]),
    f"python -m negprompt --prompt '{P}' --negative 'blurry, hat, lowres, glasses, watermark' --leave-one-out "
    "--seeds 217,358":
        ("'hat' ranks first; 'blurry' and 'watermark' do almost nothing and are trimmed",
         [ranks_first(["hat"], "hat, lowres, glasses")]),
    f"python -m negprompt --prompt '{P}' --negative 'blurry, hat, lowres, glasses' --terms-alone --seed 217":
        ("'hat' alone removes the hat and changes most, 'glasses' alone removes the glasses; nothing is trimmed",
         [ranks_first(["hat"], "blurry, hat, lowres, glasses"), removes(217, "hat", "hat", clean=False),
          removes(217, "glasses", "glasses", clean=False)]),
    f"python -m negprompt --prompt '{P}' --negative hat --timing 0,0.2,0.4,0.6 --seeds 136,148,170":
        ("removed on 3 of 3 seeds from start 0, 2 of 3 from 0.2, none from 0.4 or 0.6",
         [counts("- hat", "hat", 0), counts("- hat @0.2", "hat", 1), counts("- hat @0.4", "hat", 3),
          counts("- hat @0.6", "hat", 3)]),
    f"python -m negprompt --prompt '{P}' --negative '(hat:1.4), [glasses:0.5]' --reading a1111":
        ("the negative read as A1111 reads it (a weight, emphasis down)", [reads("a1111")]),
    f"python -m negprompt --prompt '{P}' --negative '(worst quality:1.4), blurry' --compare-readings":
        ("the negative read plain and read a1111, each beside its own baseline", [both_readings]),
    f"negprompt --prompt '{P}' --negative portrait-bad":
        ("the embedded model's own negative embedding, loaded with it", [loads_embedding("portrait-bad")]),
    f"negprompt --prompt '{P}' --xray portrait-bad --seeds 1,2":
        ("X-ray: the whole embedding, then each of its 4 vectors alone, with each vector's nearest words",
         [xrays("portrait-bad", 4, 2)]),
    "negprompt --model ./sd15 --embedding EasyNegative=./EasyNegative.safetensors --prompt 'a cat' "
    "--negative 'EasyNegative, blurry'": (OUTSIDE, None),
    "negprompt --model ./sd15 --lora ./detail.safetensors:0.8 --prompt 'a cat' --negative blurry": (OUTSIDE, None),
}
RUN = [command for command, (claim, _) in CLAIMS.items() if claim != OUTSIDE]


def test_every_readme_command_states_its_claim():
    commands = readme_commands()
    assert commands, "README.md must show negprompt commands"
    missing = [c for c in commands if c not in CLAIMS]
    assert not missing, ("Each README command needs an entry in CLAIMS (what its output shows, and how to check it): "
                         f"{missing}")
    stale = [c for c in CLAIMS if c not in commands]
    assert not stale, f"CLAIMS names commands the README no longer shows: {stale}"


def test_readme_commands_are_read_from_bash_blocks_only():
    text = ("```bash\nnegprompt --prompt 'a b' --negative hat   # comment\npython app.py\n"
            "python -m negprompt.report runs/x\n```\n```python\nnegprompt --prompt x\n```\n")
    assert readme_commands(text) == ["negprompt --prompt 'a b' --negative hat", "python -m negprompt.report runs/x"]


def _run(command: str) -> tuple[int, str, Path]:
    """Run one README command in this process (cwd: the temporary folder); its exit status, print-out and folder."""
    from negprompt import cli, report, sweep

    words = shlex.split(command)
    if words[0] == "negprompt":
        words = ["python", "-m", "negprompt", *words[1:]]
    module, argv = words[2], words[3:]
    entry = {"negprompt": cli.main, "negprompt.sweep": sweep.main, "negprompt.report": report.main}[module]
    if module == "negprompt.report":
        folder = Path(argv[0])
    else:
        folder = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("outputs")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = entry(argv)
    return status, printed.getvalue(), folder


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Every README command run in README order in one temporary folder: {command: Output}."""
    import os

    work = tmp_path_factory.mktemp("readme")
    (work / "benchmarks").symlink_to(ROOT / "benchmarks")
    here = Path.cwd()
    os.chdir(work)
    try:
        done, last = {}, None
        for i, command in enumerate(c for c in readme_commands() if c in RUN):
            status, printed, folder = _run(command)
            assert status == 0, f"{command} exited with {status}: {printed}"
            snapshot = work / "snapshots" / str(i)
            shutil.copytree(folder, snapshot)
            done[command] = last = Output(snapshot, printed, last)
        return done
    finally:
        os.chdir(here)


@needs_model
@pytest.mark.slow
@pytest.mark.parametrize("command", RUN)
def test_readme_command_shows_what_the_readme_says(command, outputs):
    claim, checks = CLAIMS[command]
    assert checks, f"{command}: the claim {claim!r} needs checks"
    for check in checks:
        check(outputs[command])
