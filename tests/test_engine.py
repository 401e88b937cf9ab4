"""The comparison engine: same noise in every cell, cells equal plain diffusers calls, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from negprompt import compare
from negprompt.engine import MAX_CELLS
from negprompt.schedulers import make_scheduler

PROMPT = "portrait photo of a man"
TOLERANCE = 2  # max pixel difference, in 1/255 steps, between a cell and the same image made by diffusers alone


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_diff(a, b) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def plain_call(pipe, negative, seed, scheduler="Default", **kwargs):
    """The cell as anyone would make it with diffusers alone (the pipeline itself is not modified)."""
    components = {**pipe.components, "scheduler": make_scheduler(pipe.scheduler, scheduler)}
    single = type(pipe)(**components)
    single.set_progress_bar_config(disable=True)
    return single(PROMPT, negative_prompt=negative, generator=torch.Generator("cpu").manual_seed(seed),
                  **kwargs).images[0]


def test_every_cell_of_a_row_starts_from_the_same_latent(tiny_sd):
    result = compare(tiny_sd, PROMPT, ["mustache", "glasses", "hat"], seed=7, steps=3)
    hashes = {cell.initial_latent_sha256 for cell in result.cells}
    assert len(hashes) == 1, "Every cell of a row must be denoised from the same starting latent."
    assert [c.negative_prompt for c in result.cells] == ["", "mustache", "glasses", "hat"]
    assert result.cells[0].is_baseline and not any(c.is_baseline for c in result.cells[1:])


@pytest.mark.parametrize("scheduler", ["Default", "Euler a", "DPM++ 2M Karras"])
def test_each_cell_equals_that_negative_run_alone_in_diffusers(tiny_sd, scheduler):
    negatives = ["mustache", "red hat"]
    result = compare(tiny_sd, PROMPT, negatives, seed=11, steps=4, guidance_scale=6.0, scheduler=scheduler)
    for cell in result.cells:
        reference = plain_call(tiny_sd, cell.negative_prompt or None, 11, scheduler, num_inference_steps=4,
                               guidance_scale=6.0)
        assert max_diff(cell.image, reference) <= TOLERANCE, (
            f"Cell '{cell.negative_prompt}' must equal pipe(prompt, negative_prompt=..., generator=seed 11) "
            f"with {scheduler}.")


def test_sdxl_cells_equal_diffusers_and_the_zero_baseline_is_diffusers_no_negative(tiny_sdxl):
    result = compare(tiny_sdxl, PROMPT, ["mustache"], seed=5, steps=3, guidance_scale=5.0)
    assert result.settings.baseline == "zeros"
    assert "zero embeddings" in result.label(result.cells[0])
    no_negative = plain_call(tiny_sdxl, None, 5, num_inference_steps=3, guidance_scale=5.0)
    with_negative = plain_call(tiny_sdxl, "mustache", 5, num_inference_steps=3, guidance_scale=5.0)
    assert max_diff(result.cells[0].image, no_negative) <= TOLERANCE, "SDXL zeros baseline must equal no negative."
    assert max_diff(result.cells[1].image, with_negative) <= TOLERANCE


def test_sdxl_baseline_modes_differ_and_are_labeled(tiny_sdxl):
    zeros = compare(tiny_sdxl, PROMPT, ["mustache"], seed=2, steps=3, baseline="zeros")
    empty = compare(tiny_sdxl, PROMPT, ["mustache"], seed=2, steps=3, baseline="empty")
    assert max_diff(zeros.cells[0].image, empty.cells[0].image) > 0, "Zero and empty-prompt baselines must differ."
    assert zeros.label(zeros.cells[0]) != empty.label(empty.cells[0])
    assert "Baseline: zero embeddings" in zeros.cells[0].parameters
    assert max_diff(zeros.cells[1].image, empty.cells[1].image) == 0, "The baseline mode must not touch other cells."


def test_chunked_equals_unchunked(tiny_sd):
    kwargs = dict(seeds=[1, 2], steps=3)
    whole = compare(tiny_sd, PROMPT, ["mustache", "glasses", "hat"], **kwargs)
    chunked = compare(tiny_sd, PROMPT, ["mustache", "glasses", "hat"], max_batch=3, **kwargs)
    assert chunked.max_batch_used == 3 and whole.max_batch_used == 8
    for a, b in zip(whole.cells, chunked.cells):
        assert max_diff(a.image, b.image) <= TOLERANCE, "Splitting into chunks must not change any image."


def test_negative_equal_to_positive_gives_the_guidance_one_image(tiny_sd):
    result = compare(tiny_sd, PROMPT, [PROMPT], seed=3, steps=4, guidance_scale=7.0)
    unguided = compare(tiny_sd, PROMPT, ["anything"], seed=3, steps=4, guidance_scale=1.0)
    assert max_diff(result.cells[1].image, unguided.cells[0].image) <= TOLERANCE
    assert any("equals the positive prompt" in w for w in result.warnings)


def test_two_runs_give_identical_images(tiny_sd):
    first = compare(tiny_sd, PROMPT, ["mustache"], seed=9, steps=3, scheduler="Euler a")
    second = compare(tiny_sd, PROMPT, ["mustache"], seed=9, steps=3, scheduler="Euler a")
    for a, b in zip(first.cells, second.cells):
        assert max_diff(a.image, b.image) == 0, "Same seed must produce identical output for the same prompts."


def test_several_seeds_give_several_rows_each_with_its_own_noise(tiny_sd):
    result = compare(tiny_sd, PROMPT, ["mustache", "glasses"], seeds=[4, 5, 6], steps=2)
    assert [[c.seed for c in row] for row in result.rows] == [[4] * 3, [5] * 3, [6] * 3]
    row_hashes = [{c.initial_latent_sha256 for c in row} for row in result.rows]
    assert all(len(h) == 1 for h in row_hashes), "Each row must share one starting latent."
    assert len(set().union(*row_hashes)) == 3, "Different seeds must start from different latents."
    assert [c.is_baseline for c in result.rows[1]] == [True, False, False]


def test_guidance_at_most_one_warns_that_negatives_do_nothing(tiny_sd):
    result = compare(tiny_sd, PROMPT, ["mustache"], seed=1, steps=2, guidance_scale=1.0)
    assert any("no effect" in w for w in result.warnings)
    assert max_diff(result.cells[0].image, result.cells[1].image) == 0


def test_truncated_negative_warns_with_the_words_that_were_cut(tiny_sd):
    long_negative = " ".join(["blurry"] * 74 + ["ugly", "lowres", "cartoon"])
    result = compare(tiny_sd, PROMPT, [long_negative], seed=1, steps=1)
    warning = next(w for w in result.warnings if "Negative prompt 1" in w)
    assert "77 tokens" in warning and "lowres cartoon" in warning


def test_progress_callback_counts_steps_and_streams_previews(tiny_sd):
    events = []
    compare(tiny_sd, PROMPT, ["mustache", "hat"], seeds=[1, 2], steps=4, max_batch=3, preview_every=2,
            callback=lambda done, total, previews: events.append((done, total, previews)))
    assert [e[0] for e in events] == list(range(1, 9)) and {e[1] for e in events} == {8}
    previews = [e[2] for e in events if e[2] is not None]
    assert previews and all(len(p) == 3 for p in previews), "Previews show every cell of the running chunk."


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(negatives=[""]), "negatives[0]=''"),
    (dict(negatives=["ok", 3]), "negatives[1]=3"),
    (dict(prompt="  "), "prompt='  '"),
    (dict(steps=0), "steps=0"),
    (dict(steps=2.5), "steps=2.5"),
    (dict(guidance_scale=math.nan), "guidance_scale=nan"),
    (dict(guidance_scale=math.inf), "guidance_scale=inf"),
    (dict(height=60), "height=60"),
    (dict(height=0), "height=0"),
    (dict(width=-8), "width=-8"),
    (dict(seed=-1), "seed=-1"),
    (dict(seed=1, seeds=[2]), "not both"),
    (dict(seeds=[1, 1]), "repeats a seed"),
    (dict(negatives=["a"] * 3, max_cells=3), "max_cells=3"),
    (dict(negatives=["a"] * MAX_CELLS), f"max_cells={MAX_CELLS}"),
    (dict(scheduler="Heun++"), "scheduler='Heun++'"),
    (dict(baseline="none"), "baseline='none'"),
])
def test_bad_input_raises_a_value_error_naming_the_argument(tiny_sd, kwargs, message):
    call = dict(prompt=PROMPT, negatives=["mustache"], steps=2)
    call.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        compare(tiny_sd, call.pop("prompt"), call.pop("negatives"), **call)


def test_a_single_string_is_one_negative(tiny_sd):
    result = compare(tiny_sd, PROMPT, "mustache, hat", seed=1, steps=1)
    assert [c.negative_prompt for c in result.cells] == ["", "mustache, hat"]


def test_v_prediction_models_like_sd2_match_diffusers(tmp_path):
    """Stable Diffusion 2.x predicts v, not the noise; cells must still equal the plain diffusers call."""
    from diffusers import DDIMScheduler

    from negprompt.architectures import tiny_sd_pipeline
    from negprompt.loading import load_pipeline

    pipe = tiny_sd_pipeline(seed=1)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    pipe.save_pretrained(tmp_path)
    v_pipe = load_pipeline(tmp_path, device="cpu")
    assert v_pipe.scheduler.config.prediction_type == "v_prediction"
    result = compare(v_pipe, PROMPT, ["mustache"], seed=8, steps=3, guidance_scale=9.0, preview_every=1,
                     callback=lambda *_: None)
    reference = plain_call(v_pipe, "mustache", 8, num_inference_steps=3, guidance_scale=9.0)
    assert max_diff(result.cells[1].image, reference) <= TOLERANCE
