"""The registry of comparison axes: every front end offers every axis from it (a new axis is one module), and the
guidance-scale axis, whose cells each combine at their own scale."""

from __future__ import annotations

import json

import numpy as np
import pytest

from negprompt import axes
from negprompt.errors import InputError

PROMPT = "portrait photo of a man"


def test_every_front_end_offers_every_axis_from_the_registry():
    from negprompt.app.form import MODES
    from negprompt.cli import build_parser
    from negprompt.sweep import CONFIG_KEYS

    names = [axis.name for axis in axes.ALL]
    assert names[0] == "negatives" and len(set(names)) == len(names) >= 8, names
    assert list(MODES.values()) == names, "The app offers one mode per axis, in the registry's order."
    options = build_parser()._option_string_actions
    for axis in axes.ALL:
        assert axis.flag is None or axis.flag in options, f"The command line has {axis.flag}."
        if axis.values is not None:
            assert axis.values.config_key in CONFIG_KEYS, f"A sweep config can give the {axis.name} axis's values."
    assert set(axes.sweep_axes()) >= {"plain", "timing", "methods", "leave-one-out", "terms-alone", "readings",
                                      "scales"}


def test_a_new_axis_is_one_module(tmp_path, monkeypatch):
    """A module that defines AXIS in the axes package is found, and the command line and the sweep offer it."""
    from negprompt.cli import build_parser, chosen_axis

    (tmp_path / "mirror.py").write_text('''
from negprompt.axes import Axis, Values, listed


def build(prompt, negatives, seeds, *, values=(), windows=None, other_positive=None, **settings):
    from negprompt.plan import negatives_spec

    return negatives_spec(prompt, [n[::-1] for n in negatives for _ in values], seeds, **settings)


AXIS = Axis(name="mirror", label="Mirrored", explanation="Each negative written backwards.", flag="--mirror",
            help="each negative backwards, once per value", build=build, order=99, sweep_name="mirror",
            values=Values(config_key="copies", metavar="N,...", parse=listed(lambda a, v: int(v), "copies"),
                          check=lambda a, v: v, app=(1,)))
''')
    monkeypatch.setattr(axes, "__path__", [*axes.__path__, str(tmp_path)])
    registry = axes._discover()
    monkeypatch.setattr(axes, "REGISTRY", registry)
    monkeypatch.setattr(axes, "ALL", tuple(registry.values()))
    args = build_parser().parse_args(["--prompt", PROMPT, "--negative", "hat", "--mirror", "1,2"])
    axis = chosen_axis(args)
    assert axis.name == "mirror"
    spec = axis.build(PROMPT, ["hat"], [0], values=axis.values.parse(args.mirror), model="m")
    assert [c.negative for c in spec.cells] == ["", "tah", "tah"]
    assert axes.by_sweep_name("mirror") is axis


@pytest.mark.parametrize("text, argument", [("1,x", "scales[1]"), ("1,200", "scales[1]"), (",", "scales"),
                                            ("nan", "scales[0]")])
def test_bad_guidance_scales_are_refused_by_name(text, argument):
    with pytest.raises(InputError) as error:
        axes.get("scales").values.parse(text)
    assert error.value.argument == argument


def test_a_scales_spec_compares_each_negative_with_the_baseline_at_its_own_scale():
    from negprompt.plan import ComparisonSpec

    spec = axes.get("scales").build(PROMPT, ["hat", "glasses"], [3, 4], values=(1, 7.5), model="m")
    assert spec.mode == "scales" and len(spec.cells) == 2 * 2 * 3
    for i, cell in enumerate(spec.cells):
        if cell.kind == "baseline":
            assert cell.reference is None
        else:
            base = spec.cells[cell.reference]
            assert base.kind == "baseline" and base.guidance_scale == cell.guidance_scale and base.seed == cell.seed
    assert [c.label for c in spec.cells[:3]] == ["baseline: no negative (guidance 1)", "- hat (guidance 1)",
                                                 "- glasses (guidance 1)"]
    again = ComparisonSpec.from_json(spec.to_json())
    assert again == spec, "A cell's own scale is recorded in the manifest and replays."
    assert "guidance_scale" not in json.loads(axes.get("negatives").build(PROMPT, ["hat"], [0], model="m")
                                              .to_json())["cells"][1], "Cells without their own scale stay as before."


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def test_a_cell_at_its_own_scale_equals_that_scale_run_alone(tiny_sd):
    """Each cell of a guidance-scales comparison is the image the same negative gives at that scale alone; at scale
    1 the negative does nothing (its cell is its baseline, bit for bit)."""
    from negprompt import compare
    from negprompt.infotext import parse_infotext

    spec = axes.get("scales").build(PROMPT, ["mustache"], [5], values=(1, 4, 9), model="tiny", steps=4)
    result = compare(tiny_sd, spec)
    images = [c.image for c in result.cells]
    assert max_diff(images[0], images[1]) == 0, "At guidance 1 the negative must do nothing."
    for k, g in enumerate((1, 4, 9)):
        alone = compare(tiny_sd, PROMPT, ["mustache"], seed=5, steps=4, guidance_scale=g)
        for j in range(2):
            assert max_diff(images[2 * k + j], alone.cells[j].image) <= 2, f"Cell {2 * k + j}: guidance {g} alone."
        assert parse_infotext(result.cells[2 * k + 1].parameters)["CFG scale"] == g
    assert max_diff(images[3], images[5]) > 0, "Another scale gives another image."
    assert not any("at most 1" in w or "twice" in w for w in result.warnings), result.warnings


def test_the_cost_counts_one_row_for_a_cell_at_scale_one():
    from negprompt.cost import spec_work

    spec = axes.get("scales").build(PROMPT, ["hat"], [0], values=(1, 7.5), model="m", steps=10)
    assert spec_work(spec) == (2 * 1 + 2 * 2, 10, 4), "At scale 1 a cell runs its positive branch alone."


def test_the_package_imports_point_one_way():
    """The front ends import the engine, never the reverse: only the command line's entry point imports
    ``negprompt.cli``, only ``negprompt.app`` imports gradio, and the sweep and the report import no front end."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "negprompt"
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        if module not in ("negprompt.cli", "negprompt.__main__"):
            assert "negprompt.cli" not in names, f"{module} imports the command line"
        if not module.startswith("negprompt.app"):
            assert not any(n == "gradio" or n.startswith(("gradio.", "negprompt.app")) for n in names), \
                f"{module} imports the app or gradio"
