"""Comparison axes: the ways of comparing negatives, one module each, from which every front end is built.

    from negprompt import axes
    axes.get("timing").build("portrait photo of a man", ["hat"], [0, 1], values=(0, 0.3), model=...)
    [axis.label for axis in axes.ALL]        # the app's modes, in order
    axes.by_sweep_name("plain")              # a sweep config's axes = ["plain", "timing"]

An axis states what it compares (``build``: one ``ComparisonSpec`` per call, pure), what it varies over when it
takes values (``Values``: the command line's text, a sweep config's list, the app's fixed choice), its command-line
flag, its app mode's label and the explanation a teacher reads aloud, and how many images a seed makes (counted
before anything is built). The command line (``negprompt.cli``) adds one flag per axis, the app
(``negprompt.app.form``) offers one mode per axis, and a sweep config (``negprompt.sweep``) names axes by their
``sweep_name``, all from this registry: a new axis is one module in this package that defines ``AXIS``.

Analyses that only some axes have (the leave-one-out ranking, the timing table, the X-ray's nearest words) stay in
the modules that compute them (``negprompt.explore``, ``negprompt.embeddings``) and look at the spec's mode.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from negprompt.errors import InputError, shown


@dataclass(frozen=True)
class Values:
    """What an axis varies over: a list of values, the same in every front end."""

    config_key: str  # the sweep config's key holding them ("timing", "methods", "scales")
    metavar: str  # how the command line shows them ("S1,S2,...")
    parse: Callable[[str], tuple]  # the command line's text -> the values; InputError when bad
    check: Callable[[str, Any], Any]  # (argument, one config item) -> the value; InputError when bad
    app: tuple  # the values the app's mode uses


@dataclass(frozen=True)
class Axis:
    """One way of comparing negatives (see the module doc)."""

    name: str  # the spec's mode (``ComparisonSpec.mode``)
    label: str  # the app's mode
    explanation: str  # what it shows, in words a teacher can read aloud
    flag: str | None  # the command-line flag; None for the plain comparison (no flag)
    help: str  # the flag's help
    build: Callable[..., Any]  # (prompt, negatives, seeds, *, values, windows, other_positive, **settings) -> spec
    order: int  # where it stands among the app's modes
    values: Values | None = None  # what it varies over, when it takes a list of values
    long_negative: bool = False  # compares the terms of one long negative (its first), over several seeds
    takes_name: bool = False  # its flag takes one name (the X-ray's embedding), not a list
    sweep_name: str | None = None  # its name in a sweep config's axes; None: not offered in sweeps
    per_seed: Callable[[Sequence[str], tuple], list[int]] | None = None  # images per seed, per comparison it makes

    @property
    def explorer(self) -> bool:
        """Worth watching step by step (previews kept about ten times per run)."""
        return self.name != "negatives"

    @property
    def dest(self) -> str | None:
        """The argparse attribute of its flag."""
        return self.flag[2:].replace("-", "_") if self.flag else None

    def images_per_seed(self, negatives: Sequence[str], values: tuple = ()) -> list[int]:
        """The images one seed makes in each comparison it builds for ``negatives`` (a list: a long-negative axis
        in a sweep makes one comparison per negative), counted without building any."""
        if self.per_seed is not None:
            return self.per_seed(negatives, values)
        if not negatives:
            return []
        return [1 + len(negatives) * max(1, len(values))]


def single_negative(mode: str, negatives: Sequence[str], windows, other_positive) -> str:
    """A long-negative axis takes exactly one negative, acting at every step, and no other positive prompt; never
    drops a second negative silently."""
    if not negatives:
        raise InputError("negatives[0]", "", f"{mode} needs one negative prompt (its terms separated by commas)")
    if len(negatives) > 1:
        raise InputError("negatives[1]", shown(negatives[1]), f"{mode} takes exactly one negative prompt (its terms "
                         f"separated by commas); {len(negatives)} were given: put every term in the first and "
                         "remove the others")
    if windowed(windows):
        raise InputError("negatives[0]", negatives[0], f"{mode} runs the negative at every step: write it "
                                                       "without an @window")
    if other_positive is not None:
        raise InputError("other_positive", other_positive, f"{mode} compares the terms of one negative; it takes "
                                                           "no other positive prompt")
    return negatives[0]


def windowed(windows) -> bool:
    """Whether any negative was written with an @window (one acting during part of the steps only)."""
    return windows is not None and any(tuple(w) != (0.0, 1.0) for w in windows)


def number(argument: str, value, flag: str):
    """A config's number as it is, or a command line's text read as one; ``InputError`` naming ``flag`` when the
    text is not a number. The caller checks the range."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        raise InputError(argument, shown(value), f"{flag}: {argument}={shown(value)} is not a number") from None


def over_terms(mode: str, builder: str) -> Callable[..., Any]:
    """The build of an axis over the terms of one long negative: ``negprompt.explore``'s ``builder`` on the one
    negative ``single_negative`` accepts."""

    def build(prompt, negatives, seeds, *, values=(), windows=None, other_positive=None, **settings):
        from negprompt import explore

        negative = single_negative(mode, negatives, windows, other_positive)
        return getattr(explore, builder)(prompt, negative, seeds, argument="negatives[0]", **settings)

    return build


def per_term(negatives: Sequence[str], values: tuple = ()) -> list[int]:
    """Images per seed of an axis over terms: the baseline, the full negative and one per term, per negative."""
    from negprompt.explore import split_terms

    return [2 + len(split_terms(negative)) for negative in negatives]


def no_other_positive(axis: Axis, other_positive) -> None:
    if other_positive is not None:
        raise InputError("other_positive", other_positive, f"the {axis.name} axis takes no other positive prompt")


def listed(parse_one: Callable[[str, Any], Any], argument: str) -> Callable[[str], tuple]:
    """A command-line parser of comma-separated values, each read by ``parse_one(f"{argument}[i]", text)``."""

    def parse(text: str) -> tuple:
        items = [item for item in text.split(",") if item.strip()]
        if not items:
            raise InputError(argument, shown(text), f"{argument} {shown(text)} names no values")
        return tuple(parse_one(f"{argument}[{i}]", item.strip()) for i, item in enumerate(items))

    return parse


# The registry: every module of this package that defines AXIS (found after the helpers above exist, which
# the modules import).
def _discover() -> dict[str, Axis]:
    found = []
    for module in pkgutil.iter_modules(__path__):
        axis = getattr(importlib.import_module(f"{__name__}.{module.name}"), "AXIS", None)
        if isinstance(axis, Axis):
            found.append(axis)
    return {axis.name: axis for axis in sorted(found, key=lambda a: a.order)}


REGISTRY: dict[str, Axis] = _discover()
ALL: tuple[Axis, ...] = tuple(REGISTRY.values())


def get(name: str) -> Axis:
    """The axis whose spec mode is ``name``; ``InputError`` naming the known ones."""
    if name in ("negatives+positive",):  # the plain comparison with another positive prompt
        name = "negatives"
    if name not in REGISTRY:
        raise InputError("mode", shown(name), f"mode {shown(name)} is not one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def sweep_axes() -> dict[str, Axis]:
    """Sweep name -> axis, for the axes a sweep config can name."""
    return {a.sweep_name: a for a in ALL if a.sweep_name}


def by_sweep_name(name: str) -> Axis:
    axes = sweep_axes()
    if name not in axes:
        raise InputError("axes", shown(name), f"axis {shown(name)} is not one of {', '.join(axes)}")
    return axes[name]


def explorer(mode: str) -> bool:
    """Whether a spec of ``mode`` is worth watching step by step."""
    return mode in REGISTRY and REGISTRY[mode].explorer
