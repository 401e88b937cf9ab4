"""What a comparison costs on a loaded model, measured at the size it runs at.

    from negprompt.cost import measure, spec_work
    cost = measure(pipe, 256, 256)               # one denoiser call at 2 (and 8) rows, one VAE decode
    cost.seconds(*spec_work(spec, preview_every=5))

A denoising step costs one UNet call over every (cell, branch) row; each image costs one VAE decode (and one more per
kept preview). Both grow faster than the pixels: attention is quadratic in the latent's tokens, so a cell-step at
1024x1024 on a CPU costs thousands of times one at 64x64, not 256 times. So costs are measured at the size asked
for, never extrapolated upward as if linear; where measuring would itself take too long, ``StepCost.scaled`` gives
bounds from a smaller measured size: at least linear in the pixels, at most quadratic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from negprompt.guidance import cell_branches, guidance_is_active


@dataclass(frozen=True)
class StepCost:
    """Seconds, at one image size on one device: per UNet call (whatever its rows), per UNet batch row, per image
    decoded by the VAE. ``measured_s``: what measuring it took."""

    call_s: float
    row_s: float
    decode_s: float
    measured_s: float = 0.0

    def seconds(self, rows: int, steps: int, images: int) -> float:
        """A run of ``steps`` UNet calls over ``rows`` rows each, then ``images`` decodes."""
        return steps * (self.call_s + self.row_s * rows) + images * self.decode_s

    def scaled(self, factor: float, power: float) -> StepCost:
        """The cost at ``factor`` times the pixels, if the per-row and decode costs grow as ``factor ** power``
        (1: linear, a lower bound; 2: quadratic, an upper bound) and the per-call cost stays (lower) or grows the
        same way (upper)."""
        grow = factor ** power
        call = self.call_s * grow if power > 1 else self.call_s
        return StepCost(call, self.row_s * grow, self.decode_s * grow, self.measured_s * grow)


def spec_work(spec, preview_every: int = 0, distilled: bool = False, family=None) -> tuple[int, int, int]:
    """(denoiser rows per step, steps, images decoded) of a ``ComparisonSpec``: one row per (cell, branch) the engine
    runs (``guidance.cell_branches``, each cell at its own guidance scale), one decode per cell and per kept preview
    of it. ``family``: the model's (``negprompt.families``), which says whether guidance runs at a scale and whether
    an attention-steering cell adds a steering row; without it, ``distilled`` says whether guidance runs, and a
    steering row is counted for every attention-steering cell (the most a cell can cost)."""
    by_row = family.steers_by_row if family is not None else True

    def active(cell) -> bool:
        scale = spec.scale_of(cell)
        if family is not None:
            return family.guidance_active(scale)
        return guidance_is_active(scale, 1 if distilled else None)

    rows = sum(len(cell_branches(c.guidance, active(c), by_row)) for c in spec.cells)
    previews = (spec.steps - 1) // preview_every if preview_every else 0
    return rows, spec.steps, len(spec.cells) * (1 + previews)


@torch.no_grad()
def measure(pipe, height: int, width: int, *, clock=time.perf_counter) -> StepCost:
    """Time one denoiser call at 2 rows (one CFG cell), and at 8 rows when that is quick, and one VAE decode, at
    ``height`` x ``width`` pixels on the pipeline's device, through the model family's own calls (the ones a
    comparison makes). Costs about one cell-step and one decode."""
    from negprompt.families import family_of

    family = family_of(getattr(pipe, "pipe", pipe))
    device = family.pipe._execution_device
    table = family.encode([""])
    latent = family.initial_latent(0, height, width, table.dtype)

    def denoiser_call(rows: int) -> float:
        call = family.denoiser_call(height, width, rows, 7.5, table.dtype, device)
        text, pooled = table.stack([""] * rows, device)
        sample = latent.repeat(rows, *([1] * (latent.ndim - 1))).to(device)
        start = clock()
        call(sample, torch.tensor(500.0, device=device), text, pooled)
        _sync(device)
        return clock() - start

    began = clock()
    two = denoiser_call(2)
    if two < 0.25:  # cheap: once more warm (the first call sets kernels up), and at 8 rows for the per-row cost
        two = min(two, denoiser_call(2))
        eight = denoiser_call(8)
        row = max(0.0, (eight - two) / 6)
        call = max(0.0, two - 2 * row)
        if row == 0.0:  # noise swamped the slope: charge it all per row
            row, call = max(two, eight) / 2, 0.0
    else:
        row, call = two / 2, 0.0
    start = clock()
    family.decode(latent.to(device), height, width)
    _sync(device)
    decode = clock() - start
    return StepCost(call_s=call, row_s=row, decode_s=decode, measured_s=clock() - began)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
