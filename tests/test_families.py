"""Model families: every CFG cell of an SD3 or FLUX.1 comparison equals the plain diffusers pipeline call with the
same seed; other pipeline classes are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from negprompt import compare
from negprompt.errors import InputError
from negprompt.families import family_of

PROMPT = "portrait photo of a man"
TOLERANCE = 2  # max pixel difference, in 1/255 steps, between a cell and the same image made by diffusers alone


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def fresh(pipe):
    """The same components in a new pipeline object, so a plain call cannot share state with the engine's runs."""
    single = type(pipe)(**pipe.components)
    single.set_progress_bar_config(disable=True)
    return single


@pytest.fixture(scope="module", params=["t5", "no-t5"])
def tiny_sd3(request, tmp_path_factory):
    from negprompt.architectures import tiny_sd3_pipeline
    from negprompt.loading import load_pipeline

    folder = tmp_path_factory.mktemp(f"tiny-sd3-{request.param}")
    tiny_sd3_pipeline(t5=request.param == "t5").save_pretrained(folder)
    return load_pipeline(folder, device="cpu")


@pytest.fixture(scope="module", params=["schnell-like", "dev-like"])
def tiny_flux(request, tmp_path_factory):
    from negprompt.architectures import tiny_flux_pipeline
    from negprompt.loading import load_pipeline

    folder = tmp_path_factory.mktemp(f"tiny-flux-{request.param}")
    tiny_flux_pipeline(guidance_embeds=request.param == "dev-like").save_pretrained(folder)
    return load_pipeline(folder, device="cpu")


def test_sd3_cells_equal_the_plain_pipeline_call_with_the_same_seed(tiny_sd3):
    result = compare(tiny_sd3, PROMPT, ["mustache", "red hat"], seeds=[3, 4], steps=3, guidance_scale=5.0)
    assert len({c.initial_latent_sha256 for c in result.cells if c.seed == 3}) == 1, (
        "Every cell of a row must start from the same latent.")
    for cell in result.cells:
        reference = fresh(tiny_sd3)(PROMPT, negative_prompt=cell.negative_prompt, guidance_scale=5.0,
                                    num_inference_steps=3,
                                    generator=torch.Generator("cpu").manual_seed(cell.seed)).images[0]
        assert max_diff(cell.image, reference) <= TOLERANCE, (
            f"SD3 cell '{cell.negative_prompt}' seed {cell.seed} must equal StableDiffusion3Pipeline(prompt, "
            "negative_prompt=..., generator=seed).")
    assert max_diff(result.cells[0].image, result.cells[1].image) > 0, "A negative must change a tiny SD3 image."


def test_flux_true_cfg_cells_equal_the_plain_pipeline_call_with_the_same_seed(tiny_flux):
    result = compare(tiny_flux, PROMPT, ["mustache", "red hat"], seed=5, steps=3, guidance_scale=4.0, height=64,
                     width=64)
    assert result.settings.baseline == "empty"
    for cell in result.cells:
        reference = fresh(tiny_flux)(PROMPT, negative_prompt=cell.negative_prompt, true_cfg_scale=4.0, height=64,
                                     width=64, num_inference_steps=3,
                                     generator=torch.Generator("cpu").manual_seed(5)).images[0]
        assert max_diff(cell.image, reference) <= TOLERANCE, (
            f"FLUX cell '{cell.negative_prompt}' must equal FluxPipeline(prompt, negative_prompt=..., "
            "true_cfg_scale=4, generator=seed 5).")
    assert max_diff(result.cells[0].image, result.cells[1].image) > 0, "A negative must change a tiny FLUX image."


def test_flux_at_true_cfg_one_runs_the_positive_branch_only_like_the_pipeline(tiny_flux):
    result = compare(tiny_flux, PROMPT, ["mustache"], seed=2, steps=2, guidance_scale=1.0, height=64, width=64)
    reference = fresh(tiny_flux)(PROMPT, num_inference_steps=2, height=64, width=64,
                                 generator=torch.Generator("cpu").manual_seed(2)).images[0]
    for cell in result.cells:
        assert max_diff(cell.image, reference) <= TOLERANCE, "At true_cfg_scale 1 every cell is the plain prompt."
    assert any("no effect" in w for w in result.warnings), result.warnings


def test_flux_sizes_must_fit_its_2x2_packing(tiny_flux):
    with pytest.raises(InputError, match="multiple of 16") as caught:
        compare(tiny_flux, PROMPT, ["hat"], steps=1, height=72, width=64)
    assert caught.value.argument == "height"


def test_transformer_families_refuse_other_samplers_and_attention_maps(tiny_sd3):
    with pytest.raises(InputError, match="flow-matching sampler") as caught:
        compare(tiny_sd3, PROMPT, ["hat"], steps=1, scheduler="Euler a")
    assert caught.value.argument == "sampler"
    with pytest.raises(InputError, match="no attention maps"):
        compare(tiny_sd3, PROMPT, ["hat"], steps=1, attention_maps=True)


def test_a_pipeline_of_another_family_is_refused_naming_its_class(tmp_path):
    from negprompt.loading import load

    (tmp_path / "model_index.json").write_text('{"_class_name": "PixArtSigmaPipeline"}')
    with pytest.raises(InputError, match="PixArtSigmaPipeline") as caught:
        load(tmp_path, device="cpu")
    assert caught.value.argument == "model"
    assert "FluxPipeline" in str(caught.value), "The refusal must name the pipelines negprompt does run."

    class OtherPipeline:
        pass

    with pytest.raises(InputError, match="OtherPipeline"):
        family_of(OtherPipeline())
