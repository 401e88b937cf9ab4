"""What a comparison makes, as data: one ``CellSpec`` per image, a ``ComparisonSpec`` around them. Pure, no model.

    from negprompt.plan import negatives_spec
    spec = negatives_spec("portrait photo of a man", ["mustache", "hat"], seeds=[1, 2], model="negprompt-portraits",
                          other_positive="portrait photo of a man without mustache")
    spec.to_json()                        # what manifest.json records
    ComparisonSpec.from_json(text)        # ... and what ``compare(pipe, spec)`` replays, pixel for pixel

A cell states everything that decides its image apart from the shared settings: its seed (which picks the row's
starting noise), its positive prompt, its negative (a text, ``""`` for the empty prompt, or ``None`` for zero
embeddings, SDXL's "no negative"), its guidance method, the fraction of the steps during which its negative acts
(``window``; outside it the cell uses the comparison's baseline negative) and the cell it is compared against
(``reference``: its difference map and change score are taken against that cell).

Builders make the usual specs; every front end (library, command line, app, sweep files) produces specs through
them, so a new way of comparing is a new builder, not a change to the engine:

    negatives_spec(prompt, negatives, seeds, ...)          # baseline + one cell per negative (+ another positive)
    methods_spec(prompt, negatives, seeds, methods, ...)   # ... one cell per (negative, guidance method)
    timing_spec(prompt, negatives, seeds, starts, ...)     # ... one cell per (negative, start fraction)
    readings_spec(prompt, negatives, seeds, ...)           # ... each negative read plain and read a1111

A window is written into a negative as ``hat@0.3`` (from 30% of the steps to the end) or ``hat@0.3-0.8``
(``parse_window``, shared by the command line and the app; ``format_window`` writes it back).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from negprompt.errors import LIMITS, InputError, shown
from negprompt.guidance import BRANCHES, CFG, GuidanceMethod, method_from_dict, method_label, method_to_dict
from negprompt.loras import check_prompt
from negprompt.reading import READINGS

SPEC_VERSION = 1
BASELINES = ("empty", "zeros")  # the baseline's negative: the empty prompt, or zero embeddings
KINDS = ("baseline", "negative", "positive")  # what a cell shows; builders of other axes add their own kinds


@dataclass(frozen=True)
class CellSpec:
    """One image to make."""

    seed: int  # picks the starting noise: every cell with this seed starts from the same latent
    positive: str  # the positive prompt
    negative: str | None  # the negative prompt; "" the empty prompt; None zero embeddings
    guidance: GuidanceMethod = field(default_factory=CFG)  # how the UNet branches combine
    window: tuple[float, float] = (0.0, 1.0)  # fraction of the steps [start, stop) during which the negative acts
    label: str = ""  # the caption shown with the image
    reference: int | None = None  # index of the cell this one is compared against (None: none, e.g. a baseline)
    row: int = 0  # the grid row it is shown in
    kind: str = "negative"  # "baseline", "negative", "positive", or an axis a builder adds ("leave-out", ...)
    term: str = ""  # for axes over one term of a negative: that term
    reading: str = ""  # how its prompts are read ("plain", "a1111"; see negprompt.reading); "" the comparison's
    guidance_scale: float | None = None  # its own guidance scale; None the comparison's

    def to_dict(self) -> dict[str, Any]:
        out = {"seed": self.seed, "positive": self.positive, "negative": self.negative,
               "guidance": method_to_dict(self.guidance), "window": list(self.window), "label": self.label,
               "reference": self.reference, "row": self.row, "kind": self.kind, "term": self.term}
        out |= {"reading": self.reading} if self.reading else {}
        return out | ({"guidance_scale": self.guidance_scale} if self.guidance_scale is not None else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any], argument: str = "cell") -> CellSpec:
        data = dict(data)
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(argument, unknown, f"{argument} has unknown field(s) {', '.join(unknown)}")
        for name in ("label", "kind", "term"):  # checked before anything renders them
            if name in data:
                check_cell_text(f"{argument}.{name}", data[name])
        data["guidance"] = method_from_dict(data.get("guidance", "cfg"), f"{argument}.guidance")
        window = data.get("window", (0.0, 1.0))
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            raise InputError(f"{argument}.window", window, f"{argument}.window={shown(window)} must be "
                                                           "[start, stop]")
        data["window"] = tuple(window)
        try:
            return cls(**data)
        except TypeError as error:  # a required field is missing
            raise InputError(argument, data, f"{argument}: {error}") from None

    def negative_at(self, step: int, steps: int, baseline_negative: str | None) -> str | None:
        """The negative text this cell's "negative" branch reads at ``step`` (0-based) of ``steps``."""
        return self.negative if window_contains(self.window, step, steps) else baseline_negative


def check_window(argument: str, window) -> None:
    """A window is (start, stop), fractions of the steps with 0 <= start <= stop <= 1."""
    ok = isinstance(window, tuple) and len(window) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in window)
    if not (ok and 0 <= window[0] <= window[1] <= 1):
        raise InputError(argument, window, f"{argument}={window!r} must be (start, stop) fractions of the steps "
                                           "with 0 <= start <= stop <= 1")


WHOLE = (0.0, 1.0)  # the default window: the negative acts at every step
_WINDOW = re.compile(r"^(?P<text>.*?)\s*@\s*(?P<start>[0-9.]+)\s*(?:-\s*(?P<stop>[0-9.]+))?\s*$", re.S)


def parse_window(text: str, argument: str = "negative") -> tuple[str, tuple[float, float]]:
    """Read the window written into a negative: ``"hat@0.3"`` -> ``("hat", (0.3, 1.0))`` (the negative acts from
    30% of the steps to the end), ``"hat@0.3-0.8"`` -> ``("hat", (0.3, 0.8))``, ``"hat"`` -> ``("hat", (0, 1))``.
    Fractions of the steps, from 0 to 1. Any ``@`` marks a window, so a malformed one is an error, not text."""
    if "@" not in text:
        return text, WHOLE
    match = _WINDOW.match(text)
    message = (f"{argument}={text!r}: a window is written after '@' as START or START-STOP, fractions of the steps "
               "from 0 to 1 (e.g. 'hat@0.3' or 'hat@0.3-0.8')")
    if not match or "@" in match["text"] or not match["text"].strip():
        raise InputError(argument, text, message)
    try:
        window = (float(match["start"]), float(match["stop"]) if match["stop"] else 1.0)
    except ValueError:
        raise InputError(argument, text, message) from None
    if not 0 <= window[0] <= window[1] <= 1:
        raise InputError(argument, text, message)
    return match["text"].strip(), window


def format_window(window: tuple[float, float]) -> str:
    """The text ``parse_window`` reads after ``@``: ``(0.3, 1)`` -> ``"0.3"``, ``(0.3, 0.8)`` -> ``"0.3-0.8"``;
    ``""`` for the whole run."""
    start, stop = window
    if (start, stop) == WHOLE:
        return ""
    return f"{start:g}" if stop == 1 else f"{start:g}-{stop:g}"


def window_contains(window: tuple[float, float], step: int, steps: int) -> bool:
    """Whether step ``step`` (0-based) of ``steps`` lies in the window [start, stop) of fractions of the steps.

    Step i covers the fraction [i/steps, (i+1)/steps); it is inside when its start is: ``start <= i/steps < stop``.
    So (0, 1) holds every step, (0.5, 1) the second half, and (x, x) none."""
    start, stop = window
    return start <= step / steps < stop


@dataclass(frozen=True)
class ComparisonSpec:
    """A whole comparison: the shared settings and its cells. What ``manifest.json`` records and replays."""

    model: str  # Hub id, folder, or the embedded model's name
    cells: tuple[CellSpec, ...]
    steps: int = 20  # denoising steps
    guidance_scale: float = 7.5  # guidance scale shared by every cell
    height: int | None = None  # image height in pixels (None: the model's own size)
    width: int | None = None  # image width in pixels
    sampler: str = "Default"  # sampler name (see negprompt.schedulers)
    baseline: str = "empty"  # the baseline negative: "empty" (the empty prompt) or "zeros" (zero embeddings)
    mode: str = "negatives"  # the builder that made it, for front ends and the manifest
    reading: str = "plain"  # how prompts are read: "plain" (as diffusers does) or "a1111" (negprompt.reading)

    @property
    def baseline_negative(self) -> str | None:
        return "" if self.baseline == "empty" else None

    @property
    def seeds(self) -> tuple[int, ...]:
        """The distinct seeds, in order of first use."""
        return tuple(dict.fromkeys(c.seed for c in self.cells))

    @property
    def rows(self) -> int:
        return 1 + max((c.row for c in self.cells), default=-1)

    def reading_of(self, cell: CellSpec) -> str:
        """How ``cell``'s prompts are read: its own reading, else the comparison's."""
        return cell.reading or self.reading

    def scale_of(self, cell: CellSpec) -> float:
        """``cell``'s guidance scale: its own, else the comparison's."""
        return self.guidance_scale if cell.guidance_scale is None else cell.guidance_scale

    def to_dict(self) -> dict[str, Any]:
        return {"version": SPEC_VERSION, "model": self.model, "steps": self.steps,
                "guidance_scale": self.guidance_scale, "height": self.height, "width": self.width,
                "sampler": self.sampler, "baseline": self.baseline, "mode": self.mode, "reading": self.reading,
                "cells": [c.to_dict() for c in self.cells]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComparisonSpec:
        if not isinstance(data, dict):
            raise InputError("spec", data, "a comparison spec must be a JSON object")
        data = dict(data)
        version = data.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise InputError("spec", version, f"spec version {version!r} is not {SPEC_VERSION}, the one this "
                                              "negprompt reads")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError("spec", unknown, f"the spec has unknown field(s) {', '.join(unknown)}")
        cells = data.get("cells")
        if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
            raise InputError("cells", shown(cells), "the spec's cells must be a list of objects")
        if len(cells) > LIMITS.max_cells:  # counted before any cell is read
            raise InputError("max_cells", len(cells), f"the spec has {len(cells):,} cells; at most "
                                                      f"{LIMITS.max_cells} are run")
        for name in ("mode", "sampler"):
            if name in data:
                check_name(name, data[name])
        data["cells"] = tuple(CellSpec.from_dict(c, f"cells[{i}]") for i, c in enumerate(cells))
        try:
            return cls(**data)
        except TypeError as error:  # a required field is missing
            raise InputError("spec", sorted(data), f"the spec is incomplete: {error}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ComparisonSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError("spec", text[:40], f"the spec is not valid JSON: {error}") from None
        return cls.from_dict(data)

    def validate(self, max_cells: int = LIMITS.max_cells) -> ComparisonSpec:
        """Raise ``InputError`` naming the first bad field; return the spec itself when it is good."""
        check_text("model", self.model)
        check_int("steps", self.steps, 1, LIMITS.max_steps)
        check_scale("guidance_scale", self.guidance_scale)
        if self.baseline not in BASELINES:
            raise InputError("baseline", shown(self.baseline), f"baseline={shown(self.baseline)} must be 'empty' or "
                                                               "'zeros'")
        check_name("sampler", self.sampler)
        check_name("mode", self.mode)
        check_reading("reading", self.reading)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, 1, LIMITS.max_side)
        if not self.cells:
            raise InputError("cells", [], "a comparison needs at least one cell")
        if len(self.cells) > max_cells:
            raise InputError("max_cells", len(self.cells), f"{len(self.cells)} images is more than "
                                                           f"max_cells={max_cells}")
        for i, cell in enumerate(self.cells):
            _check_cell(i, cell, len(self.cells))
        return self


def check_int(argument: str, value, low: int, high: int) -> None:
    """An integer (not a bool) from ``low`` to ``high``, else ``InputError`` naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(argument, value, f"{argument}={shown(value)} must be an integer from {low} to {high}")


def check_scale(argument: str, scale) -> float:
    """A guidance scale: a finite number from 0 to ``LIMITS.max_guidance``."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or not 0 <= scale <= LIMITS.max_guidance:
        raise InputError(argument, shown(scale), f"{argument}={shown(scale)} must be a finite number from 0 to "
                                                 f"{LIMITS.max_guidance:g}")
    return float(scale)


def check_name(argument: str, value) -> None:
    """A short name (a sampler, a mode): a string of at most ``LIMITS.max_kind_chars`` printable characters."""
    if not isinstance(value, str) or len(value) > LIMITS.max_kind_chars or not value.isprintable():
        raise InputError(argument, shown(value), f"{argument}={shown(value)} must be a name of at most "
                                                 f"{LIMITS.max_kind_chars} printable characters")


def check_cell_text(argument: str, value) -> None:
    """A cell's ``label``, ``kind`` or ``term`` (``argument`` ends with its name): a string within its limit (a
    label: ``LIMITS.max_label_chars``; a term: ``max_text_chars``); a kind is a short name (``check_name``)."""
    name = argument.rsplit(".", 1)[-1]
    if name == "kind":
        return check_name(argument, value)
    limit = LIMITS.max_label_chars if name == "label" else LIMITS.max_text_chars
    if not isinstance(value, str):
        raise InputError(argument, shown(value), f"{argument}={shown(value)} must be a string")
    if len(value) > limit:
        raise InputError(argument, shown(value), f"{argument} is {len(value):,} characters long; at most {limit:,} "
                                                 "are accepted")


def parse_seeds(value, argument: str = "seeds", max_count: int = LIMITS.max_sweep_seeds) -> tuple[int, ...]:
    """``"0-63"``, ``7``, or a list of both -> the seeds in order. Ranges are counted before they are expanded: more
    than ``max_count`` seeds, a seed outside 0 to ``LIMITS.max_seed`` or a repeated seed is an ``InputError``."""
    items = value if isinstance(value, list) else [value]
    ranges: list[tuple[int, int]] = []
    for i, item in enumerate(items):
        where = f"{argument}[{i}]" if isinstance(value, list) else argument
        if isinstance(item, int) and not isinstance(item, bool):
            low = high = item
        else:
            match = re.fullmatch(r"\s*(\d{1,20})\s*(?:-\s*(\d{1,20})\s*)?", item) if isinstance(item, str) else None
            if not match or (match[2] is not None and int(match[1]) > int(match[2])):
                raise InputError(where, shown(item), f"{where}={shown(item)} must be a seed or a range like \"0-63\"")
            low, high = int(match[1]), int(match[2] if match[2] is not None else match[1])
        for s in (low, high):
            if not 0 <= s <= LIMITS.max_seed:
                raise InputError(where, s, f"{where}: seed {s} is outside 0 to {LIMITS.max_seed}")
        ranges.append((low, high))
    count = sum(high - low + 1 for low, high in ranges)
    if count > max_count:
        raise InputError(argument, count, f"{argument} names {count:,} seeds; at most {max_count:,} are run")
    seeds = [s for low, high in ranges for s in range(low, high + 1)]
    if len(set(seeds)) != len(seeds):
        raise InputError(argument, shown(value), f"{argument}={shown(value)} names a seed twice")
    if not seeds:
        raise InputError(argument, shown(value), f"{argument} must name at least one seed")
    return tuple(seeds)


def check_text(argument: str, text, *, allow_empty: bool = False) -> None:
    """A prompt must be a string of visible text within ``LIMITS.max_text_chars``."""
    if not isinstance(text, str):
        raise InputError(argument, text, f"{argument}={text!r} must be a string")
    if len(text) > LIMITS.max_text_chars:
        raise InputError(argument, f"{text[:40]}...", f"{argument} is {len(text):,} characters long; at most "
                                                      f"{LIMITS.max_text_chars:,} are accepted")
    if not (allow_empty and text == "") and not _visible(text):
        raise InputError(argument, text, f"{argument}={text!r} has no visible text")
    check_prompt(argument, text)


def check_reading(argument: str, reading) -> None:
    """A prompt reading is one of ``READINGS`` ("plain", "a1111")."""
    if reading not in READINGS:
        raise InputError(argument, shown(reading), f"{argument}={shown(reading)} must be one of "
                                                   f"{', '.join(READINGS)}")


def _visible(text: str) -> bool:
    """Whether ``text`` holds a character that is neither whitespace nor an invisible format character."""
    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cf", "Cc", "Zs", "Zl", "Zp") for ch in text)


def _check_cell(i: int, cell: CellSpec, n: int) -> None:
    where = f"cells[{i}]"
    check_int(f"{where}.seed", cell.seed, 0, LIMITS.max_seed)
    check_text(f"{where}.positive", cell.positive)
    if cell.negative is not None:
        check_text(f"{where}.negative", cell.negative, allow_empty=True)
    if not isinstance(cell.guidance, GuidanceMethod) or not set(cell.guidance.branches) <= set(BRANCHES):
        raise InputError(f"{where}.guidance", cell.guidance, f"{where}.guidance={cell.guidance!r} is not a "
                                                             "guidance method (see negprompt.guidance.METHODS)")
    check_window(f"{where}.window", cell.window)
    for name in ("label", "kind", "term"):
        check_cell_text(f"{where}.{name}", getattr(cell, name))
    check_int(f"{where}.row", cell.row, 0, LIMITS.max_cells)
    if cell.reading != "":
        check_reading(f"{where}.reading", cell.reading)
    if cell.guidance_scale is not None:
        check_scale(f"{where}.guidance_scale", cell.guidance_scale)
    if cell.reference is not None and not (isinstance(cell.reference, int) and 0 <= cell.reference < n
                                           and cell.reference != i):
        raise InputError(f"{where}.reference", cell.reference, f"{where}.reference={cell.reference!r} must be the "
                                                               f"index of another cell (0 to {n - 1})")


# ---------------------------------------------------------------------------------------------------------------
# Builders


def negatives_spec(prompt: str, negatives: Sequence[str], seeds: Sequence[int], *, model: str, steps: int = 20,
                   guidance_scale: float = 7.5, height: int | None = None, width: int | None = None,
                   sampler: str = "Default", baseline: str = "empty", other_positive: str | None = None,
                   guidance: GuidanceMethod | None = None, windows: Sequence[tuple[float, float]] | None = None,
                   reading: str = "plain") -> ComparisonSpec:
    """The classic comparison: one row per seed, holding the baseline (no negative), one cell per negative and,
    with ``other_positive``, one cell that runs another positive prompt with no negative (the seed article's
    "... without mustache"), all compared against the row's baseline. ``windows`` (one per negative) limits when
    each negative acts (see ``parse_window``). ``reading``: how every prompt is read ("plain" or "a1111")."""
    windows = list(windows) if windows is not None else [WHOLE] * len(negatives)
    if len(windows) != len(negatives):
        raise InputError("windows", windows, f"{len(windows)} windows for {len(negatives)} negatives")
    method = guidance or CFG()
    variants = [[(negative, window, method)] for negative, window in zip(negatives, windows)]
    return _rows_spec(prompt, variants, seeds, mode="negatives" if other_positive is None else "negatives+positive",
                      other_positive=other_positive, model=model, steps=steps, guidance_scale=guidance_scale,
                      height=height, width=width, sampler=sampler, baseline=baseline, method=method,
                      reading=reading)


def methods_spec(prompt: str, negatives: Sequence[str], seeds: Sequence[int], methods: Sequence[GuidanceMethod], *,
                 model: str, windows: Sequence[tuple[float, float]] | None = None, **settings) -> ComparisonSpec:
    """Guidance methods as an axis: per row, the baseline, then for each negative one cell per method (same seed,
    same negative, same window), all compared against the row's baseline (plain CFG with no negative)."""
    if not methods:
        raise InputError("methods", [], "name at least one guidance method")
    windows = list(windows) if windows is not None else [WHOLE] * len(negatives)
    variants = [[(negative, window, m) for m in methods] for negative, window in zip(negatives, windows)]
    return _rows_spec(prompt, variants, seeds, mode="methods", model=model, **settings)


def timing_spec(prompt: str, negatives: Sequence[str], seeds: Sequence[int], starts: Sequence[float], *, model: str,
                guidance: GuidanceMethod | None = None, **settings) -> ComparisonSpec:
    """When a negative acts, as an axis: per row, the baseline, then for each negative one cell per start fraction
    (the negative acts from ``start`` of the steps to the end; start 0 is the plain negative), all compared
    against the row's baseline."""
    if not starts:
        raise InputError("starts", [], "name at least one start fraction")
    for i, start in enumerate(starts):
        check_window(f"starts[{i}]", (start, 1.0))
    method = guidance or CFG()
    variants = [[(negative, (float(start), 1.0), method) for start in starts] for negative in negatives]
    return _rows_spec(prompt, variants, seeds, mode="timing", model=model, method=method, **settings)


def readings_spec(prompt: str, negatives: Sequence[str], seeds: Sequence[int], *, model: str,
                  windows: Sequence[tuple[float, float]] | None = None, other_positive: str | None = None,
                  reading: str = "plain", **settings) -> ComparisonSpec:
    """Prompt readings as an axis: per row, the baseline read plain and read a1111, then each negative read plain
    (compared against the plain baseline) and read a1111 (against the a1111 baseline), from the same noise. The
    a1111 baseline differs from the plain one only where the positive holds A1111 syntax or where a long a1111
    negative pads every a1111 text to more chunks. ``reading`` is the comparison's own (unused: each cell names
    its own); ``settings``: those of ``negatives_spec``."""
    if other_positive is not None:
        raise InputError("other_positive", other_positive, "comparing readings takes no other positive prompt")
    base = negatives_spec(prompt, negatives, seeds, model=model, windows=windows, **settings)
    cells: list[CellSpec] = []
    for row in range(len(seeds)):
        members = [c for c in base.cells if c.row == row]
        bases = {}
        for how in READINGS:
            bases[how] = len(cells)
            cells.append(replace(members[0], reading=how, label=f"{members[0].label} ({how})"))
        for cell in members[1:]:
            cells += [replace(cell, reading=how, reference=bases[how], label=f"{cell.label} ({how})")
                      for how in READINGS]
    return replace(base, cells=tuple(cells), mode="readings", reading=reading)


def cell_label(negative: str, window: tuple[float, float] = WHOLE, method: GuidanceMethod | None = None) -> str:
    """A negative cell's caption: ``"- hat"``, ``"- hat @0.3"``; with ``method``, ``"- hat (perp-neg)"``."""
    label = f"- {negative}"
    if tuple(window) != WHOLE:
        label += f" @{format_window(window)}"
    if method is not None:
        label += f" ({method_label(method)})"
    return label


def baseline_label(baseline: str) -> str:
    return "baseline: zero embeddings" if baseline == "zeros" else "baseline: no negative"


def _rows_spec(prompt: str, variants: list[list[tuple[str, tuple[float, float], GuidanceMethod]]],
               seeds: Sequence[int], *, mode: str, model: str, steps: int = 20, guidance_scale: float = 7.5,
               height: int | None = None, width: int | None = None, sampler: str = "Default",
               baseline: str = "empty", other_positive: str | None = None,
               method: GuidanceMethod | None = None, reading: str = "plain") -> ComparisonSpec:
    """One row per seed: the baseline, one cell per (negative, window, method) variant, and the other positive."""
    if baseline not in BASELINES:
        raise InputError("baseline", baseline, f"baseline={baseline!r} must be 'empty' or 'zeros'")
    none = "" if baseline == "empty" else None
    base_method = method or CFG()
    cells: list[CellSpec] = []
    for row, seed in enumerate(seeds):
        base = len(cells)
        cells.append(CellSpec(seed, prompt, none, base_method, label=baseline_label(baseline), row=row,
                              kind="baseline"))
        for per_negative in variants:
            show_method = len({m for _, _, m in per_negative}) > 1 or mode == "methods"
            for negative, window, m in per_negative:
                cells.append(CellSpec(seed, prompt, negative, m, window=tuple(window), reference=base, row=row,
                                      label=cell_label(negative, window, m if show_method else None)))
        if other_positive is not None:
            cells.append(CellSpec(seed, other_positive, none, base_method, label=f"+ {other_positive}",
                                  reference=base, row=row, kind="positive"))
    return ComparisonSpec(model=model, cells=tuple(cells), steps=steps, guidance_scale=guidance_scale,
                          height=height, width=width, sampler=sampler, baseline=baseline, mode=mode,
                          reading=reading)


def expand_cells(spec: ComparisonSpec, each) -> ComparisonSpec:
    """``spec`` with every cell replaced by the cells ``each(cell)`` returns (none, itself, or several), the
    references following the cells they named (to the first cell each became; a cell whose reference is gone
    gets none)."""
    groups = [list(each(cell)) for cell in spec.cells]
    first, position = [], 0
    for group in groups:
        first.append(position if group else None)
        position += len(group)
    cells = [replace(cell, reference=None if cell.reference is None else first[cell.reference])
             for group in groups for cell in group]
    return replace(spec, cells=tuple(cells))


def with_cells(spec: ComparisonSpec, cells: list[CellSpec] | tuple[CellSpec, ...]) -> ComparisonSpec:
    """The same settings with other cells."""
    return replace(spec, cells=tuple(cells))
