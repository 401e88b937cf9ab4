"""What a finished comparison shows: the typed ``Outcome`` a session keeps, the detector readout, the files (cells,
a named grid with infotext, a zip) and the texts (captions, status line, tables).

    outcome = finish(settings, request, result)      # files written, detector run
    gallery_items(outcome, differences=False)        # [(path or image, caption), ...], baseline first
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL.PngImagePlugin import PngInfo

from negprompt.app.form import MODES, Request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """A finished comparison and everything made from it."""

    request: Request
    result: object  # negprompt.comparison.Comparison
    files: list[Path]  # one PNG per cell, in cell order
    readout: list[dict] | None  # what the detector sees, per cell (None: no detector)
    grid_file: Path | None = None  # the labeled grid, with the baseline's infotext (once written)
    differences_file: Path | None = None  # the same grid with a row of difference maps under each row
    archive: Path | None = None  # the zip: grids, cells, manifest (once written)


# -----------------------------------------------------------------------------------------------------------------
# Detector


class Detector:
    """The embedded model's attribute detector, loaded once on first use."""

    def __init__(self):
        self._model = None
        self._lock = threading.Lock()

    def readout(self, images) -> list[dict] | None:
        """Per image, each attribute's probability, ``clean_score`` and ``clean``; None without a detector."""
        if not images:
            return []
        try:
            from negprompt.portrait_model import detector

            with self._lock:
                if self._model is None:
                    self._model = detector.load_detector()
                found = detector.detect(images, self._model)
        except (ImportError, FileNotFoundError):
            return None
        except Exception:  # an optional extra must never break a comparison
            log.exception("the attribute detector failed; showing no detector readout")
            return None
        return [{name: value if isinstance(value, (bool, str)) else float(value) for name, value in r.items()}
                for r in found]


def seen(readout: dict) -> list[str]:
    """The attributes a readout marks present (probability >= 0.5), plus "unclear image" when it is not clean."""
    found = [name for name, value in readout.items()
             if not name.startswith("clean") and not isinstance(value, (bool, str)) and value >= 0.5]
    return found + (["unclear image"] if readout.get("clean") is False else [])


# -----------------------------------------------------------------------------------------------------------------
# Files


def output_root() -> Path:
    """Where the app writes its files: ``negprompt/`` under Gradio's temp folder (``GRADIO_TEMP_DIR``), which Gradio
    serves from."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio") / "negprompt"


def output_folder(root: Path | None = None, keep_hours: float = 6) -> Path:
    """A fresh folder for one comparison's files under ``root`` (default ``output_root()``); old ones are removed."""
    base = root or output_root()
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        if old.is_dir() and time.time() - old.stat().st_mtime > keep_hours * 3600:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=base))


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "comparison"


def grid_name(request: Request) -> str:
    """The grid's download name: prompt and seeds, e.g. ``negprompt-portrait-photo-of-a-man-seed3.png``."""
    seeds = request.seeds
    seed = f"seed{seeds[0]}" if len(seeds) == 1 else f"seeds{seeds[0]}-{seeds[-1]}"
    return f"negprompt-{slug(request.prompt)}-{seed}.png"


def save_png(image, path: Path, parameters: str, extra: dict | None = None) -> Path:
    info = PngInfo()
    info.add_text("parameters", parameters)
    for key, value in (extra or {}).items():
        info.add_text(key, value)
    image.save(path, pnginfo=info)
    return path


def write_cells(result, folder: Path) -> list[Path]:
    """One PNG per cell, with its infotext, in ``folder/comparison``; in cell order."""
    content = folder / "comparison"
    content.mkdir(parents=True, exist_ok=True)
    return [save_png(c.image, content / cell_file(c), c.parameters) for c in result.cells]


def cell_file(cell) -> str:
    if cell.is_baseline:
        what = "baseline"
    elif cell.kind == "positive":
        what = "positive-" + slug(cell.positive_prompt, 31)
    else:
        what = slug(cell.negative_prompt, 40)
    return f"{cell.index:02d}-seed{cell.seed}-{what}.png"


def write_bundle(request: Request, result, folder: Path) -> tuple[Path, Path, Path]:
    """Beside the cells (``write_cells``): the grid and the grid with difference maps (named after the prompt and
    seed, carrying the baseline's infotext and the negatives), the manifest, and a zip of them all. Returns the two
    grids and the zip."""
    content = folder / "comparison"
    info = {"negprompt-negatives": json.dumps(list(result.settings.negatives), ensure_ascii=False)}
    name = grid_name(request)
    grid = save_png(result.grid(differences=False), content / name, result.cells[0].parameters, info)
    differences = save_png(result.grid(differences=True), content / name.replace(".png", "-differences.png"),
                           result.cells[0].parameters, info)
    manifest = result.manifest()
    for cell, entry in zip(result.cells, manifest["cells"]):
        entry["file"] = cell_file(cell)
    (content / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    archive = shutil.make_archive(str(folder / name.removesuffix(".png")), "zip", content)
    return grid, differences, Path(archive)


# -----------------------------------------------------------------------------------------------------------------
# Texts


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def caption(outcome: Outcome, cell) -> str:
    """A gallery caption: what the cell is, its seed when there are several, its change score, what the detector
    sees."""
    result = outcome.result
    text = _cell_name(outcome, cell)
    if not cell.is_baseline:
        text += f" · {result.change_scores[cell.index]:.1f}% changed"
    verdict = badge(result, cell)
    if verdict:
        text += f" · {verdict}"
    found = result.verdicts[cell.index] if getattr(result, "verdicts", None) else None
    text += "".join(f" · ⚠️ {note}" for note in getattr(found, "notes", ()))
    if outcome.readout is not None:
        text += " · sees " + (", ".join(seen(outcome.readout[cell.index])) or "nothing")
    return text


def badge(result, cell) -> str:
    """The cell's verdict badge when its negative does almost nothing (``negprompt.verdicts.explain``), with the
    verdict's first reason; "" otherwise."""
    from negprompt.verdicts import INERT

    verdicts = getattr(result, "verdicts", None)
    found = verdicts[cell.index] if verdicts else None
    if found is None or found.status != INERT:
        return ""
    return f"⚠️ {found.status}: {found.reasons[0]}"


def gallery_items(outcome: Outcome, differences: bool, attended: bool = False) -> list[tuple]:
    """(image, caption) per cell, in row order. With ``differences``, each cell shows where it differs from its
    row's baseline; the baselines themselves stay images (their map would be empty). With ``attended``, each cell
    with a negative prompt shows where its tokens were attended to, in red over the image (it wins over
    ``differences``)."""
    result, items = outcome.result, []
    overlays = result.attention_overlays() if attended else [None] * len(result.cells)
    for cell, overlay in zip(result.cells, overlays):
        image = str(outcome.files[cell.index])
        if overlay is not None:
            image = overlay
        elif differences and not cell.is_baseline:
            image = result.difference_map(cell)
        items.append((image, caption(outcome, cell)))
    return items


def _cell_name(outcome: Outcome, cell) -> str:
    """What a cell is (``short_name``), with its seed when there are several."""
    result = outcome.result
    return short_name(result, cell) + (f" · seed {cell.seed}" if len(result.settings.seeds) > 1 else "")


def short_name(result, cell) -> str:
    """A cell's short name: "baseline" where its row has one baseline; where it has several (one per reading or
    per guidance scale), the baseline's whole label, which says which; else the cell's label."""
    if cell.is_baseline and sum(c.is_baseline for c in result.rows[0]) == 1:
        return "baseline"
    return result.label(cell)


def frame_count(outcome: Outcome | None) -> int:
    """How many steps of previews the outcome kept (the last is the final images); 0 when none."""
    return len(getattr(outcome.result, "preview_steps", None) or []) if outcome is not None else 0


def frame_items(outcome: Outcome | None, index: int) -> list[tuple]:
    """(image, caption) per cell at the ``index``-th kept step (clamped): what every cell was heading for then, in
    the gallery's order."""
    count = frame_count(outcome)
    if not count:
        return []
    index = min(max(int(index), 0), count - 1)
    result = outcome.result
    step = result.preview_steps[index]
    return [(image, f"step {step}/{result.settings.steps} · {_cell_name(outcome, cell)}")
            for image, cell in zip(result.previews[index], result.cells)]


def divergence_frame(outcome: Outcome | None):
    """A pandas DataFrame (step, change, image): per cell with a reference, its change against that reference at
    each kept step, in percent of full scale (``negprompt.explore.divergence_curves``). Empty without previews."""
    import pandas as pd

    from negprompt.explore import divergence_curves

    rows = []
    if frame_count(outcome):
        result = outcome.result
        curves = divergence_curves(result.previews, [cell.reference for cell in result.cells])
        for cell, curve in zip(result.cells, curves):
            if curve is not None:
                rows += [(step, value, _cell_name(outcome, cell)) for step, value in zip(result.preview_steps, curve)]
    return pd.DataFrame(rows, columns=["step", "change", "image"])


def status(outcome: Outcome, seconds: float | None = None) -> str:
    """One line on what was made: images, seeds, steps, model, size, sampler, time."""
    s = outcome.result.settings
    seeds = f"seed {s.seeds[0]}" if len(s.seeds) == 1 else f"seeds {s.seeds[0]}-{s.seeds[-1]}"
    images = len(outcome.result.cells)
    parts = [plural(len(s.negatives), "negative prompt")]
    if outcome.request.other_positive:
        parts.append("another positive prompt")
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    per_seed = " per seed" if len(s.seeds) > 1 else ""
    what = f"baseline + {' + '.join(parts)}{per_seed}"
    if outcome.request.mode != "negatives":
        mode = next(label for label, name in MODES.items() if name == outcome.request.mode)
        what = f"{mode}: {plural(len(outcome.result.rows[0]), 'image')} per seed"
    return (f"**Done: {plural(images, 'image')}** ({seeds}: {what}){took}"
            f" · `{s.model}` · {s.width}x{s.height} · {s.steps} steps · {s.scheduler}. "
            "Select an image to see its infotext.")


def _flags(term: dict) -> list[str]:
    """A ranked term's verdict and how it was read (cut, A1111 syntax as characters, no embedding loaded)."""
    return ["does almost nothing" if term["inert"] else "acts"] + [f"⚠️ {n}" for n in term.get("notes", [])]


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcome: Outcome) -> str:
    """Per cell: seed, what it is, change score and (with a detector) what it sees, as a Markdown table; then the
    detector's tally per negative prompt."""
    result, readout = outcome.result, outcome.readout
    header = "| seed | cell | change |" + (" detector sees |" if readout is not None else "")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for cell in result.cells:
        line = f"| {cell.seed} | {_md(short_name(result, cell))} | {result.change_scores[cell.index]:.1f}% |"
        if readout is not None:
            line += f" {', '.join(seen(readout[cell.index])) or 'nothing'} |"
        lines.append(line)
    if readout is not None:
        lines += ["", tally(outcome)]
    return "\n".join(lines)


def tally(outcome: Outcome) -> str:
    """How many images (of the rows) the detector marks with each attribute, per column (baseline, each negative,
    the other positive): the count a class makes to see what each negative prompt removed."""
    result, readout = outcome.result, outcome.readout
    columns = [_md(short_name(result, c)) for c in result.rows[0]]
    per_column: list[list[dict]] = [[] for _ in columns]
    for row in result.rows:  # every row holds the same cells in the same order, one column each
        for position, cell in enumerate(row):
            per_column[position].append(readout[cell.index])
    names = sorted({name for records in per_column for r in records for name in seen(r)})
    if not names:
        return "The detector sees none of its attributes in any image."
    rows = len(result.settings.seeds)
    lines = ["| attribute | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in names:
        counts = [sum(name in seen(r) for r in records) for records in per_column]
        lines.append(f"| {name} | " + " | ".join(f"{n}/{rows}" for n in counts) + " |")
    return "\n".join(lines)


def explored(outcome: Outcome) -> tuple[str, str]:
    """What an explorer mode found, as (Markdown, the trimmed negative to copy): for a term mode the ranked terms;
    for a timing sweep on the embedded model, per start what the detector says the negative removed and changed
    elsewhere (the command line's table). ("", "") in the plain mode."""
    from negprompt.verdicts import identical_lines, manifest_fields

    _, extra = manifest_fields(outcome.result)
    lines, trimmed = [], ""
    rows = len(outcome.result.settings.seeds)
    if "terms" in extra:
        ranking = extra["terms"]
        what = "leaving it out" if ranking["kind"] == "leave-out" else "it alone"
        lines += [f"**Terms ranked** by how much {what} changes the image (mean over {plural(rows, 'seed')}; "
                  "lowest to highest seed beside it):", "",
                  "| rank | term | change | per seed | verdict |", "|---|---|---|---|---|"]
        lines += [f"| {i} | {_md(t['label'])} | {t['mean_change']:.2f}% | {t['spread'][0]:.2f} to "
                  f"{t['spread'][1]:.2f}% | {'; '.join(_md(f) for f in _flags(t))} |"
                  for i, t in enumerate(ranking["terms"], 1)]
        same = identical_lines(ranking)
        lines += ["", *(f"**{_md(line[0].upper() + line[1:])}.**" for line in same)] if same else \
            ["", "No two terms gave identical images on every seed."]
        trimmed = ranking["trimmed_negative"]
    for negative, report in extra.get("timing", {}).items():
        lines += ["", f"**'{_md(negative)}' by start** (the detector's reading, over {plural(rows, 'seed')}):", "",
                  "| start | removed | added | other flips | change |", "|---|---|---|---|---|"]
        lines += [f"| {r['start']:g} | {r['removed']}/{r['present']} | {r['added']}/{r['absent']} | "
                  f"{r['other_flips']:.2f} | {r['change']:.1f}% |" for r in report["starts"]]
        lines += ["", f"Latest start that still removes it (90% as often as the earliest): "
                      f"{report['latest_removing_start']}"]
    if "xray" in extra:
        xray = extra["xray"]
        lines += ["", f"**'{_md(xray['embedding'])}' vector by vector**: the vocabulary words nearest to each vector "
                      "(cosine similarity in the text encoder's token table):", "",
                  "| vector | token | nearest words |", "|---|---|---|"]
        lines += [f"| {v['vector']} | {_md(v['token'])} | "
                  + ", ".join(f"{_md(w['word'])} ({w['cosine']:.2f})" for w in v["nearest_words"]) + " |"
                  for v in xray["vectors"]]
    return "\n".join(lines).strip(), trimmed
