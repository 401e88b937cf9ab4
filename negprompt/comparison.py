"""The result of a comparison: its settings, its cells, and the ways to look at them (grid, difference maps, files).

    result.grid(differences=True).save("grid.png")
    result.save("outputs/mustache")   # grid.png, one PNG per cell with infotext, manifest.json
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


@dataclass(frozen=True)
class Settings:
    """Everything that decides a comparison's images."""

    prompt: str  # the positive prompt, shared by every cell
    negatives: tuple[str, ...]  # the negative prompts, one cell each, in order
    seeds: tuple[int, ...]  # one row per seed
    steps: int  # denoising steps
    guidance_scale: float  # classifier-free guidance scale
    height: int  # image height in pixels
    width: int  # image width in pixels
    scheduler: str  # sampler name (A1111 style) or scheduler class
    model: str  # Hub id, folder name or the embedded model's name
    baseline: str  # "empty": the empty prompt; "zeros": zero embeddings (SDXL with no negative)


@dataclass(frozen=True, eq=False)
class Cell:
    """One image: a row's seed with one negative prompt (or none, for the baseline)."""

    index: int  # position in Comparison.cells
    row: int  # index of the row (seed) this cell belongs to
    negative_prompt: str  # "" for the baseline
    is_baseline: bool  # True for the row's no-negative cell
    image: Image.Image  # the generated image
    seed: int  # the row's seed
    initial_latent_sha256: str  # hash of the starting latent, equal across a row
    parameters: str  # A1111-style infotext


@dataclass
class Comparison:
    """A finished comparison. Cells are in row order: each row is its baseline then one cell per negative."""

    settings: Settings
    cells: list[Cell]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    max_batch_used: int = 0  # cells per UNet batch actually used

    @property
    def rows(self) -> list[list[Cell]]:
        """Cells grouped by seed, baseline first."""
        width = len(self.settings.negatives) + 1
        return [self.cells[i:i + width] for i in range(0, len(self.cells), width)]

    def baseline_of(self, cell: Cell) -> Cell:
        return self.rows[cell.row][0]

    @cached_property
    def change_scores(self) -> list[float]:
        """Per cell, its change score against its row's baseline (0 for the baselines), in percent."""
        return [change_score(c.image, self.baseline_of(c).image) for c in self.cells]

    def difference_map(self, cell: Cell) -> Image.Image:
        """Heat map of where ``cell`` differs from its row's baseline."""
        return difference_map(cell.image, self.baseline_of(cell).image)

    def label(self, cell: Cell) -> str:
        """A cell's caption: its negative prompt, or what the baseline is."""
        if cell.is_baseline:
            return "baseline: zero embeddings" if self.settings.baseline == "zeros" else "baseline: no negative"
        return f"- {cell.negative_prompt}"

    def detail(self, cell: Cell) -> str:
        if cell.is_baseline:
            return f"seed {cell.seed}"
        return f"change {self.change_scores[cell.index]:.1f}%"

    def grid(self, differences: bool = False) -> Image.Image:
        """The labeled grid; with ``differences``, each row is followed by its difference maps."""
        s = self.settings
        rows, titles = [], []
        for row in self.rows:
            rows.append([(c.image, self.label(c), self.detail(c)) for c in row])
            titles.append(f"seed {row[0].seed}")
            if differences:
                rows.append([(self.difference_map(c), "difference from baseline" if c.is_baseline else
                              f"where '{c.negative_prompt}' changed it", self.detail(c)) for c in row])
                titles.append("changes")
        seeds = ", ".join(map(str, s.seeds))
        details = (f"model {s.model} | seed{'s' if len(s.seeds) > 1 else ''} {seeds} | {s.steps} steps | "
                   f"guidance {s.guidance_scale:g} | {s.scheduler} | {s.width}x{s.height}")
        return draw_grid(s.prompt, details, rows, titles if len(s.seeds) > 1 or differences else [])

    def manifest(self) -> dict:
        """Every setting and every cell's facts, JSON-ready."""
        return {
            "settings": {**asdict(self.settings), "negatives": list(self.settings.negatives),
                         "seeds": list(self.settings.seeds)},
            "cells": [
                {
                    "file": _cell_file(i, c),
                    "row": c.row,
                    "seed": c.seed,
                    "negative_prompt": c.negative_prompt,
                    "baseline": c.is_baseline,
                    "initial_latent_sha256": c.initial_latent_sha256,
                    "change_score": round(self.change_scores[i], 4),
                    "parameters": c.parameters,
                }
                for i, c in enumerate(self.cells)
            ],
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
        for i, cell in enumerate(self.cells):
            info = PngInfo()
            info.add_text("parameters", cell.parameters)
            cell.image.save(folder / _cell_file(i, cell), pnginfo=info)
        (folder / "manifest.json").write_text(json.dumps(self.manifest(), indent=2, ensure_ascii=False) + "\n")
        return folder


def _cell_file(index: int, cell: Cell) -> str:
    slug = "baseline" if cell.is_baseline else re.sub(r"[^a-z0-9]+", "-", cell.negative_prompt.lower()).strip("-")
    return f"{index:02d}-seed{cell.seed}-{slug[:40] or 'negative'}.png"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("negprompt", "torch", "diffusers", "transformers", "pillow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
