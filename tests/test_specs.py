"""Comparison specs run by the engine: round trips and replay, the other-positive cell, guidance methods and windows
as cells of one batch, each cell equal to the same image made alone (or by diffusers alone)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pytest
import torch

from negprompt import compare
from negprompt.guidance import CFG, METHODS, NegativeStrength, PerpNeg, RescaledCFG
from negprompt.plan import (
    CellSpec,
    ComparisonSpec,
    methods_spec,
    negatives_spec,
    parse_window,
    timing_spec,
    window_contains,
    with_cells,
)
from negprompt.schedulers import make_scheduler

PROMPT = "portrait photo of a man"
OTHER = "portrait photo of a man without mustache"
TOLERANCE = 2  # max pixel difference, in 1/255 steps, between two ways of making the same image


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def plain_call(pipe, prompt, negative, seed, **kwargs):
    """The image as anyone would make it with diffusers alone (the shared pipeline is not modified)."""
    components = {**pipe.components, "scheduler": make_scheduler(pipe.scheduler)}
    single = type(pipe)(**components)
    single.set_progress_bar_config(disable=True)
    return single(prompt, negative_prompt=negative, generator=torch.Generator("cpu").manual_seed(seed),
                  **kwargs).images[0]


def spec_of(pipe, cells, steps=4, guidance_scale=6.0, **kwargs):
    return ComparisonSpec(model="tiny", cells=tuple(cells), steps=steps, guidance_scale=guidance_scale, **kwargs)


def alone(cell: CellSpec) -> CellSpec:
    return replace(cell, reference=None, row=0)


# ---------------------------------------------------------------------------------------------------------------
# Spec as data: round trip and replay


def test_spec_round_trips_through_json():
    spec = methods_spec(PROMPT, ["hat", "glasses"], [1, 2], [CFG(), PerpNeg(1.5), RescaledCFG(0.5)],
                        windows=[(0.25, 1.0), (0.0, 0.5)], model="m", steps=7, guidance_scale=6.5, height=64,
                        width=128, sampler="Euler a", baseline="zeros", other_positive=OTHER)
    again = ComparisonSpec.from_json(spec.to_json())
    assert again == spec, "A spec must read back equal to itself from its JSON."
    assert again.cells[0].negative is None and again.cells[2].guidance == PerpNeg(1.5)
    assert [c.kind for c in spec.cells[:8]] == ["baseline"] + ["negative"] * 6 + ["positive"]


def test_manifest_spec_replays_to_identical_images(tiny_sd, tmp_path):
    spec = negatives_spec(PROMPT, ["hat", "glasses"], [3], model="tiny", steps=3, other_positive=OTHER)
    cells = list(spec.cells) + [replace(spec.cells[1], guidance=PerpNeg(), window=(0.3, 1.0), label="- hat pn")]
    first = compare(tiny_sd, with_cells(spec, cells), preview_every=1, callback=lambda *_: None)
    manifest = json.loads((first.save(tmp_path / "run") / "manifest.json").read_text())
    spec = ComparisonSpec.from_dict(manifest["spec"])
    again = compare(tiny_sd, spec, max_batch=manifest["max_batch_used"])
    assert len(again.cells) == len(first.cells) == 5
    for a, b in zip(first.cells, again.cells):
        assert max_diff(a.image, b.image) == 0, "Replaying a manifest's spec with its chunking must give " \
                                                "pixel-identical images."
    chunked = compare(tiny_sd, spec, max_batch=2)
    assert chunked.max_batch_used == 2
    for a, b in zip(first.cells, chunked.cells):
        assert max_diff(a.image, b.image) <= TOLERANCE, "Another chunking rounds the UNet differently, no more."
    assert manifest["spec"]["height"] == 64, "The manifest records the resolved image size."


# ---------------------------------------------------------------------------------------------------------------
# The other positive prompt: one more cell of the same batch


def test_other_positive_is_a_cell_of_the_same_batch_and_equals_diffusers(tiny_sd, tmp_path):
    result = compare(tiny_sd, PROMPT, ["mustache"], seeds=[5, 6], steps=3, guidance_scale=6.0, other_positive=OTHER)
    assert result.max_batch_used == len(result.cells) == 6, "All cells, the other positive included, in one batch."
    assert [[c.kind for c in row] for row in result.rows] == [["baseline", "negative", "positive"]] * 2
    for row in result.rows:
        assert len({c.initial_latent_sha256 for c in row}) == 1, "The other positive shares its row's latent."
    other = result.rows[1][2]
    reference = plain_call(tiny_sd, OTHER, None, 6, num_inference_steps=3, guidance_scale=6.0)
    assert max_diff(other.image, reference) <= TOLERANCE, "The other-positive cell is pipe(OTHER) from the row's seed."
    assert other.parameters.startswith(OTHER + "\n"), "Its infotext carries its own positive prompt."

    folder = result.save(tmp_path / "run")
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["cells"][2]
    assert (entry["kind"], entry["positive_prompt"], entry["reference"]) == ("positive", OTHER, 0)
    assert (folder / entry["file"]).is_file() and "without-mustache" in entry["file"]
    assert entry["change_score"] == pytest.approx(result.change_scores[2], abs=1e-4) and entry["change_score"] > 0
    plain = compare(tiny_sd, PROMPT, ["mustache"], seeds=[5, 6], steps=3, guidance_scale=6.0)
    assert result.grid().width > plain.grid().width, "The grid has a column for the other positive."


# ---------------------------------------------------------------------------------------------------------------
# Guidance methods in one batch


def test_mixed_methods_in_one_batch_equal_each_method_run_alone(tiny_sd):
    methods = [CFG(), PerpNeg(), RescaledCFG(0.7), NegativeStrength(3.0)]
    spec = methods_spec(PROMPT, ["hat"], [4], methods, model="tiny", steps=4, guidance_scale=6.0)
    mixed = compare(tiny_sd, spec)
    assert mixed.max_batch_used == 5
    for cell in mixed.cells:
        single = compare(tiny_sd, with_cells(spec, [alone(cell.spec)]))
        assert max_diff(cell.image, single.cells[0].image) <= TOLERANCE, \
            f"Cell '{cell.spec.label}' must not depend on the methods of its batch neighbours."
    assert len({np.asarray(c.image).tobytes() for c in mixed.cells}) == 5, "Each method makes its own image."


def test_a_perp_neg_cell_does_not_depend_on_its_batch_neighbours(tiny_sd):
    cell = CellSpec(8, PROMPT, "hat", PerpNeg())
    neighbours = [CellSpec(9, PROMPT, "glasses", PerpNeg()), CellSpec(1, "a dog", "blurry ugly", PerpNeg(2.0)),
                  CellSpec(8, PROMPT, "red background", CFG())]
    by_itself = compare(tiny_sd, spec_of(tiny_sd, [cell])).cells[0].image
    in_company = compare(tiny_sd, spec_of(tiny_sd, [neighbours[0], cell, *neighbours[1:]])).cells[1].image
    assert max_diff(by_itself, in_company) <= TOLERANCE, "Perp-Neg's projection must be taken per cell."


def test_perp_neg_with_the_negative_equal_to_the_positive_gives_the_empty_negative_image(tiny_sd):
    spec = spec_of(tiny_sd, [CellSpec(2, PROMPT, ""), CellSpec(2, PROMPT, PROMPT, PerpNeg())])
    baseline, perp = compare(tiny_sd, spec).cells
    assert max_diff(baseline.image, perp.image) <= TOLERANCE


def test_negative_strength_g_minus_one_is_the_cfg_cell_and_zero_the_baseline(tiny_sd):
    g = 6.0
    spec = spec_of(tiny_sd, [CellSpec(3, PROMPT, ""), CellSpec(3, PROMPT, "hat"),
                             CellSpec(3, PROMPT, "hat", NegativeStrength(g - 1)),
                             CellSpec(3, PROMPT, "hat", NegativeStrength(0.0))], guidance_scale=g)
    baseline, cfg, strength, none = (c.image for c in compare(tiny_sd, spec).cells)
    assert max_diff(cfg, strength) <= TOLERANCE, "s = g - 1 must give plain CFG with the negative."
    assert max_diff(baseline, none) <= TOLERANCE, "s = 0 must give the no-negative image."


def test_cfg_rescale_equals_diffusers_guidance_rescale(tiny_sd):
    spec = spec_of(tiny_sd, [CellSpec(7, PROMPT, "hat", RescaledCFG(0.7))], guidance_scale=9.0)
    cell = compare(tiny_sd, spec).cells[0]
    reference = plain_call(tiny_sd, PROMPT, "hat", 7, num_inference_steps=4, guidance_scale=9.0,
                           guidance_rescale=0.7)
    assert max_diff(cell.image, reference) <= TOLERANCE
    assert "Guidance method: cfg-rescale" in cell.parameters


def test_a_new_method_is_a_class_and_a_registry_entry(tiny_sd, monkeypatch):
    """The whole of adding a guidance method: a class (here a demonstration, not shipped) and one METHODS entry."""

    @dataclass(frozen=True)
    class PositiveOnly:
        """No guidance at all: the positive prediction alone (what guidance scale 1 gives)."""

        name: ClassVar[str] = "positive-only"
        branches: ClassVar[tuple[str, ...]] = ("positive",)

        def combine(self, preds, scale):
            return preds["positive"]

    monkeypatch.setitem(METHODS, PositiveOnly.name, PositiveOnly)
    spec = spec_of(tiny_sd, [CellSpec(5, PROMPT, "hat", PositiveOnly())])
    result = compare(tiny_sd, ComparisonSpec.from_json(spec.to_json()))
    unguided = compare(tiny_sd, PROMPT, [], seed=5, steps=4, guidance_scale=1.0)
    assert max_diff(result.cells[0].image, unguided.cells[0].image) <= TOLERANCE
    assert "Guidance method: positive-only" in result.cells[0].parameters


# ---------------------------------------------------------------------------------------------------------------
# Windows


def test_window_text_syntax():
    assert parse_window("hat") == ("hat", (0.0, 1.0))
    assert parse_window("hat@0.3") == ("hat", (0.3, 1.0))
    assert parse_window("red hat @ 0.3-0.8") == ("red hat", (0.3, 0.8))
    assert [window_contains((0.5, 1.0), i, 4) for i in range(4)] == [False, False, True, True]
    assert not any(window_contains((0.5, 0.5), i, 4) for i in range(4))


def test_whole_and_empty_windows_are_the_negative_and_the_baseline(tiny_sd):
    cells = [CellSpec(1, PROMPT, ""), CellSpec(1, PROMPT, "hat"), CellSpec(1, PROMPT, "hat", window=(0.0, 1.0)),
             CellSpec(1, PROMPT, "hat", window=(0.5, 0.5)), CellSpec(1, PROMPT, "hat", PerpNeg(), window=(1.0, 1.0))]
    baseline, plain, whole, empty, perp_empty = (c.image for c in compare(tiny_sd, spec_of(tiny_sd, cells)).cells)
    assert max_diff(plain, whole) <= TOLERANCE, "Window (0, 1) is the plain negative cell (another batch row)."
    assert max_diff(baseline, empty) <= TOLERANCE, "An empty window is the baseline."
    assert max_diff(baseline, perp_empty) <= TOLERANCE, "An empty window is the baseline, whatever the method."
    assert max_diff(baseline, plain) > TOLERANCE, "The negative must change the image for this test to mean much."


@pytest.mark.parametrize("window", [(0.5, 1.0), (0.25, 0.75)])
def test_a_windowed_cell_equals_diffusers_swapping_the_negative_at_that_step(tiny_sd, window):
    steps = 4
    device = tiny_sd._execution_device
    empty = tiny_sd.encode_prompt("", device, 1, False)[0]
    hat = tiny_sd.encode_prompt("hat", device, 1, False)[0]

    def swap(pipe, i, t, tensors):
        """After step i, set the negative half of prompt_embeds for step i + 1."""
        negative = hat if window_contains(window, i + 1, steps) else empty
        positive = tensors["prompt_embeds"].chunk(2)[1]
        return {"prompt_embeds": torch.cat([negative, positive])}

    first = hat if window_contains(window, 0, steps) else empty
    reference = plain_call(tiny_sd, PROMPT, None, 6, num_inference_steps=steps, guidance_scale=6.0,
                           negative_prompt_embeds=first, callback_on_step_end=swap,
                           callback_on_step_end_tensor_inputs=["prompt_embeds"])
    result = compare(tiny_sd, spec_of(tiny_sd, [CellSpec(6, PROMPT, "hat", window=window), CellSpec(6, PROMPT, ""),
                                                CellSpec(6, PROMPT, "hat")], steps=steps))
    windowed, baseline, plain = (c.image for c in result.cells)
    assert max_diff(windowed, reference) <= TOLERANCE, f"Window {window} must equal diffusers with the swap."
    assert max_diff(windowed, baseline) > 0 and max_diff(windowed, plain) > 0, "A partial window is neither."


def test_timing_spec_makes_one_cell_per_start(tiny_sd):
    spec = timing_spec(PROMPT, ["hat"], [2], [0.0, 0.5, 1.0], model="tiny", steps=4, guidance_scale=6.0)
    result = compare(tiny_sd, spec)
    assert [c.spec.window for c in result.cells[1:]] == [(0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]
    assert [result.label(c) for c in result.cells] == ["baseline: no negative", "- hat", "- hat @0.5", "- hat @1"]
    assert max_diff(result.cells[3].image, result.cells[0].image) <= TOLERANCE, "Starting at the end = baseline."
    assert "Negative window: 0.5" in result.cells[2].parameters


# ---------------------------------------------------------------------------------------------------------------
# References and results


def test_change_scores_and_maps_are_taken_against_each_cells_reference(tiny_sd):
    cells = [CellSpec(1, PROMPT, "", kind="baseline"), CellSpec(1, PROMPT, "hat", reference=0),
             CellSpec(1, PROMPT, "hat, glasses", reference=1, label="- hat, glasses vs - hat")]
    result = compare(tiny_sd, spec_of(tiny_sd, cells))
    from negprompt.difference import change_score

    base, hat, both = result.cells
    assert result.change_scores == [0.0, change_score(hat.image, base.image), change_score(both.image, hat.image)]
    assert result.difference_map(base) is base.image, "A cell with no reference is shown as itself."
    assert result.label(both) == "- hat, glasses vs - hat"


def test_sdxl_rows_read_their_own_pooled_embeddings_and_the_zero_baseline(tiny_sdxl):
    spec = methods_spec(PROMPT, ["hat"], [3], [CFG(), PerpNeg()], model="tiny", steps=3, guidance_scale=5.0,
                        baseline="zeros", other_positive=OTHER)
    spec = with_cells(spec, [*spec.cells, CellSpec(3, PROMPT, "hat", PerpNeg(), window=(0.5, 0.5), reference=0)])
    result = compare(tiny_sdxl, spec)
    assert result.cells[0].spec.negative is None and "zero embeddings" in result.label(result.cells[0])
    for cell in result.cells[1:4]:
        single = compare(tiny_sdxl, with_cells(spec, [alone(cell.spec)]))
        assert max_diff(cell.image, single.cells[0].image) <= TOLERANCE, f"SDXL cell '{cell.spec.label}' alone."
    assert max_diff(result.cells[4].image, result.cells[0].image) <= TOLERANCE, \
        "An empty window reads the zero-embedding baseline, pooled embeddings included."
    other = plain_call(tiny_sdxl, OTHER, None, 3, num_inference_steps=3, guidance_scale=5.0)
    assert max_diff(result.cells[3].image, other) <= TOLERANCE, "The other positive equals SDXL's own call."
