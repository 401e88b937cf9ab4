"""A sweep's report: per-negative rates with 95% intervals, the most and least effective negatives, sample grids.

    python -m negprompt.report runs/smoke          # (also: negprompt report runs/smoke) -> report.html, report.md

It merges the finished comparisons into ``results.csv`` first (so it also reports on a sweep still running or
stopped halfway), then writes a static HTML page (inline CSS, images as relative links into ``specs/``, nothing
fetched from elsewhere) and the same numbers as Markdown.

For every negative (per prompt): how often it changed the image at all (change score against its reference of at
least ``NO_CHANGE_PERCENT``), its mean change, and, where the portrait detector ran (the embedded model), for each
attribute the negative names: how often the baseline shows it, how often the cell shows it, and the removal rate
(of the baselines that show it, the share whose negative cell does not), each with a 95% Wilson interval. Rates
count only images the detector judges clean portraits, as ``benchmarks/negative_effect.py`` does; the attribute
table per condition (prompt x negative) is that benchmark's table, from any seeds and prompts a config names.
"""

from __future__ import annotations

import html
import math
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from negprompt.errors import LIMITS, InputError
from negprompt.inputs import load_json_file
from negprompt.sweep import NO_CHANGE_PERCENT, merge

# negprompt.portrait_model.portraits.BINARY, not imported: the report reads results, not the model
ATTRIBUTES = ("mustache", "beard", "glasses", "hat", "smile", "earrings", "scarf")
SAMPLE_GRIDS = 3  # grids shown on the page
SAMPLE_PAIRS = 6  # baseline -> negative pairs shown for the most effective negative


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of ``successes`` out of ``n``: how far sampling noise alone can move the rate."""
    if n == 0:
        return math.nan, math.nan
    rate = successes / n
    center = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt((rate * (1 - rate) + z * z / (4 * n)) / n) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


@dataclass
class Rate:
    """``k`` of ``n``, with its 95% interval."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def text(self, n: bool = True) -> str:
        """``"13/32 = 41% (26-58%)"``, the count and its denominator first; without ``n``: ``"41% (26-58%)"``."""
        if not self.n:
            return "n/a"
        lo, hi = self.interval
        return f"{f'{self.k}/{self.n} = ' if n else ''}{self.value:.0%} ({100 * lo:.0f}-{hi:.0%})"

    def overlaps(self, other: Rate) -> bool:
        """Whether the two 95% intervals overlap (then these seeds cannot tell the rates apart)."""
        return self.interval[0] <= other.interval[1] and other.interval[0] <= self.interval[1]


@dataclass
class NegativeStats:
    """What one negative did, over every seed it ran with one prompt."""

    prompt: str
    negative: str
    cells: int = 0
    changed: Rate = field(default_factory=lambda: Rate(0, 0))
    mean_change: float = math.nan
    removal: dict[str, Rate] = field(default_factory=dict)  # attribute named by the negative -> removal rate
    present_baseline: dict[str, Rate] = field(default_factory=dict)
    present_negative: dict[str, Rate] = field(default_factory=dict)
    collateral: tuple[str, float] | None = None  # (attribute, points) of the largest move in another attribute

    @property
    def removed(self) -> Rate:
        """Removals of the attributes it names, pooled, over the seeds whose baseline showed them (n=0: none did)."""
        return Rate(sum(r.k for r in self.removal.values()), sum(r.n for r in self.removal.values()))

    @property
    def effect(self) -> float:
        """How effective: its removal rate where a baseline showed what it names, else the share of changed cells."""
        return self.removed.value if self.removed.n else self.changed.value


def named_attributes(negative: str) -> list[str]:
    """The detector attributes a negative names as words ("hat", "no glasses, hat" -> glasses and hat)."""
    return [a for a in ATTRIBUTES if re.search(rf"\b{a}\b", negative.lower())]


def _present(row: dict, attribute: str) -> bool:
    return row[f"det_{attribute}"] >= 0.5


def _clean(row: dict) -> bool:
    return row.get("det_clean") in (True, "True")


def _condition(row: dict, several_axes: bool) -> tuple[str, str]:
    """(prompt, cell label), the label tagged with its axis when a sweep has several (a plain "- hat" and the
    timing axis's "- hat" from step 0 are the same images: counted apart, never pooled)."""
    return row["prompt"], f"{row['label']} [{row['axis']}]" if several_axes else row["label"]


def negative_stats(rows: list[dict]) -> list[NegativeStats]:
    """One entry per (prompt, negative cell label), in order of first appearance."""
    by_key = {(r["spec"], r["cell"]): r for r in rows}
    several_axes = len({r["axis"] for r in rows}) > 1
    groups: dict[tuple[str, str], list[tuple[dict, dict | None]]] = defaultdict(list)
    for r in rows:
        if r["kind"] != "baseline":
            reference = by_key.get((r["spec"], r["reference"])) if r["reference"] not in (None, "") else None
            groups[_condition(r, several_axes)].append((r, reference))
    detector = any("det_clean" in r for r in rows)
    out = []
    for (prompt, label), pairs in groups.items():
        changes = [float(r["change"]) for r, _ in pairs if r["change"] not in (None, "")]
        stats = NegativeStats(prompt, label, cells=len(pairs),
                              changed=Rate(sum(c >= NO_CHANGE_PERCENT for c in changes), len(changes)),
                              mean_change=sum(changes) / len(changes) if changes else math.nan)
        if detector:
            # removal counts against a baseline only (a leave-one-out cell's reference is the full negative)
            against_baseline = [(r, b) for r, b in pairs if b is not None and b["kind"] == "baseline"]
            clean = [(r, b) for r, b in against_baseline if _clean(r) and _clean(b)]
            for a in named_attributes(pairs[0][0]["negative"]) if against_baseline else []:
                had = [(r, b) for r, b in clean if _present(b, a)]
                stats.removal[a] = Rate(sum(not _present(r, a) for r, _ in had), len(had))
                stats.present_baseline[a] = Rate(len(had), len(clean))
                stats.present_negative[a] = Rate(sum(_present(r, a) for r, _ in clean), len(clean))
            if clean:
                moves = {a: 100 * abs(sum(_present(r, a) for r, _ in clean) - sum(_present(b, a) for _, b in clean))
                         / len(clean) for a in ATTRIBUTES if a not in stats.removal}
                worst = max(moves, key=moves.get)
                stats.collateral = (worst, moves[worst])
        out.append(stats)
    return out


def condition_rates(rows: list[dict]) -> dict[tuple[str, str], dict[str, Rate]]:
    """Per condition (prompt, cell label): each attribute's rate among clean images, and the clean share."""
    several_axes = len({r["axis"] for r in rows}) > 1
    table: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        table[_condition(r, several_axes)].append(r)
    out = {}
    for key, members in table.items():
        clean = [r for r in members if _clean(r)]
        out[key] = {a: Rate(sum(_present(r, a) for r in clean), len(clean)) for a in ATTRIBUTES}
        out[key]["clean"] = Rate(len(clean), len(members))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Writing


@dataclass
class Extremes:
    """The most and the least effective negatives by one measure, never the same one in both."""

    measure: str  # what the rates count
    best: list[NegativeStats]
    worst: list[NegativeStats]
    rate: Callable[[NegativeStats], Rate]

    @property
    def overlapping(self) -> bool:
        """Whether the best's and the worst's 95% intervals overlap: then the seeds cannot rank them."""
        return bool(self.best and self.worst) and self.rate(self.best[0]).overlaps(self.rate(self.worst[0]))

    def line(self, s: NegativeStats) -> str:
        rate = self.rate(s)
        return f"{rate.k} of {rate.n} = {rate.value:.0%} (95% CI {100 * rate.interval[0]:.0f}-{rate.interval[1]:.0%})"

    def caution(self) -> str:
        if not self.overlapping:
            return ""
        return ("The 95% intervals of the most and the least effective overlap: these seeds cannot rank them; run "
                "more seeds.")


def _extremes(stats: list[NegativeStats], most: int) -> Extremes:
    """The ``most`` most effective and the ``most`` least effective negatives, never the same one in both. Where
    the detector saw on a baseline what some negative names, they are ranked by that removal rate, counted over
    those seeds only; otherwise by the share of images they changed."""
    by_removal = [s for s in stats if s.removed.n]
    if by_removal:
        measure = ("removed what it names, over the seeds whose baseline showed it")
        ranked, rate = by_removal, (lambda s: s.removed)
    else:
        measure, rate = f"changed the image (change of at least {NO_CHANGE_PERCENT:g}%)", (lambda s: s.changed)
        ranked = [s for s in stats if s.changed.n]

    def strength(s: NegativeStats) -> tuple[float, float]:  # ties: the narrower evidence ranks lower
        return rate(s).value, rate(s).interval[0]

    ranked = sorted(ranked, key=strength, reverse=True)
    k = min(most, max(1, len(ranked) // 3)) if len(ranked) > 1 else len(ranked)
    worst = ranked[::-1][:k] if len(ranked) > 1 else []
    return Extremes(measure, ranked[:k], worst, rate)


def _settings_line(record: dict, rows: list[dict]) -> str:
    c = record["config"]
    size = "x".join(map(str, c["size"])) if c.get("size") else "the model's size"
    specs = {r["spec"] for r in rows}
    return (f"model {c['model']} | {c['steps']} steps | guidance {c['guidance']:g} | sampler {c['sampler']} | {size} "
            f"| {len(c['seeds'])} seeds | {len(specs)} of {len(record['specs'])} comparisons finished, "
            f"{len(rows)} images")


def _negative_table(stats: list[NegativeStats], detector: bool) -> tuple[list[str], list[list[str]]]:
    head = ["prompt", "negative", "cells", "changed (95% CI)", "mean change"]
    if detector:
        head += ["attribute", "in baseline", "with negative", "removed (95% CI)", "collateral max"]
    body = []
    for s in stats:
        row = [s.prompt, s.negative, str(s.cells), s.changed.text(), f"{s.mean_change:.1f}%"]
        if detector:
            attrs = list(s.removal) or ["-"]
            row += [", ".join(attrs),
                    "; ".join(s.present_baseline[a].text() for a in s.removal) or "-",
                    "; ".join(s.present_negative[a].text() for a in s.removal) or "-",
                    "; ".join(s.removal[a].text() for a in s.removal) or "-",
                    f"{s.collateral[1]:.0f} pts ({s.collateral[0]})" if s.collateral else "-"]
        body.append(row)
    return head, body


def _condition_table(rates: dict) -> tuple[list[str], list[list[str]]]:
    head = ["prompt", "cell", "clean / images", *ATTRIBUTES]
    body = [[p, label, f"{r['clean'].k} / {r['clean'].n}", *(r[a].text(n=False) for a in ATTRIBUTES)]
            for (p, label), r in rates.items()]
    return head, body


def markdown(record: dict, rows: list[dict]) -> str:
    stats = negative_stats(rows)
    detector = any("det_clean" in r for r in rows)
    lines = ["# Sweep report", "", md(_settings_line(record, rows)), ""]

    def table(head, body):
        lines.extend(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)])
        lines.extend("| " + " | ".join(md(cell) for cell in row) + " |" for row in body)
        lines.append("")

    lines += ["## Negatives", "", f"\"changed\": change score against the reference of at least "
              f"{NO_CHANGE_PERCENT:g}%. Rates as count/denominator = rate (95% Wilson interval). \"removed\" counts "
              "only the seeds whose baseline the detector saw show the attribute (the denominator).", ""]
    table(*_negative_table(stats, detector))
    extremes = _extremes(stats, 3)
    if extremes.best:
        lines += ["## Most and least effective", "", f"Measure: {extremes.measure}.", ""]
        lines += [f"- most: {md(s.negative)} with \"{md(s.prompt)}\": {extremes.line(s)}" for s in extremes.best]
        lines += [f"- least: {md(s.negative)} with \"{md(s.prompt)}\": {extremes.line(s)}" for s in extremes.worst]
        lines += ["", extremes.caution()] if extremes.caution() else []
        lines.append("")
    if detector:
        lines += ["## Attribute rates per condition", "", "Among the images the detector judges clean portraits, with "
                  "95% Wilson intervals.", ""]
        table(*_condition_table(condition_rates(rows)))
    lines += ["## Sample grids", ""]
    lines += [f"![grid {sid}]({path})" for sid, path in _sample_grids(rows)]
    return "\n".join(lines) + "\n"


def md(text) -> str:
    """User text for Markdown: HTML escaped (a "<script>" negative shows as text), Markdown's own marks
    backslash-escaped, on one line."""
    text = html.escape(str(text), quote=False)
    return " ".join(re.sub(r"([\\`*_\[\]|!#~])", r"\\\1", text).split())


def _sample_grids(rows: list[dict]) -> list[tuple[str, str]]:
    specs = list(dict.fromkeys(r["spec"] for r in rows))
    return [(sid, f"specs/{sid}/grid.png") for sid in specs[:SAMPLE_GRIDS]]


CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
padding:0 16px;color:#1d1d1f;background:#fafaf8}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666}table{border-collapse:collapse;width:100%;font-size:13.5px;background:#fff}
th,td{border:1px solid #e2e2e2;padding:5px 8px;text-align:left;vertical-align:top}th{background:#f0f0ec}
td.num{text-align:right;white-space:nowrap}.bar{display:inline-block;vertical-align:middle;margin-right:6px}
.cards{display:flex;gap:16px;flex-wrap:wrap}.card{background:#fff;border:1px solid #e2e2e2;border-radius:8px;
padding:10px 14px;min-width:240px;flex:1}.card b{font-size:17px}.pairs{display:flex;gap:14px;flex-wrap:wrap}
.pair{text-align:center;font-size:12px}.pair img,.cell img{width:96px;height:96px;image-rendering:pixelated;
border:1px solid #ccc}.ci{white-space:nowrap;color:#666}.nw{white-space:nowrap}
.grids img{max-width:100%;border:1px solid #ddd;margin:6px 0}
"""


def _bar(rate: Rate, width: int = 90) -> str:
    """An inline SVG bar: the rate as a filled bar, its 95% interval as a whisker."""
    if not rate.n:
        return ""
    lo, hi = rate.interval
    x = lambda v: 1 + v * (width - 2)  # noqa: E731
    return (f'<svg class="bar" width="{width}" height="12" role="img" aria-label="{rate.value:.0%}">'
            f'<rect x="1" y="2" width="{width - 2}" height="8" fill="#eee"/>'
            f'<rect x="1" y="2" width="{x(rate.value) - 1:.1f}" height="8" fill="#4a7bd0"/>'
            f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="6" y2="6" stroke="#111" stroke-width="1.5"/>'
            f'<line x1="{x(lo):.1f}" x2="{x(lo):.1f}" y1="2" y2="10" stroke="#111"/>'
            f'<line x1="{x(hi):.1f}" x2="{x(hi):.1f}" y1="2" y2="10" stroke="#111"/></svg>')


def _cell_html(text: str) -> str:
    """Escape a table cell; an interval in parentheses stays on one line, in grey; a label's leading "- " too."""
    text = re.sub(r"^- (\S+)", r'<span class="nw">- \1</span>', html.escape(text))
    return re.sub(r"\(([^()<>]*)\)", r'<span class="ci">(\1)</span>', text)


def _html_table(head: list[str], body: list[list[str]], raw: set[int] = frozenset()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{cell if i in raw else _cell_html(cell)}</td>"
                                    for i, cell in enumerate(row)) + "</tr>")
    return "\n".join(out) + "</table>"


def _negatives_html(stats: list[NegativeStats], detector: bool) -> str:
    head, body = _negative_table(stats, detector)
    for s, row in zip(stats, body):
        row[3] = _bar(s.changed) + _cell_html(row[3])
        if detector and s.removal:
            row[8] = "<br>".join(_bar(s.removal[a]) + _cell_html(s.removal[a].text()) for a in s.removal)
    return _html_table(head, body, raw={3, 8})


def _pairs_html(rows: list[dict], best: NegativeStats) -> str:
    """Baseline -> negative thumbnails of the most effective negative, where it removed what it names."""
    by_key = {(r["spec"], r["cell"]): r for r in rows}
    chosen = []
    for r in rows:
        if r["prompt"] != best.prompt or r["label"] != best.negative or r["kind"] == "baseline":
            continue
        base = by_key.get((r["spec"], r["reference"]))
        if base is None:
            continue
        removed = any(_present(base, a) and not _present(r, a) for a in best.removal) if best.removal else True
        if removed:
            chosen.append((base, r))
        if len(chosen) == SAMPLE_PAIRS:
            break
    cells = [f'<div class="pair"><a href="{html.escape(b["image"])}"><img src="{html.escape(b["image"])}" '
             f'alt="baseline"></a> <a href="{html.escape(r["image"])}"><img src="{html.escape(r["image"])}" '
             f'alt="{html.escape(best.negative)}"></a><br>seed {html.escape(str(r["seed"]))}: baseline &rarr; '
             f'{_cell_html(best.negative)}</div>' for b, r in chosen]
    return '<div class="pairs">' + "".join(cells) + "</div>"


def page(record: dict, rows: list[dict]) -> str:
    stats = negative_stats(rows)
    detector = any("det_clean" in r for r in rows)
    extremes = _extremes(stats, 2)
    best = extremes.best
    parts = [f"<h1>Sweep report</h1><p class='muted'>{html.escape(_settings_line(record, rows))}</p>"]
    if best:
        def card(title, s):
            return (f"<div class='card'><span class='muted'>{title}</span><br><b>{_cell_html(s.negative)}</b> "
                    f"<span class='muted'>with \"{html.escape(s.prompt)}\"</span><br>{_bar(extremes.rate(s))}"
                    f"{html.escape(extremes.line(s))}</div>")
        parts.append(f"<p class='muted'>Most and least effective: {html.escape(extremes.measure)}.</p>"
                     "<div class='cards'>" + "".join(card("most effective", s) for s in best)
                     + "".join(card("least effective", s) for s in extremes.worst) + "</div>")
        if extremes.caution():
            parts.append(f"<p><b>{html.escape(extremes.caution())}</b></p>")
    parts.append(f"<h2>Negatives</h2><p class='muted'>Changed: change score against the reference of at least "
                 f"{NO_CHANGE_PERCENT:g}%. Bars: the rate; whiskers: its 95% Wilson interval. Detector rates count "
                 "clean portraits only.</p>" + _negatives_html(stats, detector))
    if best:
        parts.append(f"<h2>Examples: {_cell_html(best[0].negative)}</h2><p class='muted'>Seeds where the most "
                     "effective negative removed what it names (or, with no detector, changed the image).</p>"
                     + _pairs_html(rows, best[0]))
    if detector:
        parts.append("<h2>Attribute rates per condition</h2><p class='muted'>Among the images the detector judges "
                     "clean portraits, with 95% Wilson intervals.</p>"
                     + _html_table(*_condition_table(condition_rates(rows))))
    grids = "".join(f'<a href="{html.escape(p)}"><img src="{html.escape(p)}" alt="grid {html.escape(sid)}" '
                    'loading="lazy"></a>' for sid, p in _sample_grids(rows))
    parts.append(f"<h2>Sample grids</h2><div class='grids'>{grids}</div>")
    parts.append("<p class='muted'>All rows: <a href='results.csv'>results.csv</a>, "
                 "<a href='results.jsonl'>results.jsonl</a>.</p>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>negprompt sweep report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(out: str | Path) -> tuple[Path, Path]:
    """Merge the sweep's finished rows and write ``report.html`` and ``report.md`` into ``out``."""
    out = Path(out)
    if not (out / "sweep.json").is_file():
        raise FileNotFoundError(f"{out} is not a sweep's results folder (no sweep.json)")
    record = load_json_file(out / "sweep.json", "sweep.json", LIMITS.max_manifest_bytes)
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict) \
            or not isinstance(record.get("specs"), list):
        raise InputError("results", str(out), f"{out / 'sweep.json'} is not a sweep's record")
    rows = merge(out)
    (out / "report.md").write_text(markdown(record, rows), encoding="utf-8")
    (out / "report.html").write_text(page(record, rows), encoding="utf-8")
    return out / "report.html", out / "report.md"


def main(argv: list[str] | None = None) -> int:
    from negprompt.quiet import OneLineParser

    parser = OneLineParser(prog="negprompt report", description="Write a sweep's HTML and Markdown report.")
    parser.add_argument("results", type=Path, help="the sweep's --out folder")
    args = parser.parse_args(argv)
    try:
        html_path, md_path = write_report(args.results)
    except (OSError, ValueError) as error:
        print(f"negprompt report: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {html_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
