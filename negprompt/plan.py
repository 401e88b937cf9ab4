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
them, so a new way of comparing is a new builder, not a change to the engine.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any

from negprompt.errors import LIMITS, InputError
from negprompt.guidance import CFG, GuidanceMethod, method_from_dict, method_to_dict

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

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "positive": self.positive, "negative": self.negative,
                "guidance": method_to_dict(self.guidance), "window": list(self.window), "label": self.label,
                "reference": self.reference, "row": self.row, "kind": self.kind, "term": self.term}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellSpec:
        data = dict(data)
        data["guidance"] = method_from_dict(data.get("guidance", "cfg"))
        data["window"] = tuple(data.get("window", (0.0, 1.0)))
        return cls(**data)

    def negative_at(self, step: int, steps: int, baseline_negative: str | None) -> str | None:
        """The negative text this cell's "negative" branch reads at ``step`` (0-based) of ``steps``."""
        return self.negative if window_contains(self.window, step, steps) else baseline_negative


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

    def to_dict(self) -> dict[str, Any]:
        return {"version": SPEC_VERSION, "model": self.model, "steps": self.steps,
                "guidance_scale": self.guidance_scale, "height": self.height, "width": self.width,
                "sampler": self.sampler, "baseline": self.baseline, "mode": self.mode,
                "cells": [c.to_dict() for c in self.cells]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComparisonSpec:
        data = dict(data)
        version = data.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise InputError("spec", version, f"spec version {version!r} is not {SPEC_VERSION}, the one this "
                                              "negprompt reads")
        data["cells"] = tuple(CellSpec.from_dict(c) for c in data["cells"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ComparisonSpec:
        return cls.from_dict(json.loads(text))

    def validate(self, max_cells: int = LIMITS.max_cells) -> ComparisonSpec:
        """Raise ``InputError`` naming the first bad field; return the spec itself when it is good."""
        _check_int("steps", self.steps, 1, LIMITS.max_steps)
        scale = self.guidance_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
                or not 0 <= scale <= LIMITS.max_guidance:
            raise InputError("guidance_scale", scale, f"guidance_scale={scale!r} must be a finite number from 0 to "
                                                      f"{LIMITS.max_guidance:g}")
        if self.baseline not in BASELINES:
            raise InputError("baseline", self.baseline, f"baseline={self.baseline!r} must be 'empty' or 'zeros'")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 1, LIMITS.max_side)
        if not self.cells:
            raise InputError("cells", [], "a comparison needs at least one cell")
        if len(self.cells) > max_cells:
            raise InputError("max_cells", len(self.cells), f"{len(self.cells)} images is more than "
                                                           f"max_cells={max_cells}")
        for i, cell in enumerate(self.cells):
            _check_cell(i, cell, len(self.cells))
        return self


def _check_int(argument: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(argument, value, f"{argument}={value!r} must be an integer from {low} to {high}")


def check_text(argument: str, text, *, allow_empty: bool = False) -> None:
    """A prompt must be a string of visible text within ``LIMITS.max_text_chars``."""
    if not isinstance(text, str):
        raise InputError(argument, text, f"{argument}={text!r} must be a string")
    if len(text) > LIMITS.max_text_chars:
        raise InputError(argument, f"{text[:40]}...", f"{argument} is {len(text):,} characters long; at most "
                                                      f"{LIMITS.max_text_chars:,} are accepted")
    if not (allow_empty and text == "") and not _visible(text):
        raise InputError(argument, text, f"{argument}={text!r} has no visible text")


def _visible(text: str) -> bool:
    """Whether ``text`` holds a character that is neither whitespace nor an invisible format character."""
    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cf", "Cc", "Zs", "Zl", "Zp") for ch in text)


def _check_cell(i: int, cell: CellSpec, n: int) -> None:
    where = f"cells[{i}]"
    _check_int(f"{where}.seed", cell.seed, 0, LIMITS.max_seed)
    check_text(f"{where}.positive", cell.positive)
    if cell.negative is not None:
        check_text(f"{where}.negative", cell.negative, allow_empty=True)
    start, stop = cell.window
    if not (isinstance(start, (int, float)) and isinstance(stop, (int, float)) and 0 <= start <= stop <= 1):
        raise InputError(f"{where}.window", cell.window, f"{where}.window={cell.window!r} must be (start, stop) "
                                                         "fractions of the steps with 0 <= start <= stop <= 1")
    if cell.reference is not None and not (isinstance(cell.reference, int) and 0 <= cell.reference < n
                                           and cell.reference != i):
        raise InputError(f"{where}.reference", cell.reference, f"{where}.reference={cell.reference!r} must be the "
                                                               f"index of another cell (0 to {n - 1})")


# ---------------------------------------------------------------------------------------------------------------
# Builders


def negatives_spec(prompt: str, negatives: list[str], seeds: list[int], *, model: str, steps: int = 20,
                   guidance_scale: float = 7.5, height: int | None = None, width: int | None = None,
                   sampler: str = "Default", baseline: str = "empty", other_positive: str | None = None,
                   guidance: GuidanceMethod | None = None) -> ComparisonSpec:
    """The classic comparison: one row per seed, holding the baseline (no negative), one cell per negative and,
    with ``other_positive``, one cell that runs another positive prompt with no negative (the seed article's
    "... without mustache"), all compared against the row's baseline."""
    if baseline not in BASELINES:
        raise InputError("baseline", baseline, f"baseline={baseline!r} must be 'empty' or 'zeros'")
    none = "" if baseline == "empty" else None
    method = guidance or CFG()
    cells: list[CellSpec] = []
    for row, seed in enumerate(seeds):
        base = len(cells)
        cells.append(CellSpec(seed, prompt, none, method, label="baseline", row=row, kind="baseline"))
        for negative in negatives:
            cells.append(CellSpec(seed, prompt, negative, method, label=negative, reference=base, row=row))
        if other_positive is not None:
            cells.append(CellSpec(seed, other_positive, none, method, label=other_positive, reference=base, row=row,
                                  kind="positive"))
    return ComparisonSpec(model=model, cells=tuple(cells), steps=steps, guidance_scale=guidance_scale,
                          height=height, width=width, sampler=sampler, baseline=baseline,
                          mode="negatives" if other_positive is None else "negatives+positive")


def with_cells(spec: ComparisonSpec, cells: list[CellSpec] | tuple[CellSpec, ...]) -> ComparisonSpec:
    """The same settings with other cells."""
    return replace(spec, cells=tuple(cells))
