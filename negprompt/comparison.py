"""The result of a comparison: its spec, its cells, and the ways to look at them (grid, difference maps, files).

    result.grid(differences=True).save("grid.png")
    result.save("outputs/mustache")   # grid.png, one PNG per cell with infotext, manifest.json

Each cell is compared against its ``reference`` cell (``CellSpec.reference``, by default its row's baseline): its
change score and difference map are taken against that cell. A cell with no reference (a baseline) has change 0 and
its "difference map" is the cell itself, drawn as the row's reference, never a meaningless black square.
``manifest.json`` records the full spec (``ComparisonSpec.to_dict()``) and, per cell, its results, so
``compare(pipe, ComparisonSpec.from_dict(manifest["spec"]))`` replays the comparison.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from negprompt.difference import change_score, difference_map
from negprompt.grid import draw_grid
from negprompt.guidance import method_to_dict
from negprompt.plan import CellSpec, ComparisonSpec, baseline_label
from negprompt.verdicts import manifest_fields


@dataclass(frozen=True)
class Settings:
    """The settings shared by every cell, resolved for display (sampler and model as labels)."""

    prompt: str  # the positive prompt of the first cell (other-positive cells carry their own)
    negatives: tuple[str, ...]  # the negative prompts of the first row's negative cells, in order
    seeds: tuple[int, ...]  # one row per seed
    steps: int  # denoising steps
    guidance_scale: float  # classifier-free guidance scale
    height: int  # image height in pixels
    width: int  # image width in pixels
    scheduler: str  # sampler name (A1111 style) or scheduler class
    model: str  # Hub id, folder name or the embedded model's name
    baseline: str  # "empty": the empty prompt; "zeros": zero embeddings (SDXL with no negative)

    @classmethod
    def from_spec(cls, spec: ComparisonSpec, scheduler: str, model: str) -> Settings:
        first_row = [c for c in spec.cells if c.row == spec.cells[0].row]
        return cls(prompt=spec.cells[0].positive, negatives=tuple(c.negative or "" for c in first_row
                                                                  if c.kind == "negative"),
                   seeds=spec.seeds, steps=spec.steps, guidance_scale=spec.guidance_scale, height=spec.height,
                   width=spec.width, scheduler=scheduler, model=model, baseline=spec.baseline)


@dataclass(frozen=True, eq=False)
class Cell:
    """One image and the cell spec that made it."""

    index: int  # position in Comparison.cells (and in the spec's cells)
    row: int  # the grid row it is shown in
    spec: CellSpec  # what made it: seed, positive, negative, guidance method, window, label, reference
    image: Image.Image  # the generated image
    seed: int  # the seed of its starting noise
    initial_latent_sha256: str  # hash of the starting latent, equal across cells with the same seed
    parameters: str  # A1111-style infotext

    @property
    def negative_prompt(self) -> str:
        """Its negative prompt ("" for none, and for zero embeddings)."""
        return self.spec.negative or ""

    @property
    def positive_prompt(self) -> str:
        return self.spec.positive

    @property
    def is_baseline(self) -> bool:
        return self.spec.kind == "baseline"

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def reference(self) -> int | None:
        """Index of the cell it is compared against (None: none)."""
        return self.spec.reference


@dataclass
class Comparison:
    """A finished comparison: the spec it ran (image size resolved) and one ``Cell`` per cell of it, in order."""

    spec: ComparisonSpec
    settings: Settings
    cells: list[Cell]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    max_batch_used: int = 0  # cells per UNet batch actually used
    # Mechanism explorer (filled by negprompt.verdicts.explain after the run)
    verdicts: list = field(default_factory=list)  # per cell a negprompt.verdicts.Verdict, or None (no reference)
    preview_steps: list[int] = field(default_factory=list)  # the steps at which every cell's x0 preview was kept
    previews: list[list[Image.Image]] = field(default_factory=list)  # per kept step, every cell's preview
    explored: dict = field(default_factory=dict)  # comparison-wide findings, e.g. a timing sweep's tables
    attention_maps: list = field(default_factory=list)  # per cell, where its negative was attended to ([0, 1] array
    # at the latent size, or None); empty unless the run captured them (negprompt.attention)
    additions: dict = field(default_factory=dict)  # what the model was loaded with: negative embeddings and LoRAs
    # (loading.Loaded.additions), recorded so a replay can check it runs with the same ones

    @property
    def rows(self) -> list[list[Cell]]:
        """Cells grouped by their grid row, in order."""
        grouped: dict[int, list[Cell]] = {}
        for cell in self.cells:
            grouped.setdefault(cell.row, []).append(cell)
        return [grouped[r] for r in sorted(grouped)]

    def reference_of(self, cell: Cell) -> Cell | None:
        """The cell ``cell`` is compared against, or None."""
        return None if cell.reference is None else self.cells[cell.reference]

    def baseline_of(self, cell: Cell) -> Cell:
        """The baseline of ``cell``'s row (the row's first cell when it has none)."""
        row = next(r for r in self.rows if r[0].row == cell.row)
        return next((c for c in row if c.is_baseline), row[0])

    @cached_property
    def change_scores(self) -> list[float]:
        """Per cell, its change score against its reference cell (0 for cells with none), in percent."""
        return [0.0 if (ref := self.reference_of(c)) is None else change_score(c.image, ref.image)
                for c in self.cells]

    def attention_overlays(self) -> list[Image.Image | None]:
        """Per cell, its image with where its negative was attended to laid over it in red (None: no map)."""
        from negprompt.attention import overlay

        maps = self.attention_maps or [None] * len(self.cells)
        return [None if m is None else overlay(c.image, m) for c, m in zip(self.cells, maps)]

    def difference_map(self, cell: Cell) -> Image.Image:
        """Heat map of where ``cell`` differs from its reference; a cell with no reference is shown as itself."""
        ref = self.reference_of(cell)
        return cell.image if ref is None else difference_map(cell.image, ref.image)

    def label(self, cell: Cell) -> str:
        """A cell's caption: its spec's label (builders write it), else what it shows."""
        if cell.spec.label:
            return cell.spec.label
        if cell.is_baseline:
            return baseline_label(self.spec.baseline)
        return f"- {cell.negative_prompt}" if cell.negative_prompt else f"+ {cell.positive_prompt}"

    def detail(self, cell: Cell) -> str:
        """A cell's second caption line: its seed (no reference) or its change, and how its negative was read when
        that hides something (``negprompt.verdicts.reading_notes``: cut, A1111 syntax as characters, no
        embedding)."""
        if cell.reference is None:
            return f"seed {cell.seed}"
        verdict = self.verdicts[cell.index] if self.verdicts else None
        notes = "".join(f" · {n}" for n in getattr(verdict, "notes", ()))
        return f"change {self.change_scores[cell.index]:.1f}%{notes}"

    def _map_caption(self, cell: Cell) -> str:
        ref = self.reference_of(cell)
        if ref is None:
            return "the reference (shown as itself)"
        return "difference from the baseline" if ref.is_baseline else f"difference from '{self.label(ref)}'"

    def grid(self, differences: bool = False) -> Image.Image:
        """The labeled grid; with ``differences``, each row is followed by its difference maps."""
        s = self.settings
        rows, titles = [], []
        for row in self.rows:
            rows.append([(c.image, self.label(c), self.detail(c)) for c in row])
            titles.append(f"seed {row[0].seed}")
            if differences:
                rows.append([(self.difference_map(c), self._map_caption(c), self.detail(c)) for c in row])
                titles.append("changes")
        seeds = ", ".join(map(str, s.seeds))
        details = (f"model {s.model} | seed{'s' if len(s.seeds) > 1 else ''} {seeds} | {s.steps} steps | "
                   f"guidance {s.guidance_scale:g} | {s.scheduler} | {s.width}x{s.height}")
        return draw_grid(s.prompt, details, rows, titles if len(self.rows) > 1 or differences else [])

    def manifest(self) -> dict:
        """The full spec, every cell's results, and how the run went; JSON-ready."""
        explored, explored_extra = manifest_fields(self)
        return {
            "spec": self.spec.to_dict(),
            **({"model_additions": self.additions} if self.additions else {}),
            "settings": {**asdict(self.settings), "negatives": list(self.settings.negatives),
                         "seeds": list(self.settings.seeds)},
            "cells": [
                {
                    "file": _cell_file(c, self.label(c)),
                    "index": c.index,
                    "row": c.row,
                    "seed": c.seed,
                    "label": self.label(c),
                    "kind": c.kind,
                    "positive_prompt": c.positive_prompt,
                    "negative_prompt": c.negative_prompt,
                    "zero_embeddings": c.spec.negative is None,
                    "window": list(c.spec.window),
                    "guidance": method_to_dict(c.spec.guidance),
                    "term": c.spec.term,
                    "reading": self.spec.reading_of(c.spec),
                    "baseline": c.is_baseline,
                    "reference": c.reference,
                    "initial_latent_sha256": c.initial_latent_sha256,
                    "change_score": round(self.change_scores[c.index], 4),
                    "parameters": c.parameters,
                    **explored[c.index],
                }
                for c in self.cells
            ],
            **explored_extra,
            "warnings": self.warnings,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "max_batch_used": self.max_batch_used,
            "versions": _versions(),
        }

    def save(self, folder: str | Path, differences: bool = True) -> Path:
        """Write ``grid.png``, one PNG per cell (infotext in its ``parameters`` chunk) and ``manifest.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.grid(differences=differences).save(folder / "grid.png")
        for cell in self.cells:
            info = PngInfo()
            info.add_text("parameters", cell.parameters)
            cell.image.save(folder / _cell_file(cell, self.label(cell)), pnginfo=info)
        for cell, overlay in zip(self.cells, self.attention_overlays()):
            if overlay is not None:
                overlay.save(folder / ("attention-" + _cell_file(cell, self.label(cell))))
        (folder / "manifest.json").write_text(json.dumps(self.manifest(), indent=2, ensure_ascii=False) + "\n")
        return folder


def _cell_file(cell: Cell, label: str) -> str:
    slug = "baseline" if cell.is_baseline else re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    return f"{cell.index:02d}-seed{cell.seed}-{slug[:40].strip('-') or 'cell'}.png"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("negprompt", "torch", "diffusers", "transformers", "pillow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
