"""Which words of a negative matter, and when a negative starts to matter: comparison specs and their analysis.

    from negprompt.explore import leave_one_out_spec, rank_terms
    spec = leave_one_out_spec("portrait photo of a man", "hat, glasses, blurry, (worst quality:1.4)", seeds=[1, 2],
                              model="negprompt-portraits")
    result = compare(pipe, spec)                       # one UNet batch per step for every cell
    ranking = rank_terms(spec, result.change_scores)   # each cell's change against its reference cell
    ranking.trimmed                                    # "hat, glasses": the negative without the inert terms

Leave-one-out: each row (one seed) holds the baseline, the full negative, and one cell per term with that term
left out, compared against the full negative. A term matters as much as leaving it out changes the image. The
converse view, ``terms_alone_spec``: each term alone, compared against the baseline. A term "does almost nothing"
when its cell changed less than ``INERT_PERCENT`` of the image (mean absolute pixel difference, the change score of
``negprompt.difference``) on every row.

Divergence curves (``divergence_curves``): from each cell's x0 previews at regular steps, its change against its
reference cell over the steps, so a class can see when each negative starts to matter.

Timing (``timing_table``): for a sweep of one negative started at several fractions of the steps, per start how
often the negative removed the attribute it names (by a detector: present in the baseline, gone in the cell), how
often it added it (Ban et al. (2024), "Understanding the Impact of Negative Prompts": applied early, a negative can
add what it names), how much else changed, and the latest start that still removes it.

Everything here is pure (plain data in, plain data out); no model runs.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from negprompt.errors import InputError, shown
from negprompt.plan import (
    CellSpec,
    ComparisonSpec,
    check_text,
    negatives_spec,
    with_cells,
)

INERT_PERCENT = 1.0  # a cell changing less than this (mean absolute pixel difference, % of full scale) "does almost
#                      nothing"; about 2.5 grey levels on average, below what a viewer notices side by side
_OPEN, _CLOSE = "([{<", ")]}>"

# ---------------------------------------------------------------------------------------------------------------
# Terms of a negative


def split_terms(negative: str) -> list[str]:
    """Split a negative prompt on commas outside brackets, trimmed, without empty terms.

    A1111 groups stay whole: ``"(bad hands, extra fingers:1.2), blurry"`` is two terms; ``\\(`` and ``\\)`` are
    literal characters, not brackets. Unbalanced closing brackets are treated as text."""
    terms, current, depth, escaped = [], [], 0, False
    for ch in negative:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE and depth > 0:
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append("".join(current))
            current = []
            continue
        current.append(ch)
    terms.append("".join(current))
    return [t for t in (" ".join(t.split()) for t in terms) if t]


def term_labels(terms: Sequence[str], reading: str = "plain") -> list[str]:
    """How each term is shown: as written; under the a1111 reading in words (``"(worst quality:1.4)"`` ->
    ``"worst quality (weight 1.4)"``, ``negprompt.reading.describe``)."""
    if reading != "a1111":
        return list(terms)
    from negprompt.reading import describe

    return [describe(t) for t in terms]


def join_terms(terms: Sequence[str]) -> str:
    """The negative made of ``terms``, as ``split_terms`` reads it back."""
    return ", ".join(terms)


def _terms_of(negative: str, argument: str = "negative", reading: str = "plain") -> list[str]:
    """The terms of ``negative``, each visible text: split at commas outside brackets; under the a1111 reading by
    its parser (``negprompt.reading.terms``: weights stay with their term, BREAK separates, weighted groups split).
    An ``InputError`` naming ``argument`` (the field the negative came from) otherwise."""
    if not isinstance(negative, str):
        raise InputError(argument, negative, f"{argument}={shown(negative)} must be a string")
    from negprompt import reading as readings

    terms = readings.terms(negative) if reading == "a1111" else split_terms(negative)
    if not terms:
        raise InputError(argument, negative, f"{argument}={shown(negative)} has no terms to compare (terms are "
                                             "separated by commas)")
    for k, term in enumerate(terms):
        try:
            check_text(argument, term)
        except InputError:
            raise InputError(argument, negative, f"{argument}: term {k + 1} ({shown(term)}) has no visible "
                                                 "text") from None
    return terms


# ---------------------------------------------------------------------------------------------------------------
# Builders


def leave_one_out_spec(prompt: str, negative: str, seeds: Sequence[int], *, argument: str = "negative",
                       **settings) -> ComparisonSpec:
    """Per seed row: the baseline, the full negative, then one cell per term with that term left out (kind
    "leave-out", ``term`` the term left out), compared against the row's full-negative cell.

    ``settings`` are those of ``negprompt.plan.negatives_spec`` (model, steps, guidance_scale, height, width,
    sampler, baseline, guidance). The full negative is written as its terms joined by ", ", like every leave-out
    cell, so a leave-out cell differs from the full one by exactly one term. ``argument`` names the negative in
    errors (a front end's field)."""
    terms = _terms_of(negative, argument, settings.get("reading", "plain"))
    labels = term_labels(terms, settings.get("reading", "plain"))
    base = negatives_spec(prompt, [], list(seeds), **settings)
    cells: list[CellSpec] = []
    for baseline in base.cells:
        cells.append(baseline)
        full = len(cells)
        cells.append(replace(baseline, negative=join_terms(terms), label="full negative", reference=full - 1,
                             kind="negative"))
        for k, term in enumerate(terms):
            rest = join_terms(terms[:k] + terms[k + 1:])
            cells.append(replace(baseline, negative=rest or baseline.negative, label=f"without {labels[k]}",
                                 reference=full, kind="leave-out", term=term))
    return replace(with_cells(base, cells), mode="leave-one-out")


def terms_alone_spec(prompt: str, negative: str, seeds: Sequence[int], *, include_full: bool = True,
                     argument: str = "negative", **settings) -> ComparisonSpec:
    """Per seed row: the baseline, (with ``include_full``) the full negative, then each term alone as the negative
    (kind "term-alone"), every cell compared against the row's baseline."""
    terms = _terms_of(negative, argument, settings.get("reading", "plain"))
    labels = term_labels(terms, settings.get("reading", "plain"))
    base = negatives_spec(prompt, [], list(seeds), **settings)
    cells: list[CellSpec] = []
    for baseline in base.cells:
        cells.append(baseline)
        ref = len(cells) - 1
        if include_full:
            cells.append(replace(baseline, negative=join_terms(terms), label="full negative", reference=ref,
                                 kind="negative"))
        cells += [replace(baseline, negative=term, label=label, reference=ref, kind="term-alone", term=term)
                  for term, label in zip(terms, labels)]
    return replace(with_cells(base, cells), mode="terms-alone")


def default_preview_every(spec: ComparisonSpec) -> int:
    """How often to keep every cell's preview: about ten times per run in the explorer's modes, else never."""
    from negprompt import axes

    return max(1, spec.steps // 10) if axes.explorer(spec.mode) else 0


# ---------------------------------------------------------------------------------------------------------------
# Ranking terms


@dataclass(frozen=True)
class TermEffect:
    """What one term of a negative did, over the seed rows."""

    term: str
    position: int  # its place in the negative (0-based)
    changes: tuple[float, ...]  # per row, the change score of its cell against the cell's reference, in percent
    inert: bool  # below INERT_PERCENT (or the threshold given) on every row: "does almost nothing"
    label: str = ""  # how it is shown (``term_labels``: under the a1111 reading its words and weight)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.changes)

    @property
    def spread(self) -> tuple[float, float]:
        """The smallest and largest change over the rows (seeds), in percent."""
        return min(self.changes), max(self.changes)

    def to_dict(self) -> dict:
        return {"term": self.term, "label": self.label or self.term, "position": self.position,
                "mean_change": round(self.mean, 4), "changes": [round(c, 4) for c in self.changes],
                "spread": [round(v, 4) for v in self.spread], "inert": self.inert}


@dataclass(frozen=True)
class TermRanking:
    """Terms sorted by how much their cell changed the image, most first."""

    kind: str  # "leave-out" or "term-alone": what each term's cell did
    terms: tuple[TermEffect, ...]  # sorted by mean change, largest first (ties: in the negative's order)
    threshold: float  # the change below which a term does almost nothing, in percent
    row_orders: tuple[tuple[int, ...], ...]  # per row, the term positions sorted by that row's change
    identical: tuple[tuple[str, ...], ...] = ()  # groups of terms whose cells are the same image on every row
    unchanged: tuple[str, ...] = ()  # terms whose cell is the same image as its reference cell on every row

    @property
    def inert(self) -> list[str]:
        return [t.term for t in sorted(self.terms, key=lambda t: t.position) if t.inert]

    @property
    def trimmed(self) -> str:
        """The negative without the terms that do almost nothing, in the original order: the one to copy."""
        return join_terms([t.term for t in sorted(self.terms, key=lambda t: t.position) if not t.inert])

    def top_share(self, terms: Sequence[str]) -> float:
        """The share of rows whose own ranking puts exactly ``terms`` (in any order) in its top len(terms)."""
        wanted = {t.position for t in self.terms if t.term in set(terms)}
        hits = [set(order[:len(wanted)]) == wanted for order in self.row_orders]
        return sum(hits) / len(hits) if hits else float("nan")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "threshold_percent": self.threshold, "trimmed_negative": self.trimmed,
                "inert_terms": self.inert, "terms": [t.to_dict() for t in self.terms],
                "identical_groups": [list(g) for g in self.identical], "same_as_reference": list(self.unchanged)}


def rank_terms(spec: ComparisonSpec, changes: Sequence[float], *, threshold: float = INERT_PERCENT,
               images: Sequence | None = None) -> TermRanking:
    """Rank the terms of a leave-one-out or terms-alone spec by their cells' ``changes`` (per cell of the spec, its
    change score against its reference, as ``Comparison.change_scores`` gives them), averaged over the rows.
    ``images`` (per cell, a PIL image or an array) groups the terms whose cells are the same image, pixel for pixel,
    on every row ("these 5 terms did the same thing")."""
    if len(changes) != len(spec.cells):
        raise InputError("changes", len(changes), f"{len(changes)} change scores for {len(spec.cells)} cells")
    kind = "leave-out" if any(c.kind == "leave-out" for c in spec.cells) else "term-alone"
    per_row: dict[int, list[tuple[str, float]]] = {}
    for cell, change in zip(spec.cells, changes):
        if cell.kind == kind:
            per_row.setdefault(cell.row, []).append((cell.term, float(change)))
    if not per_row:
        raise InputError("spec", spec.mode, "the spec has no leave-out or term-alone cells to rank")
    rows = list(per_row.values())
    terms = [t for t, _ in rows[0]]
    if any([t for t, _ in r] != terms for r in rows):
        raise InputError("spec", spec.mode, "every row must hold the same terms in the same order")
    labels = term_labels(terms, spec.reading)
    effects = [TermEffect(term, k, tuple(r[k][1] for r in rows), all(r[k][1] < threshold for r in rows), labels[k])
               for k, term in enumerate(terms)]
    effects.sort(key=lambda e: (-e.mean, e.position))
    orders = tuple(tuple(sorted(range(len(terms)), key=lambda k, r=r: (-r[k][1], k))) for r in rows)
    identical, unchanged = (), ()
    if images is not None:
        hashes = [hashlib.sha256(_as_bytes(image)).hexdigest() for image in images]
        signatures: dict[int, list[tuple[str, bool]]] = {}
        for i, cell in enumerate(spec.cells):
            if cell.kind == kind:
                same = cell.reference is not None and hashes[cell.reference] == hashes[i]
                signatures.setdefault(cell.row, []).append((hashes[i], same))
        keyed: dict[tuple, list[str]] = {}
        for k, label in enumerate(labels):
            keyed.setdefault(tuple(r[k][0] for r in signatures.values()), []).append(label)
        identical = tuple(tuple(group) for group in keyed.values() if len(group) > 1)
        unchanged = tuple(label for k, label in enumerate(labels) if all(r[k][1] for r in signatures.values()))
    return TermRanking(kind, tuple(effects), threshold, orders, identical, unchanged)


def _as_bytes(image) -> bytes:
    return np.ascontiguousarray(np.asarray(image)).tobytes()


# ---------------------------------------------------------------------------------------------------------------
# Divergence over the steps


def _as_pixels(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return np.asarray(image, dtype=np.float32)


class PreviewRecorder:
    """A ``compare`` callback that keeps every cell's x0 preview, so a result can show all cells at step k.

        recorder = PreviewRecorder(spec.steps, then=progress_bar)   # ``then`` still gets every call
        result = compare(pipe, spec, callback=recorder, preview_every=2)
        steps, previews = recorder.frames([cell.image for cell in result.cells])

    The engine counts steps over its chunks of cells (``done`` runs to steps x chunks) and hands previews of the
    running chunk's cells; the recorder puts the chunks of each step side by side. A step is kept only when every
    chunk gave previews at it; the final images are the last frame (step ``steps``). A restart (the engine retries
    with smaller chunks after running out of memory) starts the record over. ``max_side`` keeps a copy no larger
    than that many pixels a side (a server keeps them for every session: 64 cells x 6 steps at 1024x1024 would
    be 1.2 GB; at 256 they are 75 MB); None keeps them as they come."""

    def __init__(self, steps: int, then=None, max_side: int | None = None):
        self.steps, self.then, self.max_side = steps, then, max_side
        self._chunks: dict[int, dict[int, list]] = {}  # step -> chunk index -> that chunk's previews
        self._last = 0

    def __call__(self, done: int, total: int, previews) -> None:
        if done <= self._last:
            self._chunks = {}
        self._last = done
        if previews is not None:
            chunk, step = divmod(done - 1, self.steps)
            self._chunks.setdefault(step + 1, {})[chunk] = [self._shrink(image) for image in previews]
        if self.then is not None:
            self.then(done, total, previews)

    def _shrink(self, image):
        if self.max_side is None or not isinstance(image, Image.Image) or max(image.size) <= self.max_side:
            return image
        copy = image.copy()
        copy.thumbnail((self.max_side, self.max_side), Image.Resampling.BILINEAR)
        return copy

    def frames(self, final: Sequence) -> tuple[list[int], list[list]]:
        """(recorded steps, per step every cell's preview in cell order), ending with ``final`` at the last step."""
        chunks = 1 + (self._last - 1) // self.steps if self._last else 1
        steps, previews = [], []
        for step, parts in sorted(self._chunks.items()):
            if len(parts) == chunks and step < self.steps:
                cells = [image for k in range(chunks) for image in parts[k]]
                if len(cells) == len(final):
                    steps.append(step)
                    previews.append(cells)
        return steps + [self.steps], previews + [[self._shrink(image) for image in final]]


def divergence_curves(previews: Sequence[Sequence], references: Sequence[int | None]) -> list[list[float] | None]:
    """Per cell, its change against its reference cell at each recorded step, in percent of full scale.

    ``previews[k][i]`` is cell i's x0 preview at the k-th recorded step: a PIL image, or an array of pixels in
    [0, 1]. ``references[i]`` is the index of cell i's reference cell (None: no curve for it)."""
    curves: list[list[float] | None] = []
    for i, ref in enumerate(references):
        if ref is None:
            curves.append(None)
            continue
        curves.append([round(float(np.abs(_as_pixels(step[i]) - _as_pixels(step[ref])).mean() * 100), 4)
                       for step in previews])
    return curves


def first_divergence(curve: Sequence[float], steps: Sequence[int], threshold: float = INERT_PERCENT) -> int | None:
    """The first recorded step at which ``curve`` reaches ``threshold`` percent (None: never)."""
    return next((s for s, v in zip(steps, curve) if v >= threshold), None)


# ---------------------------------------------------------------------------------------------------------------
# Timing sweeps


@dataclass(frozen=True)
class TimingRow:
    """One start fraction of a timing sweep, over the seed rows."""

    start: float  # the fraction of the steps at which the negative starts acting
    cells: int  # cells (seed rows) with this start
    present: int  # of them, rows whose baseline shows the attribute
    removed: int  # of those, cells where the attribute is gone
    absent: int  # rows whose baseline does not show it
    added: int  # of those, cells that show it (the negative added what it names)
    collateral_pp: float  # largest change, in percentage points, of another attribute's rate vs the baselines
    other_flips: float  # mean number of other attributes that flipped per image
    change: float  # mean change score against the baseline, in percent
    change_outside: float | None  # the same, outside the attribute's region (None: no region given)

    @property
    def removal_rate(self) -> float:
        return self.removed / self.present if self.present else float("nan")

    @property
    def added_rate(self) -> float:
        return self.added / self.absent if self.absent else float("nan")

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("start", "cells", "present", "removed", "absent", "added")}
        out |= {"removal_rate": _round(self.removal_rate), "added_rate": _round(self.added_rate),
                "collateral_pp": _round(self.collateral_pp), "other_flips": _round(self.other_flips),
                "change": _round(self.change), "change_outside": _round(self.change_outside)}
        return out


def _round(value: float | None) -> float | None:
    return None if value is None or value != value else round(value, 4)


def latest_removing_start(rows: Sequence[TimingRow], keep: float = 0.9) -> float | None:
    """The latest start whose removal rate is at least ``keep`` times that of the earliest start (None: the
    earliest start removes nothing)."""
    rows = sorted(rows, key=lambda r: r.start)
    if not rows or not rows[0].removal_rate > 0:
        return None
    floor = keep * rows[0].removal_rate
    return max(r.start for r in rows if r.removal_rate >= floor)


def timing_table(spec: ComparisonSpec, detections: Sequence[Mapping[str, float]], attribute: str,
                 changes: Sequence[float], *, negative: str | None = None, attributes: Sequence[str] | None = None,
                 changes_outside: Sequence[float] | None = None) -> list[TimingRow]:
    """Analyse the cells of a timing sweep that carry ``negative`` (default: every cell that is not a baseline),
    grouped by the start of their window, against their reference cells (the rows' baselines).

    ``detections[i]``: detector probabilities of cell i's image (``portrait_model.detector.detect``), an attribute
    present at >= 0.5. ``changes[i]``: cell i's change score against its reference; ``changes_outside[i]``: the
    same outside the attribute's region. ``attributes``: those counted as collateral (default: every key of the
    detections holding a probability, except ``attribute``)."""
    if len(detections) != len(spec.cells) or len(changes) != len(spec.cells):
        raise InputError("detections", len(detections), "one detection and one change score per cell")
    others = [a for a in (attributes or [k for k, v in detections[0].items() if isinstance(v, float)
                                         and k != "clean_score"]) if a != attribute]
    groups: dict[float, list[int]] = {}
    for i, cell in enumerate(spec.cells):
        if cell.reference is None or cell.kind == "baseline" or (negative is not None and cell.negative != negative):
            continue
        groups.setdefault(float(cell.window[0]), []).append(i)
    table = []
    for start, members in sorted(groups.items()):
        refs = [spec.cells[i].reference for i in members]
        has = [detections[r][attribute] >= 0.5 for r in refs]
        now = [detections[i][attribute] >= 0.5 for i in members]
        rate = {a: (np.mean([detections[i][a] >= 0.5 for i in members]) - np.mean([detections[r][a] >= 0.5
                                                                                  for r in refs])) for a in others}
        flips = [sum((detections[i][a] >= 0.5) != (detections[r][a] >= 0.5) for a in others)
                 for i, r in zip(members, refs)]
        outside = statistics.fmean(changes_outside[i] for i in members) if changes_outside is not None else None
        table.append(TimingRow(
            start=start, cells=len(members), present=sum(has), removed=sum(h and not n for h, n in zip(has, now)),
            absent=len(has) - sum(has), added=sum(n and not h for h, n in zip(has, now)),
            collateral_pp=100 * max((abs(v) for v in rate.values()), default=0.0),
            other_flips=statistics.fmean(flips), change=statistics.fmean(changes[i] for i in members),
            change_outside=outside))
    return table


def timing_reports(spec: ComparisonSpec, detections: Sequence[Mapping[str, float]], changes: Sequence[float],
                   attributes: Sequence[str]) -> dict[str, dict]:
    """For each negative of a timing sweep that names one of ``attributes`` (what the detector reads), its timing
    table (``timing_table``, one entry per start) and the latest start that still removes it."""
    reports = {}
    for negative in dict.fromkeys(c.negative for c in spec.cells if c.kind != "baseline"):
        if negative in attributes:
            table = timing_table(spec, detections, negative, changes, negative=negative)
            reports[negative] = {"starts": [r.to_dict() for r in table],
                                 "latest_removing_start": latest_removing_start(table)}
    return reports
